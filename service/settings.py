"""Service settings from the environment (prefix ``DIALOGUE_``) or a ``.env`` file."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.routing import (
    ARM_NAME_PATTERN,
    BACKENDS,
    RESERVED_ARM_LABELS,
    parse_weights,
    validate_weights,
)
from service.schemas import MAX_RERANK, ResponseOptions

MIN_ADMIN_TOKEN_CHARS = 16
_SETTINGS_ARMS_REPLACE = ("ab_weights", "generative_bundle", "retrieval_bundle")


class ArmConfig(BaseModel):
    """One arm of DIALOGUE_ARMS: a variant of the service (a bundle, optional option defaults)."""

    model_config = ConfigDict(extra="forbid")

    # The bundle the arm serves, chosen as GENERATIVE_BUNDLE/RETRIEVAL_BUNDLE are: a name,
    # "<prefix>*", or (with "backend") "auto", "any" or "off".
    bundle: str = Field(min_length=1)
    weight: float = Field(ge=0, allow_inf_nan=False)  # share of sessions (normalised over arms)
    # The backend kind; read from the bundle's manifest when omitted (required for auto/any/off)
    backend: Literal["generative", "retrieval"] | None = None
    options: ResponseOptions | None = None  # defaults a request's own options override
    fallback: str | None = None  # the arm that answers when this one cannot


@dataclass(frozen=True)
class ArmSpec:
    """An arm as the settings define it (service/bundles.py loads it)."""

    name: str
    bundle: str
    weight: float  # normalised: the arms' weights sum to 1
    backend: str | None  # the backend kind, when the settings name it
    options: ResponseOptions | None
    fallback: str | None  # the configured fallback arm (per arm, else FALLBACK_ARM)
    source: str  # the setting that defines it, for error messages


class Settings(BaseSettings):
    """Everything the service reads at start-up; see docs/design.md, "HTTP API"."""

    # hide_input_in_errors: a refused ADMIN_TOKEN must not be echoed in the start-up error
    model_config = SettingsConfigDict(
        env_prefix="DIALOGUE_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    # --- where and what to serve
    models_dir: Path = Path("artifacts")  # folder of bundles written by training
    # Which bundle each backend serves (service/engine.py, select_bundle):
    #   "<name>"  exactly that bundle (directory or manifest name); absent or unloadable = an error
    #   "auto"    the build's choice in <models_dir>/serving.json (training/pipeline/selection.py), exactly;
    #             without serving.json, generator-nd / retriever-g2r; no bundle of the kind = off
    #   "<prefix>*"  the newest bundle whose directory name starts with <prefix> (asked for)
    #   "any"     the newest bundle of the kind (asked for);  "off"  the backend is not loaded
    generative_bundle: str = Field(default="auto", min_length=1)
    retrieval_bundle: str = Field(default="auto", min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = CUDA when present, else CPU
    # the models' dtype; auto = float16 on a GPU, bfloat16 for generators on a CPU with native
    # bf16 (AVX512-BF16/AMX), else float32 (service/device.py: serving_dtype)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # the retriever's context encoder in int8 (dynamic quantization, models/retriever.py:
    # quantize_context_encoder); auto = where it applies (a float32 retriever on the CPU), on =
    # required there (a start-up error elsewhere), off = float32. Base's bi-encoder: its forward
    # 2.06x faster at batch 1 at the same test Hits@1/100 (reports/retrieval_int8_base.md)
    retrieval_int8: Literal["auto", "on", "off"] = "auto"
    # torch intra-op threads of the service process (torch.set_num_threads). 1 by default: with
    # 2 or more, OpenMP workers spin-wait between parallel regions, and when another process
    # shares the cores they burn their time slices waiting for each other (one decoder batch went
    # from 1 ms to 310 ms, reports/reliability.md). Each backend already computes in its own
    # thread, so one intra-op thread per backend keeps 2 cores busy. Raise it only on cores the
    # service has to itself.
    torch_threads: int = Field(default=1, ge=1, le=256)
    # uvicorn worker processes on PORT (python -m service), each with its own copy of the models,
    # metrics and logs (GET /metrics answers for the worker that takes the request). 1 by
    # default; see README "Threads and workers" for choosing it with TORCH_THREADS.
    workers: int = Field(default=1, ge=1, le=64)
    log_level: str = "info"
    # uvicorn's access log: a line per request, formatted and written on the event loop. Off by
    # default (metrics count every request; EXPOSURE_LOG_DIR records each answer off the loop).
    access_log: bool = False

    # --- A/B routing
    # "generative=0.2,retrieval=0.8" in the environment; normalised to sum to 1.
    ab_weights: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: {"generative": 0.2, "retrieval": 0.8}
    )
    ab_salt: str = "dialogue-ab-1"  # change it to reshuffle conversations between arms
    fallback: bool = True  # on|off: answer from the other backend when the chosen one fails
    # Named variants as arms (JSON object, or a file holding one): replaces AB_WEIGHTS,
    # GENERATIVE_BUNDLE and RETRIEVAL_BUNDLE (setting both is a start-up error), e.g.
    # {"nd": {"bundle": "generator-nd", "weight": 0.1, "options": {"strategy": "beam"}},
    #  "g2r": {"bundle": "retriever-g2r", "weight": 0.9, "fallback": "nd"}}
    arms: Annotated[dict[str, ArmConfig] | None, NoDecode] = None
    arms_file: Path | None = None
    # The arm that answers when an arm fails (per-arm "fallback" wins); unset = the busiest arm
    # of the other backend kind (the old "other backend")
    fallback_arm: str | None = None

    # --- exposure and feedback logs (service/exposure.py); off while EXPOSURE_LOG_DIR is unset
    exposure_log_dir: Path | None = None
    exposure_log_text: bool = False  # also write the context and the reply (raw text)
    exposure_log_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)  # rotate beyond
    exposure_log_backups: int = Field(default=20, ge=1)  # rotated files kept per process
    exposure_log_queue: int = Field(default=10_000, ge=1)  # records waiting; beyond: dropped
    # unset = <EXPOSURE_LOG_DIR>/feedback (off when both are unset)
    feedback_log_dir: Path | None = None
    feedback_window: int = Field(default=500, ge=1)  # ratings per arm in the approval gauge
    feedback_memory: int = Field(default=100_000, ge=1)  # recent request ids feedback can match
    # Salt of the session-id hash in the logs; unset = AB_SALT. Share it across replicas (the
    # report joins sessions by hash) and keep it secret (a guessable id is otherwise re-hashed).
    log_salt: SecretStr | None = None

    # --- admin endpoints: off when unset; when set, at least MIN_ADMIN_TOKEN_CHARS characters
    # (an empty or short token would let a trivial credential reload the models)
    admin_token: SecretStr | None = None

    # --- request limits
    # (stated in the OpenAPI schema: a request within them is never refused for its size)
    max_turns: int = Field(default=16, ge=1, le=1024)  # turns per request
    max_turn_chars: int = Field(default=1000, ge=1, le=100_000)  # characters per turn
    # characters over all turns; unset = max_turns x max_turn_chars (no extra limit). JSON Schema
    # cannot state a sum, so a smaller value is a 413 a schema-valid request can get.
    max_request_chars: int | None = Field(default=None, ge=1)
    # The deadline of a whole request, end to end: queue wait, model call and any fallback share
    # it (the service answers 200 or 504 within it; see README "Reliability").
    request_timeout_s: float = Field(default=5.0, gt=0)
    # The share of REQUEST_TIMEOUT_S kept for the fallback: the first backend must answer within
    # (1 - FALLBACK_RESERVE) x REQUEST_TIMEOUT_S when another backend could still answer.
    fallback_reserve: float = Field(default=0.2, ge=0, lt=1)
    max_candidates: int = Field(
        default=10, ge=1, le=1000
    )  # largest num_candidates a retrieval request may ask for

    # --- micro-batching, per backend
    max_queue: int = Field(default=64, ge=1)  # requests waiting for a batch; beyond it -> 429
    max_batch: int = Field(default=16, ge=1)  # requests per model call
    # the longest a batch is held for company, and only right after a busy call (an idle
    # backend runs a request at once: service/batching.py, "Adaptive batching")
    max_wait_ms: float = Field(default=5.0, ge=0)
    # Continuous batching of greedy and sampled generation (service/continuous.py): requests
    # join the running decoder batch at a step boundary and leave it when their reply ends;
    # MAX_BATCH bounds the running requests. auto = on for this project's own generators when
    # MAX_BATCH > 1; beam search, and other architectures, stay micro-batched.
    continuous_batching: Literal["auto", "on", "off"] = "auto"
    # With continuous batching: a second thread tokenizes and encodes waiting requests while
    # the decoder steps (service/continuous_batcher.py), instead of the decoder stopping to
    # encode newcomers at each step boundary; a lone request is admitted without it.
    prefill_thread: bool = True
    # Generate, then rank: a generative reply is the best of a beam search's n-best this long,
    # ranked by the loaded retriever's relevance score (RetrievalResponder.rank_replies: the
    # bi-encoder's R(c, r) mixed with its TF-IDF re-ranker, echoes out); reports/
    # generate_and_rank_small.md measures it. 0 or 1 = off: the bundle's decoding as it is
    # (greedy replies then take the continuous batch; ranked ones are micro-batched). A
    # request's options.rerank overrides it; without a retriever loaded nothing is ranked.
    generative_rerank: int = Field(default=8, ge=0, le=MAX_RERANK)
    # ... only while fewer than this many generative requests are queued or running (0 = at any
    # load): at concurrency 32 the service answered 95.0 ranked requests a second against 225.5
    # unranked (reports/service_load_rerank8_small.md, reports/service_load_rerank0_small.md), so a
    # busy service serves the bundle's own decoding instead of queueing up
    generative_rerank_below: int = Field(default=4, ge=0)

    # --- response-quality gauges
    quality_window: int = Field(
        default=1000, ge=1
    )  # responses in the rolling max-ratio/distinct-2 window

    # --- output safety filter (service/safety.py)
    # auto = both when a classifier bundle is present, else blocklist with SAFETY_BLOCKLIST, else off
    safety_filter: Literal["auto", "off", "blocklist", "classifier", "both"] = "auto"
    safety_bundle: str = "safety-classifier"  # classifier bundle (directory or manifest name)
    safety_threshold: float | None = Field(
        default=None, gt=0, lt=1
    )  # P(unsafe) cut-off; unset = the bundle's own (chosen on held-out DiaSafety train)
    safety_blocklist: Path | None = None  # phrase list file; unset = the classifier bundle's
    safety_candidates: int = Field(
        default=4, ge=1, le=32
    )  # retrieval: candidates searched for a safe one; generative: samples drawn when blocked
    # (a ranked n-best's runners-up are tried instead when there are at least this many)
    safety_fallback_reply: str = Field(
        default="i'd rather not talk about that . can we talk about something else ?",
        min_length=1,
        max_length=1000,
    )  # served when no candidate is safe
    # A last user turn that states a self-harm risk (a phrase of SAFETY_RISK_PHRASES) gets
    # SAFETY_RISK_REPLY instead of the model's reply; on whenever the filter is not off.
    safety_risk: bool = True
    # phrase list file; unset = models/safety_risk_phrases.txt
    safety_risk_phrases: Path | None = None
    safety_risk_reply: str = Field(
        default=(
            "i'm really sorry you're feeling this way . you don't have to go through it alone : "
            "please talk to someone you trust , or call a local crisis line or emergency "
            "services now if you might act on these thoughts ."
        ),
        min_length=1,
        max_length=1000,
    )

    @property
    def request_chars_limit(self) -> int:
        """Characters over all turns of a request: MAX_REQUEST_CHARS, else turns x chars."""
        if self.max_request_chars is not None:
            return self.max_request_chars
        return self.max_turns * self.max_turn_chars

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        token = value.get_secret_value()
        # the message never echoes the token
        if len(token) < MIN_ADMIN_TOKEN_CHARS or not token.strip():
            raise ValueError(
                f"DIALOGUE_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters "
                f"(got {len(token)}); unset it to turn the admin endpoint off"
            )
        if token != token.strip():
            raise ValueError("DIALOGUE_ADMIN_TOKEN must not start or end with whitespace")
        return value

    @field_validator("safety_filter", mode="before")
    @classmethod
    def _lower_safety_filter(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("safety_fallback_reply", "safety_risk_reply")
    @classmethod
    def _check_fallback_reply(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the safety fallback and risk replies must not be blank")
        return value.strip()

    @field_validator("ab_weights", mode="before")
    @classmethod
    def _parse_ab_weights(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_weights(value)
        return value

    @field_validator("ab_weights")
    @classmethod
    def _check_ab_weights(cls, value: dict[str, float]) -> dict[str, float]:
        return validate_weights(value)

    @field_validator("arms", mode="before")
    @classmethod
    def _parse_arms(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"DIALOGUE_ARMS is not valid JSON: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check_arms(self) -> Settings:
        if self.arms_file is not None:
            if self.arms is not None:
                raise ValueError("set DIALOGUE_ARMS or DIALOGUE_ARMS_FILE, not both")
            try:
                data = json.loads(Path(self.arms_file).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"DIALOGUE_ARMS_FILE {self.arms_file} cannot be read: {exc}"
                ) from None
            if not isinstance(data, dict):
                raise ValueError(f"DIALOGUE_ARMS_FILE {self.arms_file} is not a JSON object")
            self.arms = {name: ArmConfig.model_validate(arm) for name, arm in data.items()}
        if self.arms is None:
            if self.fallback_arm is not None and self.fallback_arm not in BACKENDS:
                raise ValueError(
                    f"DIALOGUE_FALLBACK_ARM {self.fallback_arm!r} is no arm; arms are "
                    f"{list(BACKENDS)}"
                )
            return self
        both = sorted(f for f in _SETTINGS_ARMS_REPLACE if f in self.model_fields_set)
        if both:
            old = ", ".join(f"DIALOGUE_{f.upper()}" for f in both)
            raise ValueError(
                f"DIALOGUE_ARMS replaces {old}: unset {old} and give every arm its bundle and "
                "weight in DIALOGUE_ARMS, e.g. "
                '{"generative": {"bundle": "auto", "backend": "generative", "weight": 0.2}, '
                '"retrieval": {"bundle": "auto", "backend": "retrieval", "weight": 0.8}}'
            )
        if not self.arms:
            raise ValueError("DIALOGUE_ARMS has no arm")
        for name, arm in self.arms.items():
            if not ARM_NAME_PATTERN.fullmatch(name) or name in RESERVED_ARM_LABELS:
                raise ValueError(
                    f"arm name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - "
                    f"(not {', '.join(sorted(RESERVED_ARM_LABELS))})"
                )
            wanted = arm.bundle.strip()
            if arm.backend is None and wanted in ("auto", "any", "off"):
                raise ValueError(
                    f'arm {name!r}: bundle {wanted!r} needs "backend": "generative" or "retrieval"'
                )
            if arm.fallback is not None and arm.fallback not in self.arms:
                raise ValueError(f"arm {name!r}: fallback {arm.fallback!r} is no arm")
        if self.fallback_arm is not None and self.fallback_arm not in self.arms:
            raise ValueError(
                f"DIALOGUE_FALLBACK_ARM {self.fallback_arm!r} is no arm; arms are "
                f"{sorted(self.arms)}"
            )
        if sum(arm.weight for arm in self.arms.values()) <= 0:
            raise ValueError("DIALOGUE_ARMS: the weights must not all be zero")
        return self

    def arm_specs(self) -> dict[str, ArmSpec]:
        """Every arm by name: DIALOGUE_ARMS, or the two arms of AB_WEIGHTS, GENERATIVE_BUNDLE and
        RETRIEVAL_BUNDLE (named generative and retrieval; both exist, weight 0 when unlisted)."""
        if self.arms is None:
            bundles = {"generative": self.generative_bundle, "retrieval": self.retrieval_bundle}
            return {
                kind: ArmSpec(
                    name=kind,
                    bundle=bundles[kind],
                    weight=self.ab_weights.get(kind, 0.0),
                    backend=kind,
                    options=None,
                    fallback=self.fallback_arm if self.fallback_arm != kind else None,
                    source=f"{kind.upper()}_BUNDLE",
                )
                for kind in BACKENDS
            }
        total = math.fsum(arm.weight for arm in self.arms.values())
        return {
            name: ArmSpec(
                name=name,
                bundle=arm.bundle.strip(),
                weight=arm.weight / total,
                backend=arm.backend,
                options=arm.options,
                fallback=arm.fallback or (self.fallback_arm if self.fallback_arm != name else None),
                source=f'DIALOGUE_ARMS["{name}"].bundle',
            )
            for name, arm in self.arms.items()
        }

    @property
    def arm_weights(self) -> dict[str, float]:
        """The normalised weight of every arm (0 for an arm only reached by name or fallback)."""
        return {name: spec.weight for name, spec in self.arm_specs().items()}

    @property
    def session_salt(self) -> str:
        """The salt of the session-id hash written to the logs (LOG_SALT, else AB_SALT)."""
        return self.log_salt.get_secret_value() if self.log_salt is not None else self.ab_salt

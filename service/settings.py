"""Service settings from the environment (prefix ``DIALOGUE_``) or a ``.env`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.routing import parse_weights, validate_weights

MIN_ADMIN_TOKEN_CHARS = 16


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
    # torch intra-op threads of the service process (torch.set_num_threads). 1 by default: with
    # 2 or more, OpenMP workers spin-wait between parallel regions, and when another process
    # shares the cores they burn their time slices waiting for each other (one decoder batch went
    # from 1 ms to 310 ms, reports/reliability.md). Each backend already computes in its own
    # thread, so one intra-op thread per backend keeps 2 cores busy. Raise it only on cores the
    # service has to itself.
    torch_threads: int = Field(default=1, ge=1, le=256)
    log_level: str = "info"

    # --- A/B routing
    # "generative=0.2,retrieval=0.8" in the environment; normalised to sum to 1.
    ab_weights: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: {"generative": 0.2, "retrieval": 0.8}
    )
    ab_salt: str = "dialogue-ab-1"  # change it to reshuffle conversations between arms
    fallback: bool = True  # on|off: answer from the other backend when the chosen one fails

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
    max_wait_ms: float = Field(default=5.0, ge=0)  # how long the first request waits for company

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

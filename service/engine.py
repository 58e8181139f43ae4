"""The request handler behind POST /respond and POST /v1/chat/completions: limits, A/B arm,
backend call, fallback, metrics, the exposure log; feedback; start, stop and reload of the arms
that service/bundles.py chooses and loads."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from models.decoding import DecodingConfig
from models.text import normalize_text
from service.answer import Answer
from service.arms import Serving
from service.backends import Backend
from service.batching import late
from service.bundles import load_serving, select_bundle
from service.errors import (
    BackendFailed,
    BackendUnavailable,
    DeadlineExceeded,
    InvalidRequest,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ReloadFailed,
    ServiceError,
    failure_reason,
)
from service.exposure import JsonlLog
from service.feedback import FeedbackResult, FeedbackTracker
from service.metrics import ServiceMetrics
from service.routing import OVERRIDE_ARM, assign_arm, session_hash
from service.schemas import (
    Candidate,
    ModelInfo,
    OpenAIModel,
    RespondRequest,
    RespondResponse,
    SessionEnd,
)
from service.settings import Settings

__all__ = ["DialogueEngine", "Served", "load_serving", "select_bundle"]  # the last two: bundles.py

logger = logging.getLogger(__name__)

_OUTCOME_OF: dict[type[ServiceError], str] = {
    DeadlineExceeded: "timeout",
    Overloaded: "overloaded",
    BackendUnavailable: "unavailable",
    BackendFailed: "error",
}


@dataclass(frozen=True)
class Served:
    """One answered request: the response and what the logs and the OpenAI endpoint need."""

    response: RespondResponse
    variant: str  # the arm that answered (its fallback arm when it fell back)
    fallback: bool
    backend: Backend
    generated_tokens: int | None  # tokens the generator wrote (None: a retrieved reply)
    truncated: bool  # the generator stopped at its max_length, not at end of sentence


@dataclass
class DialogueEngine:
    """Answers requests with the loaded arms; the app keeps one in ``app.state.engine``."""

    settings: Settings
    metrics: ServiceMetrics
    serving: Serving = field(default_factory=lambda: Serving(arms={}))
    ready: bool = False
    exposures: JsonlLog | None = None
    feedback_log: JsonlLog | None = None
    feedback: FeedbackTracker = field(init=False)
    _weights: dict[str, float] = field(init=False)
    _kinds: dict[str, str] = field(init=False)
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        s = self.settings
        self.feedback = FeedbackTracker(
            self.metrics, memory=s.feedback_memory, window=s.feedback_window
        )
        specs = s.arm_specs()  # the settings do not change while the app runs
        self._weights = {name: spec.weight for name, spec in specs.items()}
        self._kinds = {name: spec.backend for name, spec in specs.items() if spec.backend}
        self.metrics.set_arm_weights(self._weights)

    @property
    def backends(self) -> dict[str, Backend]:
        """The loaded backend of each arm, by arm name (arms sharing a bundle share one)."""
        return self.serving.backends

    async def start(self) -> None:
        for backend in self.serving.unique_backends():
            await backend.start()
        self._publish_models()
        self._open_logs()
        self.ready = True

    async def stop(self) -> None:
        """Flip readiness off, let queued work finish (up to one deadline), release the models,
        then write out and close the logs."""
        self.ready = False
        serving, self.serving = self.serving, Serving(arms={})
        for backend in serving.unique_backends():
            await backend.stop(drain_s=self.settings.request_timeout_s)
        self.metrics.set_models([])
        _release_device_memory()
        await asyncio.to_thread(self._close_logs)

    def _open_logs(self) -> None:
        s = self.settings
        limits: dict[str, Any] = {
            "max_bytes": s.exposure_log_max_bytes,
            "backups": s.exposure_log_backups,
            "queue_size": s.exposure_log_queue,
        }
        if s.exposure_log_dir is not None and self.exposures is None:
            self.exposures = JsonlLog(
                s.exposure_log_dir,
                "exposures",
                on_drop=lambda: self.metrics.observe_log_dropped("exposure"),
                **limits,
            )
        feedback_dir = s.feedback_log_dir or (
            s.exposure_log_dir / "feedback" if s.exposure_log_dir is not None else None
        )
        if feedback_dir is not None and self.feedback_log is None:
            self.feedback_log = JsonlLog(
                feedback_dir,
                "feedback",
                on_drop=lambda: self.metrics.observe_log_dropped("feedback"),
                **limits,
            )

    def _close_logs(self) -> None:
        for log in (self.exposures, self.feedback_log):
            if log is not None:
                log.close()
        self.exposures = self.feedback_log = None

    def _publish_models(self) -> None:
        self.metrics.set_models((b.name, b.model_id) for b in self.serving.unique_backends())

    async def reload(self) -> list[ModelInfo]:
        """Load and verify every arm's bundle again, then swap them all in at once; on any error
        keep the old ones.

        Raises ReloadFailed naming the reason. Requests already queued on an old backend finish
        there (up to one deadline); new requests go to the new backends from the swap on.
        """
        async with self._reload_lock:
            try:
                fresh = await asyncio.to_thread(load_serving, self.settings, self.metrics)
            except Exception as exc:  # a bad bundle must never take the service down
                logger.error("reload failed, keeping %s: %s", self._describe(), exc)
                raise ReloadFailed(f"reload failed, kept the loaded models: {exc}") from exc
            for backend in fresh.unique_backends():
                await backend.start()
            old, self.serving = self.serving, fresh  # one assignment: requests see old or new
            self._publish_models()
            logger.info("reloaded: %s", self._describe())
            for backend in old.unique_backends():
                await backend.stop(drain_s=self.settings.request_timeout_s)
            _release_device_memory()
            return self.models()

    def _describe(self) -> str:
        return ", ".join(f"{n}={b.model_id}" for n, b in self.backends.items()) or "nothing"

    def models(self) -> list[ModelInfo]:
        """Every loaded arm with its weight, fallback and bundle."""
        out = []
        for name, arm in self.serving.arms.items():
            backend = arm.backend
            if backend is None:
                continue
            manifest = backend.manifest
            out.append(
                ModelInfo(
                    arm=name,
                    weight=round(arm.weight, 6),
                    fallback=arm.fallback,
                    backend=arm.kind,  # type: ignore[arg-type]
                    model=backend.model_id,
                    name=manifest.name if manifest else backend.model_id,
                    bundle=backend.bundle_dir.name,  # never the absolute path
                    created_at=manifest.created_at if manifest else "",
                    device=backend.device,
                    method=(manifest.training.get("method") if manifest else None),
                )
            )
        return out

    def openai_models(self) -> list[OpenAIModel]:
        """``auto`` (the A/B test) and every loaded arm, as OpenAI clients list models."""
        created = {
            name: _epoch(arm.backend.manifest.created_at if arm.backend.manifest else "")
            for name, arm in self.serving.arms.items()
            if arm.backend is not None
        }
        first = min(created.values(), default=0)
        return [
            OpenAIModel(id="auto", created=first),
            *(OpenAIModel(id=name, created=when) for name, when in created.items()),
        ]

    def check_limits(self, request: RespondRequest) -> list[str]:
        """The context, normalised like training text; raises PayloadTooLarge / InvalidRequest.

        Requests through the app were already held to these limits by the schema
        (service/schemas.py, request_model), except a MAX_REQUEST_CHARS below turns x chars,
        which no JSON Schema can state; direct callers of :meth:`respond` are checked here."""
        s = self.settings
        turns = request.context
        if len(turns) > s.max_turns:
            raise PayloadTooLarge(f"context has {len(turns)} turns; the limit is {s.max_turns}")
        for i, turn in enumerate(turns):
            if len(turn) > s.max_turn_chars:
                raise PayloadTooLarge(
                    f"context[{i}] has {len(turn)} characters; the limit is {s.max_turn_chars}"
                )
        total = sum(len(t) for t in turns)
        if total > s.request_chars_limit:
            raise PayloadTooLarge(
                f"context has {total} characters; the limit is {s.request_chars_limit}"
            )
        normalized = [normalize_text(t) for t in turns]
        for i, turn in enumerate(normalized):
            if not turn:
                raise InvalidRequest(f"context[{i}] is empty")
        return normalized

    async def respond(
        self, request: RespondRequest, received: float | None = None, request_id: str | None = None
    ) -> RespondResponse:
        """Answer one request; every outcome is counted once in dialogue_requests_total."""
        return (await self.answer(request, received, request_id)).response

    async def answer(
        self,
        request: RespondRequest,
        received: float | None = None,
        request_id: str | None = None,
        endpoint: str = "respond",
    ) -> Served:
        """Answer one request and log its exposure; what :meth:`respond` returns, and more."""
        # One deadline for the whole request, from when the service first saw it (``received``,
        # time.monotonic(), stamped by the outermost middleware before the body is read; now for
        # direct callers): body read, validation, queue wait, model call and fallback share it.
        started = time.monotonic() if received is None else received
        deadline = started + self.settings.request_timeout_s
        request_id = request_id or uuid.uuid4().hex
        s = self.settings
        arm_name = getattr(request, "arm", None)
        named = arm_name is not None or request.backend is not None
        # Labels before the route is known (not ready, or a route refused): as the settings say.
        backend_label: str
        if named:
            label, backend_label = OVERRIDE_ARM, request.backend or "none"
        else:
            label = assign_arm(s.ab_salt, request.session_id, self._weights)
            backend_label = self._kinds.get(label, "none")
        try:
            if not self.ready:
                raise NotReady("the service is still loading its models")
            # One snapshot per request: a reload swapping arms mid-request changes nothing here.
            serving = self.serving
            route = serving.route(
                s.ab_salt,
                request.session_id,
                arm=arm_name,
                backend=request.backend,
                fallback=s.fallback,
            )
            label = route.label
            first = serving.arms.get(route.order[0])
            backend_label = first.kind if first is not None else route.order[0].strip("<>")
            context = self.check_limits(request)
            # Options are checked against every loaded arm, so whether a request is valid never
            # depends on its (random) arm or on a fallback; each arm's defaults lie under them.
            params = {
                name: arm.backend.prepare(arm.merged_options(request.options))
                for name, arm in serving.arms.items()
                if arm.backend is not None
            }
            answered, answer = await self._answer(serving, route.order, context, params, deadline)
            arm = serving.arms[answered]
            assert arm.backend is not None
            backend_label = arm.kind
        except ServiceError as exc:
            label_of_backend = exc.backend or backend_label
            self.metrics.observe_request(
                label_of_backend, label, _outcome(exc), time.monotonic() - started
            )
            raise
        elapsed = time.monotonic() - started
        self.metrics.observe_request(backend_label, label, "ok", elapsed)
        self.metrics.observe_response(backend_label, answer.text)
        if answer.block is not None:
            self.metrics.observe_safety_block(
                backend_label, answer.block.reason, answer.block.action
            )
        response = RespondResponse(
            response=answer.text,
            request_id=request_id,
            backend=backend_label,  # type: ignore[arg-type]
            arm=label,
            model=arm.backend.model_id,
            latency_ms=round(elapsed * 1000, 3),
            candidates=(
                [Candidate(text=t, score=sc) for t, sc in answer.candidates]
                if answer.candidates is not None
                else None
            ),
            filtered=answer.block.action if answer.block is not None else None,
        )
        config = params[answered]
        generated = answer.generated_tokens if arm.kind == "generative" else None
        served = Served(
            response=response,
            variant=answered,
            fallback=answered != route.order[0],
            backend=arm.backend,
            generated_tokens=generated,
            truncated=(
                isinstance(config, DecodingConfig)
                and answer.block is None
                and answer.generated_tokens >= config.max_length
            ),
        )
        self.feedback.remember(request_id, label)
        if self.exposures is not None:
            self.exposures.write(self._exposure(request, served, endpoint))
        return served

    def _exposure(self, request: RespondRequest, served: Served, endpoint: str) -> dict[str, Any]:
        """The exposure log's record of an answered request (service/ab_report.py reads it)."""
        r = served.response
        record: dict[str, Any] = {
            "time": round(time.time(), 3),
            "request_id": r.request_id,
            "session": (
                session_hash(self.settings.session_salt, request.session_id)
                if request.session_id is not None
                else None
            ),
            "arm": r.arm,
            "variant": served.variant,
            "backend": r.backend,
            "bundle": r.model,
            "latency_ms": r.latency_ms,
            "response_chars": len(r.response),
            "response_tokens": served.generated_tokens,
            "filtered": r.filtered,
            "fallback": served.fallback,
            "endpoint": endpoint,
        }
        if self.settings.exposure_log_text:
            record["context"] = list(request.context)
            record["response"] = r.response
        return record

    def rate(self, request_id: str, rating: str | int, reason: str | None) -> FeedbackResult:
        """Record a rating of ``request_id`` (metrics, the feedback log)."""
        result = self.feedback.rate(request_id, rating)
        if self.feedback_log is not None:
            record: dict[str, Any] = {
                "time": round(time.time(), 3),
                "request_id": request_id,
                "rating": rating,
                "arm": result.arm,
                "matched": result.matched,
            }
            if reason is not None:
                record["reason"] = reason
            self.feedback_log.write(record)
        return result

    def end_session(self, event: SessionEnd) -> str:
        """Record a session end (metrics, the feedback log); returns the session's A/B arm."""
        s = self.settings
        arm = assign_arm(s.ab_salt, event.session_id, self._weights)
        self.metrics.observe_session_end(arm)
        if self.feedback_log is not None:
            self.feedback_log.write(
                {
                    "time": round(time.time(), 3),
                    "session": session_hash(s.session_salt, event.session_id),
                    "event": "end",
                    "turns": event.turns,
                    "arm": arm,
                }
            )
        return arm

    async def _answer(
        self,
        serving: Serving,
        order: list[str],
        context: list[str],
        params: dict[str, Hashable],
        deadline: float,
    ) -> tuple[str, Answer]:
        """Try the arms of ``order`` (the routed arm, then its fallback arm); returns (the arm
        that answered, its answer).

        Every attempt works to the request's one ``deadline`` (time.monotonic()): a fallback never
        gets a fresh one. While another arm could still answer, the first attempt must finish
        by ``deadline - FALLBACK_RESERVE x REQUEST_TIMEOUT_S``, so a slow primary leaves its
        fallback that reserve; the last attempt runs to the deadline itself. Once the deadline
        has passed nothing more is tried (504).

        Fallback is for an arm's failure, absence or deadline. A full queue (Overloaded) is
        shed to the client as 429 at once: sending the overflow to another arm would only
        overload that one too and hide the overload from clients. Each failed attempt of a
        loaded arm is counted in dialogue_backend_failures_total by its reason (a remote
        generator's timeout, unavailable endpoint or bad response; a missed deadline is a
        timeout)."""
        reserve = self.settings.fallback_reserve * self.settings.request_timeout_s
        failure: ServiceError | None = None
        for position, name in enumerate(order):
            arm = serving.arms.get(name)
            kind = arm.kind if arm is not None else name.strip("<>")
            if failure is not None:
                assert failure.backend is not None
                if time.monotonic() >= deadline:
                    break  # no time left for a fallback: the client gets a 504 (below)
                self.metrics.observe_fallback(failure.backend, _outcome(failure))
                logger.warning("falling back to the %s arm: %s", name, failure)
            if arm is None or arm.backend is None:
                what = f"the {kind} backend" if name in (kind, f"<{kind}>") else f"the {name} arm"
                failure = BackendUnavailable(f"{what} is not loaded")
                failure.backend = kind
                continue
            later = [
                n
                for n in order[position + 1 :]
                if n in serving.arms and serving.arms[n].backend is not None
            ]
            attempt_deadline = deadline - reserve if later else deadline
            try:
                return name, await arm.backend.submit(context, params[name], attempt_deadline)
            except Overloaded as exc:
                exc.backend = kind
                raise
            except (DeadlineExceeded, BackendFailed, BackendUnavailable) as exc:
                exc.backend = kind
                self.metrics.observe_backend_failure(kind, name, failure_reason(exc))
                failure = exc
        assert failure is not None
        if time.monotonic() >= deadline and not isinstance(failure, DeadlineExceeded):
            # the request's own deadline has passed: its outcome is a 504, however it failed
            missed = late(failure.backend or "")
            missed.backend = failure.backend
            failure = missed
        raise failure


def _epoch(created_at: str) -> int:
    """A manifest's ISO 8601 created_at as Unix seconds (0 when it cannot be read)."""
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _release_device_memory() -> None:
    """Give dropped models' memory back (CUDA keeps freed blocks cached otherwise)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _outcome(exc: ServiceError) -> str:
    """The ``outcome`` label of a failed request."""
    if isinstance(exc, NotReady):
        return "unavailable"
    return _OUTCOME_OF.get(type(exc), "invalid" if exc.status_code < 500 else "error")

"""The request handler behind POST /respond: limits, A/B arm, backend call, fallback, metrics;
start, stop and reload of the backends that service/bundles.py chooses and loads."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from models.text import normalize_text
from service.answer import Answer
from service.backends import Backend
from service.bundles import load_backends, select_bundle
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
)
from service.metrics import ServiceMetrics
from service.routing import BACKENDS, choose_arm
from service.schemas import Candidate, ModelInfo, RespondRequest, RespondResponse
from service.settings import Settings

__all__ = ["DialogueEngine", "load_backends", "select_bundle"]  # the last two: service/bundles.py

logger = logging.getLogger(__name__)

_OUTCOME_OF: dict[type[ServiceError], str] = {
    DeadlineExceeded: "timeout",
    Overloaded: "overloaded",
    BackendUnavailable: "unavailable",
    BackendFailed: "error",
}


@dataclass
class DialogueEngine:
    """Answers requests with the loaded backends; the app keeps one in ``app.state.engine``."""

    settings: Settings
    metrics: ServiceMetrics
    backends: dict[str, Backend] = field(default_factory=dict)
    ready: bool = False
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> None:
        for name, backend in self.backends.items():
            await backend.start()
            self.metrics.set_model(name, backend.model_id)
        self.ready = True

    async def stop(self) -> None:
        """Flip readiness off, let queued work finish (up to one deadline), release the models."""
        self.ready = False
        backends, self.backends = self.backends, {}
        for name, backend in backends.items():
            await backend.stop(drain_s=self.settings.request_timeout_s)
            self.metrics.clear_model(name)
        _release_device_memory()

    async def reload(self) -> list[ModelInfo]:
        """Load and verify the bundles again, then swap them in; on any error keep the old ones.

        Raises ReloadFailed naming the reason. Requests already queued on an old backend finish
        there (up to one deadline); new requests go to the new backends from the swap on.
        """
        async with self._reload_lock:
            try:
                fresh = await asyncio.to_thread(load_backends, self.settings, self.metrics)
            except Exception as exc:  # a bad bundle must never take the service down
                logger.error("reload failed, keeping %s: %s", self._describe(), exc)
                raise ReloadFailed(f"reload failed, kept the loaded models: {exc}") from exc
            for backend in fresh.values():
                await backend.start()
            old, self.backends = self.backends, fresh  # one assignment: requests see old or new
            for name, backend in fresh.items():
                self.metrics.set_model(name, backend.model_id)
            for name in old.keys() - fresh.keys():
                self.metrics.clear_model(name)
            logger.info("reloaded: %s", self._describe())
            for backend in old.values():
                await backend.stop(drain_s=self.settings.request_timeout_s)
            _release_device_memory()
            return self.models()

    def _describe(self) -> str:
        return ", ".join(f"{n}={b.model_id}" for n, b in self.backends.items()) or "nothing"

    def models(self) -> list[ModelInfo]:
        out = []
        for name, backend in self.backends.items():
            manifest = backend.manifest
            out.append(
                ModelInfo(
                    backend=name,  # type: ignore[arg-type]
                    model=backend.model_id,
                    name=manifest.name if manifest else backend.model_id,
                    bundle=backend.bundle_dir.name,  # never the absolute path
                    created_at=manifest.created_at if manifest else "",
                    device=backend.device,
                    method=(manifest.training.get("method") if manifest else None),
                )
            )
        return out

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
        self, request: RespondRequest, received: float | None = None
    ) -> RespondResponse:
        """Answer one request; every outcome is counted once in dialogue_requests_total."""
        # One deadline for the whole request, from when the service first saw it (``received``,
        # time.monotonic(), stamped by the outermost middleware before the body is read; now for
        # direct callers): body read, validation, queue wait, model call and fallback share it.
        started = time.monotonic() if received is None else received
        deadline = started + self.settings.request_timeout_s
        s = self.settings
        arm, primary = choose_arm(s.ab_salt, request.session_id, s.ab_weights, request.backend)
        backend_label = primary
        try:
            if not self.ready:
                raise NotReady("the service is still loading its models")
            context = self.check_limits(request)
            # Options are checked against every loaded backend, so whether a request is valid
            # never depends on its (random) arm or on a fallback.
            # One snapshot per request: a reload swapping backends mid-request changes nothing here.
            backends = self.backends
            params = {name: b.prepare(request.options) for name, b in backends.items()}
            answered_by, answer = await self._answer(backends, primary, context, params, deadline)
            backend_label = answered_by.name
        except ServiceError as exc:
            label = exc.backend or backend_label
            self.metrics.observe_request(label, arm, _outcome(exc), time.monotonic() - started)
            raise
        elapsed = time.monotonic() - started
        self.metrics.observe_request(backend_label, arm, "ok", elapsed)
        self.metrics.observe_response(backend_label, answer.text)
        if answer.block is not None:
            self.metrics.observe_safety_block(
                backend_label, answer.block.reason, answer.block.action
            )
        return RespondResponse(
            response=answer.text,
            backend=backend_label,  # type: ignore[arg-type]
            arm=arm,
            model=answered_by.model_id,
            latency_ms=round(elapsed * 1000, 3),
            candidates=(
                [Candidate(text=t, score=sc) for t, sc in answer.candidates]
                if answer.candidates is not None
                else None
            ),
            filtered=answer.block.action if answer.block is not None else None,
        )

    async def _answer(
        self,
        backends: dict[str, Backend],
        primary: str,
        context: list[str],
        params: dict[str, Hashable],
        deadline: float,
    ) -> tuple[Backend, Answer]:
        """Try ``primary``, then (FALLBACK=on) the other backend; returns (who answered, answer).

        Every attempt works to the request's one ``deadline`` (time.monotonic()): a fallback never
        gets a fresh one. While another backend could still answer, the first attempt must finish
        by ``deadline - FALLBACK_RESERVE x REQUEST_TIMEOUT_S``, so a slow primary leaves its
        fallback that reserve; the last attempt runs to the deadline itself. Once the deadline
        has passed nothing more is tried (504).

        Fallback is for a backend's failure, absence or deadline. A full queue (Overloaded) is
        shed to the client as 429 at once: sending the overflow to the other backend would only
        overload that one too and hide the overload from clients."""
        order = [primary]
        if self.settings.fallback:
            order += [name for name in BACKENDS if name != primary and name in backends]
        reserve = self.settings.fallback_reserve * self.settings.request_timeout_s
        failure: ServiceError | None = None
        for position, name in enumerate(order):
            if failure is not None:
                assert failure.backend is not None
                if time.monotonic() >= deadline:
                    break  # no time left for a fallback: the client gets the failure (504)
                self.metrics.observe_fallback(failure.backend, _outcome(failure))
                logger.warning("falling back from %s to %s: %s", failure.backend, name, failure)
            backend = backends.get(name)
            if backend is None:
                failure = BackendUnavailable(f"the {name} backend is not loaded")
                failure.backend = name
                continue
            later = [n for n in order[position + 1 :] if n in backends]
            attempt_deadline = deadline - reserve if later else deadline
            try:
                return backend, await backend.submit(context, params[name], attempt_deadline)
            except Overloaded as exc:
                exc.backend = name
                raise
            except (DeadlineExceeded, BackendFailed, BackendUnavailable) as exc:
                exc.backend = name
                failure = exc
        assert failure is not None
        raise failure


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

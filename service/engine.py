"""The request handler behind POST /respond: limits, A/B arm, backend call, fallback, metrics.

Also where bundles are chosen and loaded (:func:`load_backends`), so the app module stays routes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.bundle import BundleError, Manifest, find_bundles, read_manifest, read_serving
from models.text import normalize_text
from service.backends import Answer, Backend, BatchLimits, GenerativeBackend, RetrievalBackend
from service.device import resolve_device, serving_dtype
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
from service.safety import load_safety_filter
from service.schemas import Candidate, ModelInfo, RespondRequest, RespondResponse
from service.settings import Settings

logger = logging.getLogger(__name__)

_KIND_OF = {"generative": "generator", "retrieval": "retriever", "safety": "classifier"}
_OUTCOME_OF: dict[type[ServiceError], str] = {
    DeadlineExceeded: "timeout",
    Overloaded: "overloaded",
    BackendUnavailable: "unavailable",
    BackendFailed: "error",
}


_DEFAULT_BUNDLE = {"generative": "generator-nd", "retrieval": "retriever-g2r", "safety": ""}


def select_bundle(models_dir: Path, backend: str, wanted: str) -> Path | None:
    """The bundle for ``backend``: the one named ``wanted`` (directory or manifest name), else
    the newest whose directory name starts with it (``retriever-g2r`` -> ``retriever-g2r-dm``),
    else the first of the right kind; None when there is none.

    ``wanted == "auto"`` means the bundle the build chose for ``backend`` in
    ``<models_dir>/serving.json`` (the least generic generator of comparable perplexity, see
    training/selection.py), else the historical default name for it."""
    kind = _KIND_OF[backend]
    if wanted == "auto":
        chosen = (read_serving(models_dir) or {}).get(backend)
        wanted = chosen if isinstance(chosen, str) and chosen else _DEFAULT_BUNDLE[backend]
    candidates: list[tuple[Path, Manifest]] = []
    for path in find_bundles(models_dir):
        try:
            manifest = read_manifest(path)
        except BundleError as exc:
            logger.warning("skipping unreadable bundle: %s", exc)
            continue
        if manifest.kind == kind:
            candidates.append((path, manifest))
    for path, manifest in candidates:
        if wanted in (path.name, manifest.name):
            return path
    prefixed = [(m.created_at, p) for p, m in candidates if p.name.startswith(wanted)]
    chosen = max(prefixed)[1] if prefixed else (candidates[0][0] if candidates else None)
    if chosen is not None:
        logger.warning("no %s bundle %r in %s; using %s", kind, wanted, models_dir, chosen.name)
    return chosen


def load_backends(settings: Settings, metrics: ServiceMetrics) -> dict[str, Backend]:
    """Load every backend that has a bundle (fully verified), sharing one output safety filter;
    raises when none has one or when the safety filter the settings ask for cannot be built."""
    device = resolve_device(settings.device)
    dtype = serving_dtype(device)
    limits = BatchLimits(settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue)
    safety_dir = (
        select_bundle(settings.models_dir, "safety", settings.safety_bundle)
        if settings.safety_filter != "off"
        else None
    )
    # Loaded first: a bad classifier bundle fails the whole load (start-up or reload), never
    # leaving backends that serve unfiltered.
    safety = load_safety_filter(settings, metrics, safety_dir, device)
    wanted = {"generative": settings.generative_bundle, "retrieval": settings.retrieval_bundle}
    backends: dict[str, Backend] = {}
    for name in BACKENDS:
        path = select_bundle(settings.models_dir, name, wanted[name])
        if path is None:
            logger.warning(
                "no %s bundle in %s: the %s backend is off",
                _KIND_OF[name],
                settings.models_dir,
                name,
            )
            continue
        backend: Backend
        if name == "generative":
            backend = GenerativeBackend.load(path, device, dtype, metrics, limits, safety)
        else:
            backend = RetrievalBackend.load(
                path,
                device,
                dtype,
                metrics,
                limits,
                max_candidates=settings.max_candidates,
                safety=safety,
            )
        logger.info("loaded %s backend %s on %s", name, backend.model_id, device)
        backends[name] = backend
    if not backends:
        raise BundleError(f"no generator or retriever bundle found in {settings.models_dir}")
    return backends


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
                    path=str(backend.bundle_dir),
                    created_at=manifest.created_at if manifest else "",
                    device=backend.device,
                    method=(manifest.training.get("method") if manifest else None),
                )
            )
        return out

    def check_limits(self, request: RespondRequest) -> list[str]:
        """The context, normalised like training text; raises PayloadTooLarge / InvalidRequest."""
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
        if total > s.max_request_chars:
            raise PayloadTooLarge(
                f"context has {total} characters; the limit is {s.max_request_chars}"
            )
        normalized = [normalize_text(t) for t in turns]
        for i, turn in enumerate(normalized):
            if not turn:
                raise InvalidRequest(f"context[{i}] is empty")
        return normalized

    async def respond(self, request: RespondRequest) -> RespondResponse:
        """Answer one request; every outcome is counted once in dialogue_requests_total."""
        started = time.perf_counter()
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
            answered_by, answer = await self._answer(backends, primary, context, params)
            backend_label = answered_by.name
        except ServiceError as exc:
            label = exc.backend or backend_label
            self.metrics.observe_request(label, arm, _outcome(exc), time.perf_counter() - started)
            raise
        elapsed = time.perf_counter() - started
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
    ) -> tuple[Backend, Answer]:
        """Try ``primary``, then (FALLBACK=on) the other backend; returns (who answered, answer).

        Fallback is for a backend's failure, absence or deadline. A full queue (Overloaded) is
        shed to the client as 429 at once: sending the overflow to the other backend would only
        overload that one too and hide the overload from clients."""
        order = [primary]
        if self.settings.fallback:
            order += [name for name in BACKENDS if name != primary and name in backends]
        failure: ServiceError | None = None
        for name in order:
            if failure is not None:
                assert failure.backend is not None
                self.metrics.observe_fallback(failure.backend, _outcome(failure))
                logger.warning("falling back from %s to %s: %s", failure.backend, name, failure)
            backend = backends.get(name)
            if backend is None:
                failure = BackendUnavailable(f"the {name} backend is not loaded")
                failure.backend = name
                continue
            # Each attempt gets the full deadline: the fallback exists to rescue a slow primary.
            deadline = time.monotonic() + self.settings.request_timeout_s
            try:
                return backend, await backend.submit(context, params[name], deadline)
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

"""The request handler behind POST /respond: limits, A/B arm, backend call, fallback, metrics.

Also where bundles are chosen and loaded (:func:`load_backends`), so the app module stays routes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.bundle import SERVING_FILE, BundleError, Manifest, find_bundles, read_manifest
from models.text import normalize_text
from service.answer import Answer
from service.backends import Backend, GenerativeBackend, RetrievalBackend
from service.batching import BatchLimits
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


_DEFAULT_BUNDLE = {
    "generative": "generator-nd",
    "retrieval": "retriever-g2r",
    "safety": "safety-classifier",
}
_SETTING_OF = {
    "generative": "GENERATIVE_BUNDLE",
    "retrieval": "RETRIEVAL_BUNDLE",
    "safety": "SAFETY_BUNDLE",
}


def select_bundle(models_dir: Path, backend: str, wanted: str) -> Path | None:
    """The bundle directory ``backend`` serves, as its setting (``wanted``) asks:

    - ``<name>``: exactly the bundle with that directory or manifest name. Absent, unreadable or
      of another kind: a BundleError naming the problem (start-up fails, a reload is refused and
      the loaded model keeps serving). Never another bundle in its place.
    - ``auto``: the build's choice for ``backend`` in ``<models_dir>/serving.json``
      (training/selection.py), held to the same rule; a serving.json that cannot be read is an
      error. Without serving.json (or without an entry for ``backend``): ``generator-nd`` /
      ``retriever-g2r`` / ``safety-classifier`` exactly when present, None when ``models_dir``
      holds no bundle of the kind at all, else an error listing the bundles there.
    - ``<prefix>*``: the newest bundle (manifest created_at) whose directory name starts with
      ``<prefix>``; ``any``: the newest bundle of the kind. Only when asked for like this.
    - ``off``: None (the backend is not loaded).

    The safety classifier is optional: for it an absent bundle is None, and the filter settings
    decide (service/safety.py); a present but broken one is still an error.
    """
    models_dir = Path(models_dir)
    kind = _KIND_OF[backend]
    optional = backend == "safety"
    wanted = wanted.strip()
    if wanted == "off":
        return None
    if wanted == "auto":
        chosen = _serving_choice(models_dir, backend)
        if chosen is not None:
            return _exact(models_dir, backend, chosen, "the build's choice in " + SERVING_FILE)
        default = _DEFAULT_BUNDLE[backend]
        if (models_dir / default).exists() or _named(models_dir, kind, default) is not None:
            return _exact(models_dir, backend, default, "the default for auto")
        if optional or not _of_kind(models_dir, kind):
            return None
        raise BundleError(_missing(models_dir, backend, default, "the default for auto"))
    if wanted == "any" or wanted.endswith("*"):
        prefix = "" if wanted == "any" else wanted[:-1]
        matches = [
            (m.created_at, p) for p, m in _of_kind(models_dir, kind) if p.name.startswith(prefix)
        ]
        if not matches:
            if optional:
                return None
            raise BundleError(
                f"no {kind} bundle matching {_SETTING_OF[backend]}={wanted!r} in {models_dir}"
            )
        return max(matches)[1]
    if optional and not (models_dir / wanted).exists() and _named(models_dir, kind, wanted) is None:
        return None
    return _exact(models_dir, backend, wanted, _SETTING_OF[backend])


def _exact(models_dir: Path, backend: str, name: str, source: str) -> Path:
    """The bundle called ``name`` (directory, else manifest name), of ``backend``'s kind."""
    kind = _KIND_OF[backend]
    path = models_dir / name
    if "/" in name or "\\" in name or name in (".", ".."):
        raise BundleError(f"{source} names {name!r}, which is not a bundle name")
    if path.exists():
        manifest = read_manifest(path)  # raises a BundleError naming what is wrong
    else:
        found = _named(models_dir, kind, name)
        if found is None:
            raise BundleError(_missing(models_dir, backend, name, source))
        path, manifest = found
    if manifest.kind != kind:
        raise BundleError(
            f"bundle {name!r} ({source}) is a {manifest.kind}, not a {kind}; "
            f"set {_SETTING_OF[backend]} to a {kind} bundle"
        )
    return path


def _missing(models_dir: Path, backend: str, name: str, source: str) -> str:
    kind = _KIND_OF[backend]
    there = sorted(p.name for p, _ in _of_kind(models_dir, kind))
    listed = ", ".join(there) if there else "none"
    return (
        f"no {kind} bundle {name!r} ({source}) in {models_dir}; {kind} bundles there: {listed}. "
        f"Set {_SETTING_OF[backend]} to one of them, to '<prefix>*' or 'any' to take the "
        f"newest match, or to 'off'"
    )


def _of_kind(models_dir: Path, kind: str) -> list[tuple[Path, Manifest]]:
    """Readable bundles of ``kind`` in ``models_dir`` (unreadable ones are logged and skipped:
    they are only ever served when named, and then their error is raised)."""
    out = []
    for path in find_bundles(models_dir):
        try:
            manifest = read_manifest(path)
        except BundleError as exc:
            logger.warning("skipping unreadable bundle: %s", exc)
            continue
        if manifest.kind == kind:
            out.append((path, manifest))
    return out


def _named(models_dir: Path, kind: str, name: str) -> tuple[Path, Manifest] | None:
    """The readable bundle of ``kind`` whose manifest name is ``name``, if there is one."""
    for path, manifest in _of_kind(models_dir, kind):
        if manifest.name == name:
            return path, manifest
    return None


def _serving_choice(models_dir: Path, backend: str) -> str | None:
    """The bundle name serving.json gives for ``backend``; None without the file or the entry.
    A serving.json that is not a JSON object, or an entry that is not a name, is an error:
    ``auto`` must never quietly serve something other than the build's choice."""
    path = models_dir / SERVING_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path} is not a JSON object")
    chosen = data.get(backend)
    if chosen is None:
        return None
    if not isinstance(chosen, str) or not chosen.strip():
        raise BundleError(f"{path}: {backend!r} is {chosen!r}, not a bundle name")
    return chosen.strip()


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
    # Every choice is made (and any wrong name refused) before the first model is loaded.
    paths = {name: select_bundle(settings.models_dir, name, wanted[name]) for name in BACKENDS}
    backends: dict[str, Backend] = {}
    for name, path in paths.items():
        if path is None:
            why = (
                f"{_SETTING_OF[name]}=off"
                if wanted[name].strip() == "off"
                else f"no {_KIND_OF[name]} bundle in {settings.models_dir}"
            )
            logger.warning("%s: the %s backend is off", why, name)
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

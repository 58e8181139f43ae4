"""Which bundle each arm serves (the settings, the build's serving.json) and loading them.

Every choice is made, and any wrong name refused, before the first model is loaded; loading
verifies every checksum (models/bundle.py). A reload (service/engine.py) goes through the same
path, so a bundle that would fail start-up is refused by a reload too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from models.bundle import SERVING_FILE, BundleError, Manifest, find_bundles, read_manifest
from service.arms import Arm, Serving, default_fallback
from service.backends import Backend, GenerativeBackend, RetrievalBackend
from service.batching import BatchLimits
from service.device import resolve_device, retrieval_int8, serving_dtype
from service.errors import InvalidOptions
from service.metrics import ServiceMetrics
from service.safety import load_safety_filter
from service.settings import Settings

logger = logging.getLogger(__name__)

_KIND_OF = {"generative": "generator", "retrieval": "retriever", "safety": "classifier"}
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


def select_bundle(
    models_dir: Path, backend: str, wanted: str, setting: str | None = None
) -> Path | None:
    """The bundle directory ``backend`` serves, as its setting (``wanted``) asks:

    - ``<name>``: exactly the bundle with that directory or manifest name. Absent, unreadable or
      of another kind: a BundleError naming the problem (start-up fails, a reload is refused and
      the loaded model keeps serving). Never another bundle in its place.
    - ``auto``: the build's choice for ``backend`` in ``<models_dir>/serving.json``
      (training/pipeline/selection.py), held to the same rule; a serving.json that cannot be read is an
      error. Without serving.json (or without an entry for ``backend``): ``generator-nd`` /
      ``retriever-g2r`` / ``safety-classifier`` exactly when present, None when ``models_dir``
      holds no bundle of the kind at all, else an error listing the bundles there.
    - ``<prefix>*``: the newest bundle (manifest created_at) whose directory name starts with
      ``<prefix>``; ``any``: the newest bundle of the kind. Only when asked for like this.
    - ``off``: None (the backend is not loaded).

    The safety classifier is optional: for it an absent bundle is None, and the filter settings
    decide (service/safety.py); a present but broken one is still an error. ``setting`` names
    the setting an error message tells the operator to change (default: the backend's own).
    """
    models_dir = Path(models_dir)
    setting = setting or _SETTING_OF[backend]
    kind = _KIND_OF[backend]
    optional = backend == "safety"
    wanted = wanted.strip()
    if wanted == "off":
        return None
    if wanted == "auto":
        chosen = _serving_choice(models_dir, backend)
        if chosen is not None:
            return _exact(
                models_dir, backend, chosen, "the build's choice in " + SERVING_FILE, setting
            )
        default = _DEFAULT_BUNDLE[backend]
        if (models_dir / default).exists() or _named(models_dir, kind, default) is not None:
            return _exact(models_dir, backend, default, "the default for auto", setting)
        if optional or not _of_kind(models_dir, kind):
            return None
        raise BundleError(_missing(models_dir, backend, default, "the default for auto", setting))
    if wanted == "any" or wanted.endswith("*"):
        prefix = "" if wanted == "any" else wanted[:-1]
        matches = [
            (m.created_at, p) for p, m in _of_kind(models_dir, kind) if p.name.startswith(prefix)
        ]
        if not matches:
            if optional:
                return None
            raise BundleError(f"no {kind} bundle matching {setting}={wanted!r} in {models_dir}")
        return max(matches)[1]
    if optional and not (models_dir / wanted).exists() and _named(models_dir, kind, wanted) is None:
        return None
    return _exact(models_dir, backend, wanted, setting, setting)


def _exact(
    models_dir: Path, backend: str, name: str, source: str, setting: str | None = None
) -> Path:
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
            raise BundleError(_missing(models_dir, backend, name, source, setting))
        path, manifest = found
    if manifest.kind != kind:
        raise BundleError(
            f"bundle {name!r} ({source}) is a {manifest.kind}, not a {kind}; "
            f"set {setting or _SETTING_OF[backend]} to a {kind} bundle"
        )
    return path


def _missing(
    models_dir: Path, backend: str, name: str, source: str, setting: str | None = None
) -> str:
    kind = _KIND_OF[backend]
    setting = setting or _SETTING_OF[backend]
    there = sorted(p.name for p, _ in _of_kind(models_dir, kind))
    listed = ", ".join(there) if there else "none"
    return (
        f"no {kind} bundle {name!r} ({source}) in {models_dir}; {kind} bundles there: {listed}. "
        f"Set {setting} to one of them, to '<prefix>*' or 'any' to take the "
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


_BACKEND_OF_KIND = {"generator": "generative", "retriever": "retrieval"}


def arm_backend_kind(models_dir: Path, wanted: str, source: str) -> str:
    """The backend kind of the bundle an arm names without saying its kind: read from the
    manifest of the bundle called ``wanted`` (directory or manifest name), or of the newest
    bundle a ``<prefix>*`` matches."""
    models_dir = Path(models_dir)
    if wanted.endswith("*"):
        matches = []
        for kind in _BACKEND_OF_KIND:
            matches += [
                (m.created_at, m.kind)
                for p, m in _of_kind(models_dir, kind)
                if p.name.startswith(wanted[:-1])
            ]
        if not matches:
            raise BundleError(
                f"no generator or retriever bundle matching {source}={wanted!r} in {models_dir}"
            )
        return _BACKEND_OF_KIND[max(matches)[1]]
    if "/" in wanted or "\\" in wanted or wanted in (".", ".."):
        raise BundleError(f"{source} names {wanted!r}, which is not a bundle name")
    if (models_dir / wanted).exists():
        manifest = read_manifest(models_dir / wanted)
    else:
        named = [m for kind in _BACKEND_OF_KIND for p, m in _of_kind(models_dir, kind)]
        found = [m for m in named if m.name == wanted]
        if not found:
            there = sorted(
                {p.name for kind in _BACKEND_OF_KIND for p, _ in _of_kind(models_dir, kind)}
            )
            raise BundleError(
                f"no bundle {wanted!r} ({source}) in {models_dir}; generator and retriever "
                f"bundles there: {', '.join(there) or 'none'}"
            )
        manifest = found[0]
    if manifest.kind not in _BACKEND_OF_KIND:
        raise BundleError(
            f"bundle {wanted!r} ({source}) is a {manifest.kind}, not a generator or retriever"
        )
    return _BACKEND_OF_KIND[manifest.kind]


def load_serving(settings: Settings, metrics: ServiceMetrics) -> Serving:
    """Load every arm's bundle (fully verified; arms naming the same bundle share one backend),
    sharing one output safety filter; raises when no arm has a bundle, when an arm's option
    defaults do not fit its backend, or when the safety filter the settings ask for cannot be
    built. Start-up and reload both come here."""
    device = resolve_device(settings.device)
    limits = BatchLimits(settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue)
    safety_dir = (
        select_bundle(settings.models_dir, "safety", settings.safety_bundle)
        if settings.safety_filter != "off"
        else None
    )
    # Loaded first: a bad classifier bundle fails the whole load (start-up or reload), never
    # leaving backends that serve unfiltered.
    safety = load_safety_filter(settings, metrics, safety_dir, device)
    specs = settings.arm_specs()
    # Every choice is made (and any wrong name refused) before the first model is loaded.
    chosen: dict[str, tuple[str, Path | None]] = {}
    for name, spec in specs.items():
        kind = spec.backend or arm_backend_kind(settings.models_dir, spec.bundle, spec.source)
        chosen[name] = (kind, select_bundle(settings.models_dir, kind, spec.bundle, spec.source))
    loaded: dict[Path, Backend] = {}
    arms: dict[str, Arm] = {}
    try:
        for name, spec in specs.items():
            kind, path = chosen[name]
            if path is None:
                why = (
                    f"{spec.source}=off"
                    if spec.bundle.strip() == "off"
                    else f"no {_KIND_OF[kind]} bundle in {settings.models_dir}"
                )
                logger.warning("%s: the %s arm is off", why, name)
                arms[name] = Arm(name, spec.weight, kind, None, spec.options)
                continue
            key = path.resolve()
            if key not in loaded:
                backend: Backend
                if kind == "generative":
                    backend = GenerativeBackend.load(
                        path,
                        device,
                        serving_dtype(device, settings.dtype, kind),
                        metrics,
                        limits,
                        safety,
                        continuous=settings.continuous_batching,
                        prefill_thread=settings.prefill_thread,
                        rerank=settings.generative_rerank,
                        rerank_below=settings.generative_rerank_below,
                    )
                else:
                    backend = RetrievalBackend.load(
                        path,
                        device,
                        serving_dtype(device, settings.dtype, kind),
                        metrics,
                        limits,
                        max_candidates=settings.max_candidates,
                        safety=safety,
                        load_options={
                            "int8": retrieval_int8(device, settings.dtype, settings.retrieval_int8)
                        },
                    )
                int8 = (
                    " (int8 context encoder)" if getattr(backend.responder, "int8", False) else ""
                )
                warm = backend.warm_up()
                logger.info(
                    "loaded %s bundle %s on %s%s%s",
                    kind,
                    backend.model_id,
                    device,
                    int8,
                    "" if warm is None else f", warmed up in {warm * 1000:.0f} ms",
                )
                loaded[key] = backend
            backend = loaded[key]
            try:  # the arm's option defaults must fit its backend: refused here, not per request
                backend.prepare(spec.options)
            except InvalidOptions as exc:
                raise BundleError(
                    f"arm {name!r}: its options do not fit {backend.model_id}: {exc}"
                ) from None
            arms[name] = Arm(name, spec.weight, kind, backend, spec.options)
    except BaseException:
        for loaded_backend in loaded.values():  # never started: release what they hold
            loaded_backend.close()
        raise
    if not loaded:
        raise BundleError(f"no generator or retriever bundle found in {settings.models_dir}")
    # generate, then rank (GENERATIVE_RERANK): the generators rank their n-best with the
    # retriever of the first retrieval arm that has one (the served retriever by default)
    ranker = next(
        (a.backend for a in arms.values() if isinstance(a.backend, RetrievalBackend)), None
    )
    for backend in loaded.values():
        if isinstance(backend, GenerativeBackend):
            backend.ranker = ranker
            if backend.ranks and backend.rerank > 1:
                below = (
                    f"while fewer than {backend.rerank_below} requests are in flight"
                    if backend.rerank_below
                    else "at any load"
                )
                logger.info(
                    "%s: replies are the best of a %d-best ranked by %s, %s (GENERATIVE_RERANK)",
                    backend.model_id,
                    backend.rerank,
                    backend.ranker.model_id if backend.ranker is not None else "-",
                    below,
                )
    for name, spec in specs.items():  # fallbacks once every arm is known
        arm = arms[name]
        if spec.fallback is not None:
            target = arms[spec.fallback]
            fallback = (
                spec.fallback if target.backend is not None and spec.fallback != name else None
            )
        else:
            fallback = default_fallback(arms, arm.kind, exclude=name)
        arms[name] = replace(arm, fallback=fallback)
    return Serving(arms=arms, weights={name: spec.weight for name, spec in specs.items()})

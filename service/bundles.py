"""Which bundle each backend serves (the settings, the build's serving.json) and loading them.

Every choice is made, and any wrong name refused, before the first model is loaded; loading
verifies every checksum (models/bundle.py). A reload (service/engine.py) goes through the same
path, so a bundle that would fail start-up is refused by a reload too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from models.bundle import SERVING_FILE, BundleError, Manifest, find_bundles, read_manifest
from service.backends import Backend, GenerativeBackend, RetrievalBackend
from service.batching import BatchLimits
from service.device import resolve_device, serving_dtype
from service.metrics import ServiceMetrics
from service.routing import BACKENDS
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


def select_bundle(models_dir: Path, backend: str, wanted: str) -> Path | None:
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

"""Bundles: self-describing model directories, the contract between training and serving.

A bundle is a directory holding ``manifest.json`` (kind, config, training provenance, metrics and
the sha256 of every other file), ``tokenizer.json``, ``model.safetensors`` and, for retrievers,
``responses.jsonl`` and ``index.faiss``; safety classifiers (kind ``classifier``) may add a
``blocklist.txt`` the service filters replies with. This module only knows files, tensors and JSON: it never
imports model code, so training and serving can both depend on it. See docs/design.md, "Bundles".

Generators imported from elsewhere carry an ``architecture`` in their manifest (absent from our own
bundles, whose format is unchanged): ``hf-seq2seq`` / ``hf-causal`` (a Hugging Face model directory:
``config.json``, tokenizer files and ``*.safetensors`` weights, all checksummed; never pickle) and
``remote-openai`` (no files at all: the manifest says which OpenAI-compatible endpoint answers).
See models/hf_generator.py and models/remote_generator.py.

Writing is atomic at the directory level: everything goes into ``<out_dir>.tmp`` (fsynced), then
the directory is swapped into place with renames. Crash windows of :func:`write_bundle`:

1. While ``<out_dir>.tmp`` is written: ``out_dir`` is untouched; the stale ``.tmp`` is ignored by
   :func:`find_bundles` and removed by the next write.
2. Between renaming ``out_dir`` -> ``<out_dir>.old`` and ``<out_dir>.tmp`` -> ``out_dir`` (two
   renames, microseconds apart): ``out_dir`` is absent, but both the previous (``.old``) and the new
   (``.tmp``) bundle are complete on disk; rename either back by hand, or simply write again.
3. After the swap, before ``<out_dir>.old`` is deleted: ``out_dir`` is the complete new bundle; the
   stale ``.old`` is ignored by :func:`find_bundles` and removed by the next write.

At no point does ``out_dir`` exist half-written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
BUNDLE_KINDS = ("generator", "retriever", "classifier")
# Generators other than our own seq2seq (whose manifests have no ``architecture``).
HF_ARCHITECTURES = ("hf-seq2seq", "hf-causal")
ARCHITECTURES = (*HF_ARCHITECTURES, "remote-openai")
HF_CONFIG_FILE = "config.json"
# Weight formats a bundle never holds: pickle (runs code when loaded) and other frameworks'.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"
RESPONSES_FILE = "responses.jsonl"
INDEX_FILE = "index.faiss"

# Files each kind must list in its manifest (and hold on disk), besides manifest.json itself.
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "generator": (TOKENIZER_FILE, WEIGHTS_FILE),
    "retriever": (TOKENIZER_FILE, WEIGHTS_FILE, RESPONSES_FILE, INDEX_FILE),
    # A safety classifier (models/safety.py); its optional blocklist.txt is checksummed like
    # every other listed file when present.
    "classifier": (TOKENIZER_FILE, WEIGHTS_FILE),
}
# ... and by architecture, for generators that have one (an HF bundle also needs at least one
# ``*.safetensors`` file; a remote one has no files).
ARCHITECTURE_FILES: dict[str, tuple[str, ...]] = {
    "hf-seq2seq": (HF_CONFIG_FILE,),
    "hf-causal": (HF_CONFIG_FILE,),
    "remote-openai": (),
}

MANIFEST_KEYS = (
    "format_version",
    "kind",
    "name",
    "created_at",
    "model_config",
    "training",
    "metrics",
    "files",
)
OPTIONAL_MANIFEST_KEYS = ("architecture",)  # written only when set

_TMP_SUFFIX = ".tmp"
_OLD_SUFFIX = ".old"
_CHUNK_BYTES = 1 << 20  # 1 MiB: hashing/copying never holds a whole (possibly huge) file in memory
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class BundleError(Exception):
    """A bundle on disk is wrong; the message names the bundle directory and the offending file."""

    def __init__(
        self, message: str, *, bundle_dir: Path | str | None = None, file: str | None = None
    ):
        super().__init__(message)
        self.bundle_dir = bundle_dir
        self.file = file


def bundle_error(bundle_dir: Path | str | None, file: str | None, problem: str) -> BundleError:
    """Build a BundleError whose message reads ``bundle <dir>: <problem>``."""
    prefix = f"bundle {bundle_dir}: " if bundle_dir is not None else ""
    return BundleError(prefix + problem, bundle_dir=bundle_dir, file=file)


def required_files(kind: str, architecture: str | None = None) -> tuple[str, ...]:
    """Files a bundle of this kind (and generator architecture) must contain besides manifest.json."""
    if kind not in REQUIRED_FILES:
        raise ValueError(
            f"unknown bundle kind {kind!r} (expected one of: {', '.join(BUNDLE_KINDS)})"
        )
    if architecture is None:
        return REQUIRED_FILES[kind]
    if kind != "generator" or architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture {architecture!r} is not a generator architecture "
            f"(expected one of: {', '.join(ARCHITECTURES)})"
        )
    return ARCHITECTURE_FILES[architecture]


def _is_plain_file_name(name: object) -> bool:
    """True for a bare file name that stays inside the bundle directory."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
    )


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a bundle."""

    format_version: int
    kind: str
    name: str
    created_at: str  # ISO-8601, UTC
    model_config: dict[str, Any]  # enough to rebuild the architecture without anything else
    training: dict[str, Any]  # data, preset, steps, seed, method, ...
    metrics: dict[str, Any]  # offline evaluation; not checksummed, may be updated later
    files: dict[str, str]  # file name -> sha256 hex digest; manifest.json itself is not listed
    # None for our own bundles; hf-seq2seq | hf-causal | remote-openai for imported generators
    architecture: str | None = None

    @property
    def bundle_id(self) -> str:
        """``name@<first 8 hex of sha256(model.safetensors)>``: what the service reports as "model".

        A bundle without that file (sharded HF weights, a remote endpoint) hashes its file digests
        and model_config instead, so the id changes whenever the weights or the endpoint do."""
        if WEIGHTS_FILE in self.files:
            return f"{self.name}@{self.files[WEIGHTS_FILE][:8]}"
        what = {"architecture": self.architecture, "files": self.files, "model": self.model_config}
        digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
        return f"{self.name}@{digest[:8]}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready deep copy, keys in manifest order (``architecture`` only when set)."""
        out: dict[str, Any] = {}
        for key in MANIFEST_KEYS:
            out[key] = copy.deepcopy(getattr(self, key))
            if key == "kind" and self.architecture is not None:
                out["architecture"] = self.architecture
        return out

    @classmethod
    def from_dict(cls, data: object, *, bundle_dir: Path | str | None = None) -> Manifest:
        """Validate a decoded manifest.json and build a Manifest; raises BundleError."""

        def fail(problem: str) -> BundleError:
            return bundle_error(bundle_dir, MANIFEST_FILE, f"{MANIFEST_FILE}: {problem}")

        if not isinstance(data, dict):
            raise fail(f"expected a JSON object, got {type(data).__name__}")
        # The version comes first: a future format may not have the keys this build expects.
        if "format_version" in data:
            version = data["format_version"]
            if isinstance(version, bool) or version != FORMAT_VERSION:
                raise fail(
                    f"format_version {version!r} is not supported (this build reads {FORMAT_VERSION})"
                )
        missing = [key for key in MANIFEST_KEYS if key not in data]
        if missing:
            raise fail(f"missing keys: {', '.join(missing)}")
        unknown = sorted(
            str(key) for key in data if key not in MANIFEST_KEYS + OPTIONAL_MANIFEST_KEYS
        )
        if unknown:
            raise fail(f"unknown keys: {', '.join(unknown)}")

        kind = data["kind"]
        if kind not in BUNDLE_KINDS:
            raise fail(f"unknown kind {kind!r} (expected one of: {', '.join(BUNDLE_KINDS)})")
        name = data["name"]
        if not isinstance(name, str) or not name:
            raise fail(f"name must be a non-empty string, got {name!r}")
        created_at = data["created_at"]
        try:
            datetime.fromisoformat(created_at)
        except (TypeError, ValueError):
            raise fail(f"created_at {created_at!r} is not an ISO-8601 timestamp") from None
        for key in ("model_config", "training", "metrics", "files"):
            if not isinstance(data[key], dict):
                raise fail(f"{key} must be a JSON object, got {type(data[key]).__name__}")

        architecture = data.get("architecture")
        if architecture is not None and (kind != "generator" or architecture not in ARCHITECTURES):
            raise fail(
                f"architecture {architecture!r} is not a generator architecture "
                f"(expected one of: {', '.join(ARCHITECTURES)})"
            )
        files: dict[str, Any] = data["files"]
        for file_name, digest in files.items():
            if not _is_plain_file_name(file_name) or file_name == MANIFEST_FILE:
                raise fail(f"files lists an invalid file name {file_name!r}")
            if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
                raise fail(f"files[{file_name!r}] is not a sha256 hex digest: {digest!r}")
            if architecture is not None and file_name.lower().endswith(PICKLE_SUFFIXES):
                raise fail(f"files lists {file_name}: pickle files are never part of a bundle")
        for file_name in required_files(kind, architecture):
            if file_name not in files:
                what = f"kind {kind}" + (f", architecture {architecture}" if architecture else "")
                raise bundle_error(
                    bundle_dir,
                    file_name,
                    f"{MANIFEST_FILE} does not list required file {file_name} ({what})",
                )
        if architecture in HF_ARCHITECTURES and not any(f.endswith(".safetensors") for f in files):
            raise bundle_error(
                bundle_dir,
                MANIFEST_FILE,
                f"{MANIFEST_FILE} lists no *.safetensors weights (architecture {architecture})",
            )

        return cls(
            format_version=FORMAT_VERSION,
            kind=kind,
            name=name,
            created_at=created_at,
            model_config=copy.deepcopy(data["model_config"]),
            training=copy.deepcopy(data["training"]),
            metrics=copy.deepcopy(data["metrics"]),
            files=dict(files),
            architecture=architecture,
        )


# --- low-level file helpers -------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry (new/renamed files) to disk; a no-op where unsupported."""
    if os.name == "nt":  # Windows cannot open directories; NTFS journals metadata anyway
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    """sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _write_bytes(path: Path, data: bytes) -> str:
    """Write bytes, fsync, and return their sha256."""
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _copy_hashing(src: BinaryIO, path: Path) -> str:
    """Copy a stream into a new file in chunks, fsync, and return the sha256 of what was copied."""
    digest = hashlib.sha256()
    with path.open("wb") as dst:
        while chunk := src.read(_CHUNK_BYTES):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def _write_weights(path: Path, state_dict: Mapping[str, torch.Tensor]) -> str:
    """Save tensors with safetensors, fsync, and return the file's sha256."""
    # safetensors refuses tensors that share storage (tied embeddings, views of one buffer) and
    # non-contiguous ones. Cloning every tensor into its own contiguous CPU buffer sidesteps both:
    # tied weights are stored once per key and come back as separate tensors, which is what
    # `nn.Module.load_state_dict` expects (it copies into the module's own, still tied, parameters).
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict[{key!r}] is a {type(value).__name__}, not a torch.Tensor")
        tensors[key] = value.detach().cpu().contiguous().clone()
    save_file(tensors, str(path), metadata={"format": "pt"})
    with path.open("rb+") as f:
        os.fsync(f.fileno())
    # save_file writes the file itself, so hash it back (from the page cache) after the flush.
    return _sha256_file(path)


def _write_manifest(path: Path, manifest: Manifest) -> None:
    """Write manifest.json (pretty, UTF-8) and fsync it."""
    text = json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n"
    _write_bytes(path, text.encode("utf-8"))


def _same_mode(bundle_dir: Path, reference: Path) -> None:
    """Give every file of the bundle the mode of ``reference``, a file this module created
    (0644 under the usual umask 022). safetensors creates the weights file itself, 0600, so
    without this one file of a bundle would be unreadable to the group that reads the others."""
    mode = reference.stat().st_mode & 0o777
    for path in bundle_dir.iterdir():
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


def _remove(path: Path) -> None:
    """Remove a file or a directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _sibling(path: Path, suffix: str) -> Path:
    """``<path><suffix>`` next to ``path`` (``artifacts/x`` -> ``artifacts/x.tmp``)."""
    return path.with_name(path.name + suffix)


# --- public API -------------------------------------------------------------------------------


def write_bundle(
    out_dir: Path,
    *,
    kind: str,
    name: str,
    model_config: Mapping[str, Any],
    training: Mapping[str, Any],
    metrics: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor] | None,
    tokenizer_json: str | None,
    extra_files: Mapping[str, bytes | Path] | None = None,
    architecture: str | None = None,
) -> Manifest:
    """Write a bundle atomically to ``out_dir`` (replacing any previous one) and return its manifest.

    Our own bundles pass ``state_dict`` and ``tokenizer_json``; an imported generator (an
    ``architecture``) passes None for both and brings its files (config, tokenizer, safetensors
    weights) as ``extra_files``, copied and checksummed like the rest."""
    out_dir = Path(out_dir)
    if not out_dir.name or out_dir.name in (".", ".."):
        raise ValueError(f"out_dir must name a directory, got {str(out_dir)!r}")
    required = required_files(kind, architecture)
    if not name:
        raise ValueError("name must be a non-empty string")
    extras = dict(extra_files or {})
    own = [
        f
        for f, given in ((TOKENIZER_FILE, tokenizer_json), (WEIGHTS_FILE, state_dict))
        if given is not None
    ]
    for file_name in extras:
        if not _is_plain_file_name(file_name):
            raise ValueError(f"extra file name {file_name!r} must be a bare file name")
        if file_name in (MANIFEST_FILE, MANIFEST_FILE + _TMP_SUFFIX, *own):
            raise ValueError(f"extra file name {file_name!r} is reserved")
        if architecture is not None and file_name.lower().endswith(PICKLE_SUFFIXES):
            raise ValueError(f"extra file {file_name!r} is a pickle format: bundles never hold one")
    missing_extras = [f for f in required if f not in (*own, *extras)]
    if missing_extras:
        raise ValueError(f"a {kind} bundle needs extra_files: {', '.join(missing_extras)}")
    # Fail on non-JSON config before spending time writing weights.
    for label, value in (
        ("model_config", model_config),
        ("training", training),
        ("metrics", metrics),
    ):
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{label} is not JSON-serialisable: {exc}") from exc

    tmp_dir = _sibling(out_dir, _TMP_SUFFIX)
    old_dir = _sibling(out_dir, _OLD_SUFFIX)
    if tmp_dir.exists():
        logger.warning("removing stale %s left by an interrupted write", tmp_dir)
        _remove(tmp_dir)
    tmp_dir.mkdir(parents=True)

    files: dict[str, str] = {}
    if tokenizer_json is not None:
        files[TOKENIZER_FILE] = _write_bytes(
            tmp_dir / TOKENIZER_FILE, tokenizer_json.encode("utf-8")
        )
    if state_dict is not None:
        files[WEIGHTS_FILE] = _write_weights(tmp_dir / WEIGHTS_FILE, state_dict)
    for file_name, source in sorted(extras.items()):
        if isinstance(source, bytes | bytearray | memoryview):
            files[file_name] = _write_bytes(tmp_dir / file_name, bytes(source))
        else:
            with Path(source).open("rb") as src:
                files[file_name] = _copy_hashing(src, tmp_dir / file_name)

    manifest = Manifest.from_dict(
        {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "name": name,
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "model_config": dict(model_config),
            "training": dict(training),
            "metrics": dict(metrics),
            "files": files,
            **({"architecture": architecture} if architecture is not None else {}),
        },
        bundle_dir=tmp_dir,
    )
    # The manifest goes last: a .tmp directory without one is recognisably incomplete.
    _write_manifest(tmp_dir / MANIFEST_FILE, manifest)
    _same_mode(tmp_dir, tmp_dir / MANIFEST_FILE)
    _fsync_dir(tmp_dir)

    # Swap into place (see the module docstring for what a crash leaves behind at each step).
    if old_dir.exists():
        logger.warning("removing stale %s left by an interrupted write", old_dir)
        _remove(old_dir)
    replaced = out_dir.exists() or out_dir.is_symlink()
    if replaced:
        os.rename(out_dir, old_dir)
    os.rename(tmp_dir, out_dir)
    _fsync_dir(out_dir.parent)
    if replaced:
        _remove(old_dir)
    logger.info(
        "wrote %s bundle %s to %s (%d files%s)",
        kind,
        manifest.bundle_id,
        out_dir,
        len(files),
        ", replaced previous" if replaced else "",
    )
    return manifest


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read and validate ``<bundle_dir>/manifest.json`` (JSON, format version, kind, keys)."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise bundle_error(bundle_dir, None, "is not a directory")
    path = bundle_dir / MANIFEST_FILE
    if not path.is_file():
        raise bundle_error(bundle_dir, MANIFEST_FILE, f"{MANIFEST_FILE} is missing")
    try:
        data = json.loads(path.read_bytes())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise bundle_error(
            bundle_dir, MANIFEST_FILE, f"{MANIFEST_FILE} is not valid JSON: {exc}"
        ) from exc
    return Manifest.from_dict(data, bundle_dir=bundle_dir)


def verify_bundle(bundle_dir: Path) -> Manifest:
    """Validate the manifest and check every listed file exists with the recorded sha256."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)  # also checks the kind's required files are listed
    for file_name, expected in manifest.files.items():
        path = bundle_dir / file_name
        if not path.is_file():
            raise bundle_error(bundle_dir, file_name, f"{file_name} is missing")
        actual = _sha256_file(path)
        if actual != expected:
            raise bundle_error(
                bundle_dir,
                file_name,
                f"{file_name} checksum mismatch (expected {expected}, got {actual})",
            )
    logger.info("verified %s bundle %s at %s", manifest.kind, manifest.bundle_id, bundle_dir)
    return manifest


def load_state_dict(
    bundle_dir: Path, manifest: Manifest, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Load the bundle's weights onto ``device`` with safetensors; call after verify_bundle."""
    bundle_dir = Path(bundle_dir)
    if WEIGHTS_FILE not in manifest.files:
        raise bundle_error(
            bundle_dir, WEIGHTS_FILE, f"{MANIFEST_FILE} does not list {WEIGHTS_FILE}"
        )
    path = bundle_dir / WEIGHTS_FILE
    if not path.is_file():
        raise bundle_error(bundle_dir, WEIGHTS_FILE, f"{WEIGHTS_FILE} is missing")
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as exc:
        raise bundle_error(
            bundle_dir, WEIGHTS_FILE, f"{WEIGHTS_FILE} is not valid safetensors: {exc}"
        ) from exc


def find_bundles(models_dir: Path) -> list[Path]:
    """Sorted subdirectories of ``models_dir`` holding a manifest.json, skipping ``*.tmp``/``*.old``."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    found = []
    for child in models_dir.iterdir():
        if child.name.endswith((_TMP_SUFFIX, _OLD_SUFFIX)):
            target = child.with_name(child.name[: -len(_OLD_SUFFIX)])
            if child.name.endswith(_OLD_SUFFIX) and not target.exists():
                # Crash window 2 of write_bundle: the previous bundle is intact but set aside.
                logger.warning("%s exists without %s: a write was interrupted", child, target)
            continue
        if child.is_dir() and (child / MANIFEST_FILE).is_file():
            found.append(child)
    return sorted(found)


def _replace_manifest(bundle_dir: Path, updated: Manifest) -> None:
    """Write ``updated`` as the bundle's manifest.json in one atomic replace."""
    tmp_path = bundle_dir / (MANIFEST_FILE + _TMP_SUFFIX)
    _write_manifest(tmp_path, updated)
    os.replace(tmp_path, bundle_dir / MANIFEST_FILE)
    _fsync_dir(bundle_dir)


def update_metrics(bundle_dir: Path, metrics: Mapping[str, Any]) -> Manifest:
    """Merge ``metrics`` into the bundle's manifest atomically and return the new manifest."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    try:
        json.dumps(dict(metrics))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metrics are not JSON-serialisable: {exc}") from exc
    updated = replace(manifest, metrics={**manifest.metrics, **copy.deepcopy(dict(metrics))})
    # Metrics are deliberately not checksummed, so only manifest.json changes; replace it whole.
    _replace_manifest(bundle_dir, updated)
    logger.info("updated metrics of bundle %s: %s", updated.bundle_id, ", ".join(sorted(metrics)))
    return updated


def update_model_config(bundle_dir: Path, section: str, values: Mapping[str, Any]) -> Manifest:
    """Merge ``values`` into ``model_config[section]`` atomically (a generator's default
    ``decoding``, say) and return the new manifest. The weights are untouched, and so is the id of
    a bundle that has a weights file (it names the weights); the caller checks that the section
    still builds."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    current = manifest.model_config.get(section)
    if not isinstance(current, dict):
        raise ValueError(f"bundle {bundle_dir}: model_config has no {section!r} section")
    config = copy.deepcopy(manifest.model_config)
    config[section] = {**current, **copy.deepcopy(dict(values))}
    updated = replace(manifest, model_config=config)
    _replace_manifest(bundle_dir, updated)
    logger.info("bundle %s -> %s: %s %s", manifest.bundle_id, updated.bundle_id, section, values)
    return updated


# --- the build's choice of bundles ---------------------------------------------------------------

SERVING_FILE = (
    "serving.json"  # written by `python -m training build` (training/pipeline/selection.py)
)


def read_serving(models_dir: Path) -> dict[str, Any] | None:
    """``<models_dir>/serving.json`` ({"generative": name, "retrieval": name, "why": ...}), or None
    when it is absent or unreadable."""
    try:
        data = json.loads((Path(models_dir) / SERVING_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

"""The contract every bundled model in models/ keeps: the generative and retrieval responders and
the safety classifier.

A :class:`Responder` is a torch module, a tokenizer and the manifest of the bundle it came from.
Subclasses say what kind of bundle they are (``kind``), what their ``model_config`` holds, which
files travel beside the weights (:meth:`Responder.bundle_files`) and how they are rebuilt from a
verified bundle (:meth:`Responder.from_bundle`); loading, the kind check, saving, ``device`` and
``bundle_id`` are written once, here. The bundle format itself is models/bundle.py.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import nn

from models.bundle import (
    MANIFEST_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    BundleError,
    Manifest,
    bundle_error,
    load_state_dict,
    verify_bundle,
    write_bundle,
)
from models.tokenizer import DialogueTokenizer

# Called with (stage, seconds) as a responder's serving call moves through its stages
# (tokenize, encode, search, generate): the service turns these into its stage histograms.
StageObserver = Callable[[str, float], None]


class BundleKindError(BundleError, ValueError):
    """A bundle of another kind than the one asked for (a ValueError too, as it always was)."""


class Responder(ABC):
    """A model with its tokenizer, loadable from and savable to a bundle of kind ``kind``."""

    kind: ClassVar[str]  # the manifest's kind: generator | retriever | classifier
    model: nn.Module
    tokenizer: DialogueTokenizer
    manifest: Manifest | None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def bundle_id(self) -> str:
        """``name@<first 8 hex of the manifest's sha256>``, or ``unsaved``."""
        return self.manifest.bundle_id if self.manifest else "unsaved"

    @abstractmethod
    def model_config(self) -> dict[str, Any]:
        """What the manifest's ``model_config`` holds: enough to rebuild the model."""

    def close(self) -> None:  # noqa: B027 - a hook: nothing to release by default
        """Release what it holds besides memory (nothing here; the service calls it when a
        backend stops)."""

    def bundle_files(self) -> dict[str, bytes | Path]:
        """Files beside the weights and the tokenizer (none unless a subclass has some)."""
        return {}

    @classmethod
    @abstractmethod
    def from_bundle(cls, bundle_dir: Path, manifest: Manifest) -> Self:
        """Build (on the CPU) from a bundle whose checksums and kind were verified."""

    @classmethod
    def load(
        cls, bundle_dir: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> Self:
        """Verify every checksum and the kind, build, then move the model to ``device`` (and
        ``dtype``) in eval mode; raises BundleError naming the bad file."""
        bundle_dir = Path(bundle_dir)
        manifest = verify_bundle(bundle_dir)
        if manifest.kind != cls.kind:
            raise BundleKindError(
                f"bundle {bundle_dir}: is a {manifest.kind} bundle, not a {cls.kind}",
                bundle_dir=bundle_dir,
                file=MANIFEST_FILE,
            )
        responder = cls.from_bundle(bundle_dir, manifest)
        responder.model.to(device=device, dtype=dtype).eval()
        return responder

    def save(
        self, out_dir: Path, *, name: str, training: Mapping[str, Any], metrics: Mapping[str, Any]
    ) -> Manifest:
        """Write this responder as a bundle of its kind (atomically)."""
        self.manifest = write_bundle(
            out_dir,
            kind=self.kind,
            name=name,
            model_config=self.model_config(),
            training=training,
            metrics=metrics,
            state_dict=self.model.state_dict(),
            tokenizer_json=self.tokenizer.to_str(),
            extra_files=self.bundle_files() or None,
        )
        return self.manifest


def load_weights(model: nn.Module, bundle_dir: Path, manifest: Manifest) -> None:
    """Load the bundle's weights into ``model``; raises BundleError when they do not fit the
    model its config describes."""
    try:
        model.load_state_dict(load_state_dict(bundle_dir, manifest))
    except RuntimeError as exc:  # missing/unexpected keys or shapes that do not fit the config
        problem = f"{WEIGHTS_FILE} does not fit the {manifest.kind} config: {exc}"
        raise bundle_error(bundle_dir, WEIGHTS_FILE, problem) from exc


def load_tokenizer(bundle_dir: Path) -> DialogueTokenizer:
    """The bundle's tokenizer; raises BundleError when the file is not a valid tokenizer."""
    try:
        return DialogueTokenizer.from_file(Path(bundle_dir) / TOKENIZER_FILE)
    except Exception as exc:  # tokenizers raises its own exception types
        problem = f"{TOKENIZER_FILE} is not a valid tokenizer: {exc}"
        raise bundle_error(bundle_dir, TOKENIZER_FILE, problem) from exc


def observe(on_stage: StageObserver | None, stage: str, started: float) -> float:
    """Report ``stage``'s seconds since ``started`` (time.perf_counter()); returns the clock now."""
    now = time.perf_counter()
    if on_stage is not None:
        on_stage(stage, now - started)
    return now

"""A generative responder: seq2seq model + tokenizer + input limits + default decoding, as a bundle.

This is what the service loads and what evaluation scores, so both decode through one path.
The bundle's ``model_config`` holds three sections: ``seq2seq`` (:class:`Seq2SeqConfig`),
``inputs`` (:class:`InputConfig`) and ``decoding`` (:class:`DecodingConfig`, the defaults).

Generator bundles of other architectures (a Hugging Face model: models/hf_generator.py; an
OpenAI-compatible endpoint: models/remote_generator.py) keep the same serving surface,
:class:`Generator`; :func:`load_generator` picks the class from the manifest.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from models.bundle import MANIFEST_FILE, Manifest, read_manifest
from models.decoding import (
    ContextFreePrior,
    DecodingConfig,
    Generation,
    generate,
    group_by_config,
)
from models.inputs import InputConfig, encode_contexts
from models.responder import (
    BundleKindError,
    Responder,
    StageObserver,
    load_tokenizer,
    load_weights,
    observe,
)
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer

__all__ = ["GenerativeResponder", "Generator", "InputConfig", "Reply", "load_generator"]

# The content-free turn whose replies stand for p(reply) in anti-LM decoding: the first of G2R's
# MI dummy contexts (training/methods/g2r/teachers.py).
PRIOR_CONTEXT = "."


def context_free_source(
    tokenizer: DialogueTokenizer, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The source ids (1, S) of :data:`PRIOR_CONTEXT`, the prior of anti-LM decoding."""
    return tokenizer.pad(tokenizer.encode_contexts([[PRIOR_CONTEXT]], 8), device)


@dataclass(frozen=True)
class Reply:
    """One decoded reply: its text and its token ids (no BOS/EOS/pad)."""

    text: str
    tokens: list[int]


class GenerativeResponder(Responder):
    """Turns conversations into replies with a trained seq2seq model."""

    kind: ClassVar[str] = "generator"
    model: Seq2SeqTransformer

    def __init__(
        self,
        model: Seq2SeqTransformer,
        tokenizer: DialogueTokenizer,
        inputs: InputConfig,
        decoding: DecodingConfig,
        manifest: Manifest | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.inputs = inputs
        self.decoding = decoding
        self.manifest = manifest
        self._prior: ContextFreePrior | None = None

    def model_config(self) -> dict[str, Any]:
        return {
            "seq2seq": self.model.cfg.to_dict(),
            "inputs": asdict(self.inputs),
            "decoding": asdict(self.decoding),
        }

    @classmethod
    def from_bundle(cls, bundle_dir: Path, manifest: Manifest) -> GenerativeResponder:
        if manifest.architecture is not None:
            raise BundleKindError(
                f"bundle {bundle_dir}: is an {manifest.architecture} generator, not one of ours; "
                "load it with models.generator.load_generator",
                bundle_dir=bundle_dir,
                file=MANIFEST_FILE,
            )
        mc = manifest.model_config
        model = Seq2SeqTransformer(Seq2SeqConfig.from_dict(mc["seq2seq"]))
        load_weights(model, bundle_dir, manifest)
        return cls(
            model,
            load_tokenizer(bundle_dir),
            InputConfig(**mc["inputs"]),
            DecodingConfig(**mc["decoding"]),
            manifest,
        )

    def encode_contexts(self, contexts: Sequence[Sequence[str]]) -> torch.Tensor:
        """Right-padded source ids (B, S) from the last ``max_context_turns`` turns of each context."""
        return encode_contexts(self.tokenizer, self.inputs, contexts, self.device)

    def replace_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load other weights into this responder's model (same architecture) and drop the
        anti-LM prior memoised from the old ones. ``model.load_state_dict`` alone would leave that
        prior in place and decode with the old weights' penalty."""
        self.model.load_state_dict(state_dict)
        self._prior = None

    @property
    def prior(self) -> ContextFreePrior:
        """The context-free prior of anti-LM decoding (``DecodingConfig.anti_lm``), built on
        first use; its memo assumes this responder's weights stay as loaded
        (:meth:`replace_weights` drops it)."""
        if self._prior is None:
            self._prior = ContextFreePrior(
                self.model, context_free_source(self.tokenizer, self.device)
            )
        return self._prior

    def _prior_for(self, config: DecodingConfig) -> ContextFreePrior | None:
        return self.prior if config.anti_lm > 0 else None

    def generate(
        self,
        contexts: Sequence[Sequence[str]],
        decoding: DecodingConfig | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Generation:
        """Token-level generation; ``num_return_sequences`` rows per context, in order."""
        config = decoding or self.decoding
        return generate(
            self.model,
            self.encode_contexts(contexts),
            config,
            generator=generator,
            prior=self._prior_for(config),
        )

    def respond(
        self,
        contexts: Sequence[Sequence[str]],
        decoding: DecodingConfig | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> list[str]:
        """Reply text for each context (``num_return_sequences`` per context, flattened in order)."""
        out = self.generate(contexts, decoding, generator=generator)
        return self.tokenizer.decode_batch(out.tokens)

    def reply_each(
        self,
        contexts: Sequence[Sequence[str]],
        configs: Sequence[DecodingConfig],
        *,
        on_stage: StageObserver | None = None,
        deadline: float | None = None,
    ) -> list[list[Reply]]:
        """For each context, the ``num_return_sequences`` replies of its own decoding config.

        Contexts whose configs are equal decode as one batch (groups in the order their config
        first appears); ``on_stage`` hears each group's ``tokenize`` and ``generate`` seconds.
        ``deadline`` is ignored: local decoding runs to its end (the service stops waiting)."""
        out: list[list[Reply]] = [[] for _ in contexts]
        for config, rows in group_by_config(len(contexts), configs).items():
            started = time.perf_counter()
            src = self.encode_contexts([contexts[i] for i in rows])
            started = observe(on_stage, "tokenize", started)
            generation = generate(self.model, src, config, prior=self._prior_for(config))
            texts = self.tokenizer.decode_batch(generation.tokens)
            observe(on_stage, "generate", started)
            n = config.num_return_sequences
            for k, i in enumerate(rows):
                out[i] = [Reply(texts[j], generation.tokens[j]) for j in range(k * n, (k + 1) * n)]
        return out


class Generator(Protocol):
    """What the service (and a G2R teacher) uses of any generator, whatever its architecture."""

    decoding: DecodingConfig  # the bundle's default decoding
    manifest: Manifest | None

    @property
    def bundle_id(self) -> str: ...

    @property
    def device(self) -> Any: ...  # a torch.device (str() of it is what /v1/models shows)

    def reply_each(
        self,
        contexts: Sequence[Sequence[str]],
        configs: Sequence[DecodingConfig],
        *,
        on_stage: StageObserver | None = None,
        deadline: float | None = None,  # time.monotonic(); a remote call is cut there
    ) -> list[list[Reply]]: ...

    def close(self) -> None:
        """Release what it holds besides memory (a remote generator's connections)."""

    def respond(
        self, contexts: Sequence[Sequence[str]], decoding: DecodingConfig | None = None
    ) -> list[str]: ...


def load_generator(
    bundle_dir: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Generator:
    """Load any generator bundle, its class chosen by the manifest's ``architecture``: ours
    (none), ``hf-seq2seq`` / ``hf-causal`` (needs ``transformers``) or ``remote-openai``.

    Every loader verifies every checksum before it builds anything; raises BundleError."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    if manifest.kind != GenerativeResponder.kind:
        raise BundleKindError(
            f"bundle {bundle_dir}: is a {manifest.kind} bundle, not a generator",
            bundle_dir=bundle_dir,
            file=MANIFEST_FILE,
        )
    if manifest.architecture is None:
        return GenerativeResponder.load(bundle_dir, device, dtype)
    if manifest.architecture == "remote-openai":
        from models.remote_generator import RemoteGenerator

        return RemoteGenerator.load(bundle_dir, device, dtype)
    from models.hf_generator import HFGenerativeResponder

    return HFGenerativeResponder.load(bundle_dir, device, dtype)

"""A generative responder: seq2seq model + tokenizer + input limits + default decoding, as a bundle.

This is what the service loads and what evaluation scores, so both decode through one path.
The bundle's ``model_config`` holds three sections: ``seq2seq`` (:class:`Seq2SeqConfig`),
``inputs`` (:class:`InputConfig`) and ``decoding`` (:class:`DecodingConfig`, the defaults).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from models.bundle import Manifest, load_state_dict, verify_bundle, write_bundle
from models.decoding import DecodingConfig, Generation, generate
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer


@dataclass(frozen=True)
class InputConfig:
    """How a conversation becomes model input."""

    max_context_turns: int = 1  # most recent turns kept (1 = single-turn pairs, as in the ND paper)
    max_source_len: int = 64  # source pieces kept (the most recent ones)
    max_target_len: int = 32  # response pieces incl. EOS, in training


class GenerativeResponder:
    """Turns conversations into replies with a trained seq2seq model."""

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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id if self.manifest else "unsaved"

    def model_config(self) -> dict[str, Any]:
        return {
            "seq2seq": self.model.cfg.to_dict(),
            "inputs": asdict(self.inputs),
            "decoding": asdict(self.decoding),
        }

    @classmethod
    def load(
        cls, bundle_dir: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> GenerativeResponder:
        """Verify every checksum, then build the model; raises BundleError naming the bad file."""
        manifest = verify_bundle(bundle_dir)
        if manifest.kind != "generator":
            raise ValueError(f"bundle {bundle_dir} is a {manifest.kind}, not a generator")
        mc = manifest.model_config
        model = Seq2SeqTransformer(Seq2SeqConfig.from_dict(mc["seq2seq"]))
        model.load_state_dict(load_state_dict(bundle_dir, manifest))
        model.to(device=device, dtype=dtype).eval()
        tokenizer = DialogueTokenizer.from_file(bundle_dir / "tokenizer.json")
        return cls(
            model,
            tokenizer,
            InputConfig(**mc["inputs"]),
            DecodingConfig(**mc["decoding"]),
            manifest,
        )

    def save(
        self, out_dir: Path, *, name: str, training: Mapping[str, Any], metrics: Mapping[str, Any]
    ) -> Manifest:
        """Write this responder as a generator bundle (atomically)."""
        self.manifest = write_bundle(
            out_dir,
            kind="generator",
            name=name,
            model_config=self.model_config(),
            training=training,
            metrics=metrics,
            state_dict=self.model.state_dict(),
            tokenizer_json=self.tokenizer.to_str(),
        )
        return self.manifest

    def encode_contexts(self, contexts: Sequence[Sequence[str]]) -> torch.Tensor:
        """Right-padded source ids (B, S) from the last ``max_context_turns`` turns of each context."""
        turns = [list(c)[-self.inputs.max_context_turns :] for c in contexts]
        ids = self.tokenizer.encode_contexts(turns, self.inputs.max_source_len)
        return self.tokenizer.pad(ids, self.device)

    def generate(
        self,
        contexts: Sequence[Sequence[str]],
        decoding: DecodingConfig | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Generation:
        """Token-level generation; ``num_return_sequences`` rows per context, in order."""
        return generate(
            self.model,
            self.encode_contexts(contexts),
            decoding or self.decoding,
            generator=generator,
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

"""A response language model for the io- hit types of He & Glass (2020), section 3.2 and eq. 8.

The io-sample-min/avg hits require the trigger input to be likely under "a language model trained
on the same training data (regarding each response as an independent sentence)". We reuse the
generator's architecture and tokenizer as that LM: a seq2seq model whose source is always empty
(one ``<unk>`` id, see :meth:`models.tokenizer.DialogueTokenizer.encode_contexts`) is an
unconditional model of responses, trains with the same MLE code, saves as an ordinary generator
bundle, and -- sharing the base generator's vocabulary -- lets gibbs-enum differentiate ``R(x)``
with respect to the same one-hot inputs as the seq2seq loss.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from models.bundle import Manifest
from models.generator import GenerativeResponder
from models.seq2seq import Seq2SeqTransformer
from training.config import Preset
from training.core.data import DialogueExample
from training.core.generator import train_mle_generator
from training.core.run import RunSpec

__all__ = ["ResponseLM", "response_examples", "train_response_lm"]

logger = logging.getLogger(__name__)


def response_examples(examples: Sequence[DialogueExample]) -> list[DialogueExample]:
    """Every distinct response as a context-free example (the LM's training sentences)."""
    seen: dict[str, None] = {}
    for e in examples:
        seen.setdefault(e.response)
    return [DialogueExample((), r) for r in seen]


def train_response_lm(
    run: RunSpec,
    *,
    preset: Preset,
    base_bundle: Path,
    train_examples: Sequence[DialogueExample],
    val_examples: Sequence[DialogueExample],
    max_steps: int | None = None,
) -> Manifest | None:
    """Train the response LM with the base generator's tokenizer (shared vocabulary) and save it."""
    tokenizer = GenerativeResponder.load(base_bundle).tokenizer
    return train_mle_generator(
        run.but(data_desc=f"{run.data_desc} (responses as independent sentences)"),
        preset=preset,
        tokenizer=tokenizer,
        train_examples=response_examples(train_examples),
        val_examples=response_examples(val_examples),
        max_steps=max_steps,
    )


class ResponseLM:
    """Scores and samples token sequences with an unconditional (empty-source) seq2seq model."""

    def __init__(self, responder: GenerativeResponder) -> None:
        self.responder = responder
        self.model: Seq2SeqTransformer = responder.model
        tok = responder.tokenizer
        self.bos_id, self.eos_id, self.pad_id = tok.bos_id, tok.eos_id, tok.pad_id
        self._src_id = tok.encode_contexts([[]], 4)[0][0]  # the constant empty-source id

    @classmethod
    def load(cls, bundle_dir: Path, device: str | torch.device = "cpu") -> ResponseLM:
        return cls(GenerativeResponder.load(bundle_dir, device=device))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _memory(self, batch: int) -> tuple[Tensor, Tensor | None]:
        src = torch.full((batch, 1), self._src_id, dtype=torch.long, device=self.device)
        return self.model.encode(src)

    def token_log_probs(self, x: Tensor, x_embeds: Tensor | None = None) -> Tensor:
        """log P_LM(x_t | x_<t) for every position of ``x`` (B, n) -> (B, n); eq. 8 before the mean.

        ``x_embeds`` (B, n, d) replaces the embedding lookup of x as decoder input (for the
        gradient with respect to a one-hot input); the inputs are ``<s> x_1 .. x_{n-1}``.
        """
        b = x.size(0)
        bos = torch.full((b, 1), self.bos_id, dtype=torch.long, device=x.device)
        tgt_in = torch.cat([bos, x[:, :-1]], dim=1)
        embeds = None
        if x_embeds is not None:
            bos_embed = self.model.embed(bos)
            embeds = torch.cat([bos_embed, x_embeds[:, :-1]], dim=1)
        memory, mask = self._memory(b)
        logits = self.model.decode(tgt_in, memory, mask, tgt_embeds=embeds).logits.float()
        return F.log_softmax(logits, dim=-1).gather(-1, x.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def sample(
        self, batch: int, length: int, *, banned: Tensor, generator: torch.Generator
    ) -> Tensor:
        """``batch`` sequences of exactly ``length`` tokens sampled from the LM (ancestral sampling).

        Banned ids (``<eos>``, padding and the other special tokens) are never drawn, so a sample
        is a valid trigger initialisation of the requested length (He & Glass, Alg. 3, io- case).
        """
        memory, mask = self._memory(batch)
        cache = self.model.start_cache(memory, mask)
        tokens = torch.full((batch, 1), self.bos_id, dtype=torch.long, device=self.device)
        out = []
        for _ in range(length):
            logits = self.model.decode_step(tokens, cache).float()
            logits[:, banned] = float("-inf")
            probs = F.softmax(logits, dim=-1)
            tokens = torch.multinomial(probs.cpu(), 1, generator=generator).to(self.device)
            out.append(tokens)
        return torch.cat(out, dim=1)

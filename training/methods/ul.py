"""UL, the unlikelihood baseline of the ND paper (section 3.3, appendix B): Li et al. (2020a, "Don't
Say That!") vocabulary unlikelihood.

Tokens that the model's greedy replies use more often than the human responses are made
unlikely with a weight ``beta = p_model log(p_model / p_human)``; ``L = L_mle + alpha * L_ul``
with alpha = 1000 (ND appendix B)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.bundle import Manifest
from models.decoding import DecodingConfig
from training.config import Preset
from training.core.data import DialogueExample
from training.core.generator import (
    Seq2SeqBatch,
)
from training.core.losses import (
    LABEL_SMOOTHING,
    log_one_minus,
    smoothed_nll,
)
from training.core.run import RunSpec
from training.methods.fine_tune import (
    BatchWindow,
    fine_tune_standard,
    gather_across_ranks,
    greedy_replies,
    joint_logits,
)


class TokenFrequencyWindow(BatchWindow[int]):
    """Token counts over the current and the last ``window_batches`` mini-batches (for UL)."""

    def __init__(self, window_batches: int = 32) -> None:
        super().__init__(window_batches)

    def add_batch(self, tokens: Iterable[int]) -> None:
        self._add(Counter(int(t) for t in tokens))

    def counts(self, vocab_size: int, device: torch.device | str = "cpu") -> Tensor:
        """Counts as a dense (V,) float tensor."""
        out = torch.zeros(vocab_size)
        for token, n in self._total.items():
            out[token] = n
        return out.to(device)


# --- loss math (pure functions) ---------------------------------------------------------------


def frequent_token_penalty(
    model_counts: Tensor, human_counts: Tensor, threshold: float = 1e-3
) -> Tensor:
    """Li et al. (2020a) vocabulary-unlikelihood weights ``beta`` (V,) from token counts (V,).

    ``beta(k) = p_model(k) * log(p_model(k) / p_human(k))`` where the model over-uses ``k``
    (``p_model > p_human > 0``), else 0; weights not above ``threshold`` are dropped (0). This is
    the ``kldiv`` weighting of the authors' released code (ParlAI projects/dialogue_unlikelihood).
    """
    p_model = model_counts.double() / model_counts.sum().clamp_min(1)
    p_human = human_counts.double() / human_counts.sum().clamp_min(1)
    over = (p_model > p_human) & (p_human > 0)
    beta = torch.where(over, p_model * (p_model.log() - p_human.log()), 0.0)
    return torch.where(beta > threshold, beta, 0.0).float()


def token_unlikelihood_loss(
    logits: Tensor, tokens: Tensor, penalty: Tensor, pad_id: int, eps: float = 1e-6
) -> Tensor:
    """``sum_t beta(y_t) * -log(1 - p(y_t | y_<t, x))`` over penalised positions, divided by their
    number (Li et al. 2020a, Welleck et al. 2020 eq. 4; ND eq. 2). logits (B, T, V), tokens (B, T).

    ``1 - p`` is clamped at ``eps`` so a token the model is sure of gives a finite loss.
    """
    weights = penalty.to(logits.device)[tokens] * tokens.ne(pad_id)  # (B, T)
    n = int(weights.gt(0).sum())
    if n == 0:
        return logits.new_zeros((), dtype=torch.float32)
    p = logits.float().softmax(dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return -(log_one_minus(p, eps) * weights).sum() / n


class UnlikelihoodObjective:
    """Li et al. (2020a) vocabulary unlikelihood: ``L = L_mle + alpha * L_ul``.

    Per batch: the model's greedy replies (eval mode, as the authors' code generates) and the gold
    responses feed two token windows (EOS left out: it is no "word", and penalising it only
    lengthens replies, cf. He & Glass's FWA). Once the windows hold the current and the last
    ``window_batches`` batches (the authors' warm-up: plain MLE until the queue is full), tokens
    the model over-uses get ``beta`` (:func:`frequent_token_penalty`), and
    :func:`token_unlikelihood_loss` applies at the positions of the replies (teacher-forced on the
    replies) where those tokens were generated. The windows slide (the released code lets its
    training counts grow without bound). alpha = 1000: the ND paper's pick from {1, 10, 100, 1000}.
    """

    def __init__(
        self,
        pad_id: int,
        eos_id: int,
        bos_id: int,
        vocab_size: int,
        *,
        alpha: float = 1000.0,  # ND appendix B
        window_batches: int = 32,  # the released code's --queue-size
        threshold: float = 1e-3,  # the released code's --threshold on beta
        label_smoothing: float = LABEL_SMOOTHING,
        max_decode_len: int = 32,
        no_repeat_ngram_size: int = 0,
    ) -> None:
        self.pad_id, self.eos_id, self.bos_id = pad_id, eos_id, bos_id
        self.vocab_size = vocab_size
        self.alpha = alpha
        self.threshold = threshold
        self.label_smoothing = label_smoothing
        self.decoding = DecodingConfig(
            strategy="greedy", max_length=max_decode_len, no_repeat_ngram_size=no_repeat_ngram_size
        )
        self.model_tokens = TokenFrequencyWindow(window_batches)
        self.human_tokens = TokenFrequencyWindow(window_batches)

    def decode(self, model: nn.Module, src: Tensor) -> list[list[int]]:
        return greedy_replies(model, src, self.decoding)

    def penalty(self, device: torch.device | str = "cpu") -> Tensor:
        """Current ``beta`` (V,); all zero during the warm-up."""
        if self.model_tokens.num_batches < self.model_tokens.window_batches + 1:
            return torch.zeros(self.vocab_size, device=device)
        return frequent_token_penalty(
            self.model_tokens.counts(self.vocab_size, device),
            self.human_tokens.counts(self.vocab_size, device),
            self.threshold,
        )

    def __call__(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, float]]:
        replies = self.decode(model, batch.src)
        gold = batch.tgt_out[batch.tgt_out.ne(self.pad_id) & batch.tgt_out.ne(self.eos_id)]
        self.model_tokens.add_batch(gather_across_ranks([t for r in replies for t in r]))
        self.human_tokens.add_batch(gather_across_ranks(gold.tolist()))
        beta = self.penalty(batch.src.device)
        rows = [i for i, r in enumerate(replies) if r and bool(beta[r].gt(0).any())]
        if rows:
            gen = [replies[i] for i in rows]
            width = max(len(r) for r in gen)
            gen_in = torch.tensor(
                [[self.bos_id, *r[:-1], *[self.pad_id] * (width - len(r))] for r in gen],
                device=batch.src.device,
            )
            gen_out = torch.tensor(
                [[*r, *[self.pad_id] * (width - len(r))] for r in gen], device=batch.src.device
            )
            gold_logits, gen_logits = joint_logits(
                model, batch, batch.src[rows], gen_in, self.pad_id
            )
            ul = token_unlikelihood_loss(gen_logits, gen_out, beta, self.pad_id)
            n_penalised = int((beta[gen_out] * gen_out.ne(self.pad_id)).gt(0).sum())
        else:
            gold_logits = model(batch.src, batch.tgt_in).logits
            ul, n_penalised = gold_logits.new_zeros((), dtype=torch.float32), 0
        mle = smoothed_nll(gold_logits, batch.tgt_out, self.pad_id, self.label_smoothing)
        return mle + self.alpha * ul, {
            "ul_loss": ul.item(),
            "ul_penalised_tokens": float(n_penalised),
            "ul_penalised_types": float(int(beta.gt(0).sum())),
            "ul_mle_loss": mle.item(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model_tokens.state_dict(), "human": self.human_tokens.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model_tokens.load_state_dict(state["model"])
        self.human_tokens.load_state_dict(state["human"])


def train_ul_generator(
    run: RunSpec,
    *,
    base_bundle: Path,
    preset: Preset,
    train_examples: Sequence[DialogueExample],
    val_examples: Sequence[DialogueExample],
    alpha: float = 1000.0,
    window_batches: int = 32,
    threshold: float = 1e-3,
    optimizer: str = "adam",
    lr: float | None = None,
    max_steps: int | None = None,
) -> Manifest | None:
    """Fine-tune the standard generator with vocabulary UL (Li et al. 2020a); None off rank 0.

    ND appendix B: "we search the mixing hyperparameter alpha in [1,10,100,1000] and 1000 is
    selected [...] Both NT and UL are refined on the well-trained Standard model." Optimiser and
    learning rate as in :func:`train_nt_generator`.
    """
    hyper: dict[str, Any] = {
        "alpha": alpha,
        "window_batches": window_batches,
        "threshold": threshold,
    }
    return fine_tune_standard(
        run,
        "ul",
        lambda base: UnlikelihoodObjective(
            base.tokenizer.pad_id,
            base.tokenizer.eos_id,
            base.tokenizer.bos_id,
            base.model.cfg.vocab_size,
            max_decode_len=preset.decoding.max_length,
            no_repeat_ngram_size=preset.decoding.no_repeat_ngram_size,
            **hyper,
        ),
        hyper,
        base_bundle=base_bundle,
        preset=preset,
        train_examples=train_examples,
        val_examples=val_examples,
        optimizer=optimizer,
        lr=lr,
        max_steps=max_steps,
    )

"""NT, the negative-training baseline of the ND paper (section 3.3, appendix B): He & Glass (2020)
Algorithm 2 applied to generic replies.

Greedy replies to the training inputs; a reply whose frequency over the current and the last 200
mini-batches exceeds ``r_thres`` is a negative example, its log-likelihood is minimised next to the
MLE loss (eq. 4), with the negative gradient of ``<EOS>`` scaled by 0.1 (frequent word avoiding,
section 4.3; training/core/losses.py frequent_word_weights)."""

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
    frequent_word_weights,
    smoothed_nll,
    token_log_probs,
)
from training.core.run import RunSpec
from training.methods.fine_tune import (
    GENERICNESS,
    BatchWindow,
    fine_tune_standard,
    gather_across_ranks,
    greedy_replies,
    joint_logits,
)


class ResponseFrequencyWindow(BatchWindow[tuple[int, ...]]):
    """Reply frequencies over the current and the last ``window_batches`` mini-batches.

    He & Glass (2020), section 3.3: "The frequency statistics are calculated using the current
    and the last 200 mini-batches." Adding batch ``n`` drops batch ``n - window_batches - 1``.
    """

    def __init__(self, window_batches: int = 200) -> None:
        super().__init__(window_batches)

    def add_batch(self, responses: Iterable[Sequence[int]]) -> None:
        self._add(Counter(tuple(r) for r in responses))

    def ratio(self, response: Sequence[int]) -> float:
        """Share of the window's replies equal to ``response`` (0.0 when empty)."""
        return self.count(tuple(response)) / self._size if self._size else 0.0

    def max_ratio(self) -> float:
        """He & Glass's max-ratio over the window: share of the most frequent reply."""
        return max(self._total.values()) / self._size if self._size else 0.0

    def _encode(self, key: tuple[int, ...]) -> Any:
        return list(key)

    def _decode(self, data: Any) -> tuple[int, ...]:
        return tuple(int(t) for t in data)


class NegativeTrainingObjective:
    """He & Glass (2020) Algorithm 2 in mini-batches: ``L = L_neg + lambda_pos * L_mle`` (eq. 4).

    Per batch: greedy replies to the batch's sources join the window; a reply whose ratio in the
    window exceeds ``r_thres`` is a negative example. With ``D`` gold target tokens in the batch,

        L_neg = (1/D) sum_{negatives} sum_t w[y_t] log P(y_t | y_<t, x),  w[EOS] = eos_weight
        L_mle = token-mean (label-smoothed) cross-entropy of the gold responses (ND eq. 1)

    Both sums share the denominator, so each example weighs its negative against its positive
    update as Alg. 2 does (sequence log-likelihoods, lambda_pos = 1), whatever the number of
    negatives. Alg. 2 puts the positive update inside ``if r > r_thres``; here every gold pair gets
    it ("positive training is also needed here for the model to retain its original performance").
    Negatives start once the window holds ``1 / r_thres`` replies: before that a reply seen once
    is already "frequent", so the whole first batch would be penalised.
    """

    def __init__(
        self,
        pad_id: int,
        eos_id: int,
        bos_id: int,
        *,
        r_thres: float = 0.01,  # He & Glass 4.3 / ND appendix B: 1%
        lambda_pos: float = 1.0,  # He & Glass 4.3 / ND appendix B: 1
        window_batches: int = 200,  # He & Glass 3.3: the current and the last 200 mini-batches
        eos_weight: float = 0.1,  # He & Glass 4.3: FWA scales EOS's negative gradient by 0.1
        label_smoothing: float = LABEL_SMOOTHING,
        max_decode_len: int = 32,  # greedy reply length cap, EOS included
        no_repeat_ngram_size: int = 0,  # decode as the bundle will (0 = off)
    ) -> None:
        assert 0 < r_thres < 1, f"r_thres must be in (0, 1), got {r_thres}"
        self.pad_id, self.eos_id, self.bos_id = pad_id, eos_id, bos_id
        self.r_thres = r_thres
        self.lambda_pos = lambda_pos
        self.eos_weight = eos_weight
        self.label_smoothing = label_smoothing
        self.decoding = DecodingConfig(
            strategy="greedy", max_length=max_decode_len, no_repeat_ngram_size=no_repeat_ngram_size
        )
        self.window = ResponseFrequencyWindow(window_batches)

    def decode(self, model: nn.Module, src: Tensor) -> list[list[int]]:
        return greedy_replies(model, src, self.decoding)

    def _negative_io(self, replies: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
        """Decoder input/target rows; a reply cut at ``max_length`` has no EOS to penalise."""
        ins, outs = [], []
        for r in replies:
            ended = len(r) < self.decoding.max_length
            ins.append([self.bos_id, *r] if ended else [self.bos_id, *r[:-1]])
            outs.append([*r, self.eos_id] if ended else r)
        width = max(len(x) for x in ins)
        pad = [[*x, *[self.pad_id] * (width - len(x))] for x in (*ins, *outs)]
        rows = torch.tensor(pad, dtype=torch.long, device=device)
        return rows[: len(ins)], rows[len(ins) :]

    def __call__(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, float]]:
        replies = self.decode(model, batch.src)
        everyone: list[list[int]] = gather_across_ranks(replies)
        self.window.add_batch(everyone)
        active = len(self.window) >= 1.0 / self.r_thres
        neg = [i for i, r in enumerate(replies) if active and self.window.ratio(r) > self.r_thres]
        if neg:
            neg_in, neg_out = self._negative_io([replies[i] for i in neg], batch.src.device)
            gold_logits, neg_logits = joint_logits(
                model, batch, batch.src[neg], neg_in, self.pad_id
            )
        else:
            gold_logits = model(batch.src, batch.tgt_in).logits
        mle = smoothed_nll(gold_logits, batch.tgt_out, self.pad_id, self.label_smoothing)
        loss = self.lambda_pos * mle
        neg_loss = 0.0
        if neg:
            # He & Glass 4.3, frequent word avoiding: EOS's negative gradient scaled by eos_weight
            weights = frequent_word_weights(neg_out, self.pad_id, {self.eos_id: self.eos_weight})
            log_p, _ = token_log_probs(neg_logits, neg_out, self.pad_id)  # (B, T)
            n_gold = batch.tgt_out.ne(self.pad_id).sum().clamp_min(1)
            l_neg = (log_p * weights).sum(dim=1).sum() / n_gold
            loss = l_neg + loss
            neg_loss = l_neg.item()
        return loss, {
            "nt_neg_examples": float(len(neg)),
            "nt_neg_loss": neg_loss,
            "nt_max_ratio": self.window.max_ratio(),
            "nt_mle_loss": mle.item(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.load_state_dict(state["window"])


def train_nt_generator(
    run: RunSpec,
    *,
    base_bundle: Path,
    preset: Preset,
    train_examples: Sequence[DialogueExample],
    val_examples: Sequence[DialogueExample],
    r_thres: float = 0.01,
    lambda_pos: float = 1.0,
    eos_weight: float = 0.1,
    window_batches: int = 200,
    optimizer: str = "adam",
    lr: float | None = None,
    max_steps: int | None = None,
) -> Manifest | None:
    """Fine-tune the standard generator with NT (He & Glass 2020, Alg. 2); None off rank 0.

    He & Glass fine-tune with plain SGD at "a fixed learning rate of 0.001" (section 4.3), which
    is, on our reading of section 4.1 (lr 1, then "10 iterations with LR halving": 2^-10 ~ 0.001),
    about where their baseline's schedule ended. The
    standard model here is trained with Adam and ND eq. 17, and the ND paper runs its baselines
    "with the same architecture and hyper-parameters as ours", so the default is Adam at the
    constant rate eq. 17 had reached at the base model's last step (``lr=None``); pass
    ``optimizer="sgd", lr=1e-3`` for He & Glass's literal setting. The batch size is the preset's.
    """
    if preset.nt_select != "last" and preset.nt_select not in GENERICNESS:
        raise ValueError(
            f"nt_select must be 'last' or one of {sorted(GENERICNESS)}, got {preset.nt_select!r}"
        )
    hyper: dict[str, Any] = {
        "r_thres": r_thres,
        "lambda_pos": lambda_pos,
        "eos_weight": eos_weight,
        "window_batches": window_batches,
    }
    return fine_tune_standard(
        run,
        "nt",
        lambda base: NegativeTrainingObjective(
            base.tokenizer.pad_id,
            base.tokenizer.eos_id,
            base.tokenizer.bos_id,
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
        select=preset.nt_select,
    )

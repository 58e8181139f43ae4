"""The losses of negative distillation (Li et al., NAACL 2022): L_pred (eqs. 6-7, soft unlikelihood),
L_hid and L_att (eqs. 8-9, MRSE), the progressive α of eq. 15, and the objective of eq. 13 the
Trainer runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.seq2seq import Seq2SeqOutput, Seq2SeqTransformer
from training.config import NDPreset
from training.core.generator import (
    Seq2SeqBatch,
)
from training.core.losses import LABEL_SMOOTHING, expected_unlikelihood, smoothed_nll

# --- the losses ---------------------------------------------------------------------------------


def soft_unlikelihood(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """ND eq. 6-7: mean over valid positions of -Σ_k p_N(k) log(1 - p_S(k)), softmaxes at ``t``.

    logits: (B, T, V); mask: (B, T) True at target positions that count.
    """
    p_teacher = (teacher_logits.float() / temperature).softmax(dim=-1)
    return expected_unlikelihood(student_logits, p_teacher, mask, temperature)


def mrse(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """ND eq. 8, mean reverse square error: mean over elements of exp(-(a - b)^2).

    1 when a == b, toward 0 as they move apart; minimising it *increases* the distance.
    ``mask`` (broadcastable to a) selects the elements that count.
    """
    rse = torch.exp(-(a.float() - b.float()).pow(2))
    if mask is None:
        return rse.mean()
    mask = mask.expand_as(rse)
    return (rse * mask).sum() / mask.sum().clamp(min=1)


def progressive_alpha(
    step: int, gamma: float, lam: float = NDPreset.lam, beta: float | None = None
) -> float:
    """ND eqs. 14-16: α = λ e^{-z} / (e^{-z} + 1)^2 with z = β (s - γ); β defaults to 6/γ.

    With λ = 4 the peak, at s = γ, is exactly 1; α ≈ 0.01 at s = 0 and s = 2γ.
    """
    beta = 6.0 / gamma if beta is None else beta
    z = beta * (step - gamma)
    # e^{-z}/(e^{-z}+1)^2 == sigmoid(z) * (1 - sigmoid(z)); this form cannot overflow.
    sig = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return lam * sig * (1.0 - sig)


def mean_progressive_alpha(total_steps: int, gamma: float, lam: float = NDPreset.lam) -> float:
    """The schedule's mean over a run (the 'fixed α' ablation uses it)."""
    return float(np.mean([progressive_alpha(s, gamma, lam) for s in range(1, total_steps + 1)]))


@dataclass(frozen=True)
class NDLossConfig:
    """Which parts of eq. 13's distillation term are on (the paper's ablations switch them off)."""

    use_pred: bool = True
    use_hid: bool = True
    use_att: bool = True
    temperature: float = 1.0  # t of eq. 7 (paper: 1)
    targets: str = "soft"  # soft (eq. 6) | hard (one-hot teacher argmax) | random (a D_N reply)
    # L_hid (eq. 9) between layer-normalised hidden states (no affine), the analogue of the
    # paper's post-LN layers in our pre-LN decoder: there a layer's output is bounded, here the
    # residual stream can move away from the teacher's by scale alone, which saturated
    # exp(-(a - b)^2) within ~150 updates (reports/negative_distillation.md, point 3)
    normalize_hidden: bool = False


class NegativeDistillationLoss(nn.Module):
    """L_pred + Σ_l L_hid^l + Σ_l L_att^l of ND eq. 13, from teacher and student outputs."""

    def __init__(self, cfg: NDLossConfig, pad_id: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.pad_id = pad_id

    def forward(
        self, student: Seq2SeqOutput, teacher: Seq2SeqOutput, tgt_in: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        valid = tgt_in.ne(self.pad_id)  # (B, T) real target positions (BOS counts, pads do not)
        parts: dict[str, Tensor] = {}
        zero = student.logits.new_zeros(())
        if self.cfg.use_pred:
            if self.cfg.targets == "hard":
                hard = F.one_hot(teacher.logits.argmax(-1), teacher.logits.size(-1)).float()
                # one-hot "logits" with t=1 softmax would blur them; use the one-hot as p_N directly
                parts["pred"] = expected_unlikelihood(
                    student.logits, hard, valid, self.cfg.temperature
                )
            else:
                parts["pred"] = soft_unlikelihood(
                    student.logits, teacher.logits, valid, self.cfg.temperature
                )
        if self.cfg.use_hid:
            m = valid[..., None]  # (B, T, 1)
            parts["hid"] = sum(
                (
                    mrse(self._hidden(h_t), self._hidden(h_s), m)
                    for h_t, h_s in zip(teacher.hidden_states, student.hidden_states, strict=True)
                ),
                zero,
            )
        if self.cfg.use_att:
            t = tgt_in.size(1)
            causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).tril()
            m = valid[:, None, :, None] & valid[:, None, None, :] & causal  # (B, 1, T, T)
            parts["att"] = sum(
                (
                    mrse(a_t, a_s, m)
                    for a_t, a_s in zip(
                        teacher.self_attn_logits, student.self_attn_logits, strict=True
                    )
                ),
                zero,
            )
        total = sum(parts.values(), zero)
        return total, parts

    def _hidden(self, h: Tensor) -> Tensor:
        """A decoder layer's output as L_hid compares it (layer-normalised where configured)."""
        return F.layer_norm(h.float(), h.shape[-1:]) if self.cfg.normalize_hidden else h


class NDObjective:
    """Eq. 13 for the trainer: (1-α) L_mle + α (L_pred + Σ L_hid + Σ L_att), α from eqs. 14-16.

    The teacher is frozen (eval mode, no gradient). ``fixed_alpha`` replaces the schedule (the
    ablation). ``random_targets`` (ablation): per batch, D_N replies whose teacher-forced student
    distribution is pushed away from the reply's own tokens, instead of the teacher's soft labels.
    """

    def __init__(
        self,
        teacher: Seq2SeqTransformer,
        *,
        pad_id: int,
        gamma: float,
        lam: float = NDPreset.lam,
        label_smoothing: float = LABEL_SMOOTHING,
        loss: NDLossConfig | None = None,
        fixed_alpha: float | None = None,
        random_targets: Sequence[Sequence[int]] | None = None,
        bos_id: int = 1,
        eos_id: int = 2,
        seed: int = 0,
    ) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.gamma, self.lam = gamma, lam
        self.label_smoothing = label_smoothing
        self.loss_cfg = loss or NDLossConfig()
        self.nd_loss = NegativeDistillationLoss(self.loss_cfg, pad_id)
        self.fixed_alpha = fixed_alpha
        self.random_targets = [list(r) for r in random_targets] if random_targets else None
        self._rng = np.random.default_rng(seed)
        self.step = 0

    def alpha(self, step: int) -> float:
        if self.fixed_alpha is not None:
            return self.fixed_alpha
        return progressive_alpha(step, self.gamma, self.lam)

    def __call__(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, float]]:
        self.step += 1
        alpha = self.alpha(self.step)
        student = model(batch.src, batch.tgt_in, return_internals=True)
        mle = smoothed_nll(student.logits, batch.tgt_out, self.pad_id, self.label_smoothing)
        if self.loss_cfg.targets == "random":
            nd, parts = self._random_target_loss(model, batch)
        else:
            with torch.no_grad():
                teacher = self.teacher(batch.src, batch.tgt_in, return_internals=True)
            nd, parts = self.nd_loss(student, teacher, batch.tgt_in)
        loss = (1 - alpha) * mle + alpha * nd
        logs = {
            "alpha": alpha,
            "mle": mle.item(),
            **{f"nd_{k}": v.item() for k, v in parts.items()},
        }
        return loss, logs

    def _random_target_loss(
        self, model: nn.Module, batch: Seq2SeqBatch
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Unlikelihood of random D_N replies under the student (the 'random targets' ablation)."""
        assert self.random_targets, "random targets need the D_N replies"
        picks = self._rng.integers(0, len(self.random_targets), size=batch.src.size(0))
        replies = [self.random_targets[i] for i in picks.tolist()]
        width = max(len(r) for r in replies) + 1
        tgt_in = batch.src.new_full((len(replies), width), self.pad_id)
        tgt_out = batch.src.new_full((len(replies), width), self.pad_id)
        for i, r in enumerate(replies):
            tgt_in[i, : len(r) + 1] = torch.tensor([self.bos_id, *r])
            tgt_out[i, : len(r) + 1] = torch.tensor([*r, self.eos_id])
        logits = model(batch.src, tgt_in).logits
        one_hot = F.one_hot(tgt_out.clamp(min=0), logits.size(-1)).float()
        pred = expected_unlikelihood(logits, one_hot, tgt_out.ne(self.pad_id), 1.0)
        return pred, {"pred": pred}

    # The trainer checkpoints objectives that expose their state (the schedule position).
    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])

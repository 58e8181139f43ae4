"""FlatGD (Khalatbari et al., "Flatness-Aware Gradient Descent for Safe Conversational AI"):
safety fine-tuning of a generator against a frozen clean expert p^c and a frozen toxic expert p^τ.

* :func:`js_divergence` is eq. 7 (with the KL of eq. 8), per position, natural log.
* :func:`safety_loss` is eq. 4: L_S = -β JS(p_θ, p^τ) + γ JS(p_θ, p^c) over the teacher-forced
  next-token distributions, averaged over the non-pad target positions.
* :func:`squared_gradient_norm` is ||∇_θ L_S||² of eq. 1, kept differentiable (double backward).
* :class:`FlatGDObjective` is eq. 2 for the trainer: J = α L_LM + w_S L_S + λ ||∇_θ L_S||², with
  L_LM the per-token NLL of eq. 3. λ = 0 is the Safety_loss baseline (Khalatbari et al. 2023).
* :class:`SafetyTuningData` decides what each term runs on and yields trainer batches.

Where the paper is silent or ambiguous (the report repeats these):

1. β appears twice: as eq. 2's weight of L_S and inside eq. 4 as the weight of the toxic JS.
   Table 5 lists α=1, β=2, γ=3 together. We read β=2, γ=3 as eq. 4's weights (as in the
   Safety_loss paper, where eq. 4 is the whole loss) and give eq. 2's L_S its own weight
   ``safety_weight`` (w_S), default 1; the literal reading, β applied twice (toxic weight β²=4,
   clean weight βγ=6), is ``safety_weight=2``.
2. λ: Table 5 gives none. Every weight is a parameter; the jobs module documents the value used.
3. Normalisation: eq. 3 sums over tokens and eq. 4 leaves the reduction over positions open. We
   average both over target tokens (as every generator objective here) so that α, β, γ keep the
   same meaning for any batch or response length. L_LM keeps the base's label smoothing (training/core/losses.py).
4. Data: L_S runs on every DiaSafety train pair, Safe and Unsafe, with the dataset response as
   the teacher-forcing prefix (the experts and the model see the same prefixes). L_LM runs on
   the Safe responses of the same batch plus a block of DailyDialog train pairs: the model never
   imitates an Unsafe response, and the DailyDialog pairs hold on to the base's fluency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

from models.seq2seq import Seq2SeqTransformer
from training.core.generator import PairSet, Seq2SeqBatch, bucketed_batches
from training.core.losses import LABEL_SMOOTHING

LN2 = math.log(2.0)

# --- the math -----------------------------------------------------------------------------------


def _log_probs(logits: Tensor) -> Tensor:
    """log-softmax over the vocabulary; half precision is upcast, float64 stays float64 (tests)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits.log_softmax(dim=-1)


def js_divergence(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """FlatGD eq. 7: JS(p ‖ q) = ½ KL(p ‖ m) + ½ KL(q ‖ m), m = ½ (p + q), KL as in eq. 8.

    p and q are the softmaxes of the logits over the last dimension; returns one value per row
    (shape ``logits.shape[:-1]``). Natural log, so 0 <= JS <= ln 2. Appendix F notes that base-2
    logs put JS in [0, 1]: that is JS / ln 2, a rescaling of β and γ, so we keep nats.
    Computed in log space (log m = logaddexp(log p, log q) - ln 2): finite where a probability
    underflows, and twice differentiable, as the gradient-norm term of eq. 1 needs.
    """
    log_p, log_q = _log_probs(p_logits), _log_probs(q_logits)
    log_m = torch.logaddexp(log_p, log_q) - LN2
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(dim=-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(dim=-1)
    return 0.5 * (kl_pm + kl_qm)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` (B, T) over the positions where ``mask`` (B, T) is True."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


@dataclass
class SafetyLossTerms:
    """L_S of eq. 4 and its two divergences (each a mean over target positions)."""

    loss: Tensor
    js_toxic: Tensor
    js_clean: Tensor


def safety_loss(
    logits: Tensor,
    toxic_logits: Tensor,
    clean_logits: Tensor,
    mask: Tensor,
    *,
    beta: float,
    gamma: float,
) -> SafetyLossTerms:
    """FlatGD eq. 4: L_S = -β JS(p_θ, p^τ) + γ JS(p_θ, p^c).

    All logits are (B, T, V) next-token scores under the same teacher-forcing prefixes; ``mask``
    (B, T) marks the target positions that count. Minimising L_S moves p_θ away from the toxic
    expert and toward the clean one.
    """
    js_toxic = masked_mean(js_divergence(logits, toxic_logits), mask)
    js_clean = masked_mean(js_divergence(logits, clean_logits), mask)
    return SafetyLossTerms(-beta * js_toxic + gamma * js_clean, js_toxic, js_clean)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def squared_gradient_norm(
    loss: Tensor, parameters: Sequence[nn.Parameter], *, create_graph: bool = True
) -> Tensor:
    """||∇_θ loss||² (FlatGD eq. 1 without λ), summed over ``parameters``.

    With ``create_graph`` the result is itself differentiable in θ: backpropagating it is the
    double backward (a Hessian-vector product, H ∇L) that pulls the model toward flatter regions.
    """
    grads = torch.autograd.grad(
        loss, list(parameters), create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    used = [g for g in grads if g is not None]
    assert used, "the loss does not depend on any of the parameters"
    return sum((g.pow(2).sum() for g in used), loss.new_zeros(()))


# --- the trainer's view ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FlatGDWeights:
    """Weights of eq. 2 and eq. 4 (Table 5 where it gives them; see the module doc)."""

    alpha: float = 1.0  # α: weight of L_LM in eq. 2 (Table 5)
    beta: float = 2.0  # β: weight of the toxic JS in eq. 4 (Table 5)
    gamma: float = 3.0  # γ: weight of the clean JS in eq. 4 (Table 5)
    # λ of eqs. 1-2; 0 = the Safety_loss baseline. Table 5 gives none. Measured at the small base
    # with its experts (reports/safety_flatgd.md): |∇L_S| 0.16-0.23 and |∇ ||∇L_S||²| 0.07-0.61
    # per batch, so λ = 1 gives the flatness term a pull of the same order as L_S's.
    lam: float = 1.0
    safety_weight: float = 1.0  # eq. 2's weight of L_S; 2 = β applied twice (module doc, 1.)
    label_smoothing: float = LABEL_SMOOTHING  # of L_LM, as the base's MLE

    @property
    def method(self) -> str:
        """The manifest's ``training.method``: FlatGD, or the Safety_loss baseline at λ = 0."""
        return "flatgd" if self.lam > 0 else "safety-loss"


@dataclass
class SafetyBatch:
    """One update's data: DiaSafety pairs for L_S (Safe rows also for L_LM) + DailyDialog pairs."""

    safety: Seq2SeqBatch  # all labels: the teacher-forcing prefixes of L_S
    safe_rows: Tensor  # (B_s,) bool: rows whose response is Safe
    lm: Seq2SeqBatch | None  # DailyDialog pairs for L_LM (None: Safe rows only)

    def to(self, device: torch.device) -> SafetyBatch:
        lm = self.lm.to(device) if self.lm is not None else None
        return SafetyBatch(self.safety.to(device), self.safe_rows.to(device), lm)


class FlatGDObjective:
    """FlatGD eq. 2 for the trainer: J = α L_LM + w_S L_S + λ ||∇_θ L_S||².

    The experts are frozen (eval mode, no gradient) copies of the base, so they share its
    tokenizer. ``λ = 0`` skips the double backward: the Safety_loss baseline. Stateless: the
    trainer's checkpoint (weights, optimizer, RNG, data position) is all a resume needs.
    """

    def __init__(
        self,
        clean: Seq2SeqTransformer,
        toxic: Seq2SeqTransformer,
        weights: FlatGDWeights,
        *,
        pad_id: int,
    ) -> None:
        self.clean, self.toxic = clean.eval(), toxic.eval()
        for p in (*clean.parameters(), *toxic.parameters()):
            p.requires_grad_(False)
        self.weights = weights
        self.pad_id = pad_id

    def safety_terms(
        self, model: nn.Module, batch: Seq2SeqBatch, *, twice_differentiable: bool = False
    ) -> tuple[Tensor, SafetyLossTerms]:
        """``model``'s logits on ``batch``'s teacher-forcing prefixes and its L_S (eq. 4).

        ``twice_differentiable`` runs attention on the plain-math kernel: the fused CPU kernels
        have no double backward, which the gradient-norm term of eq. 1 needs.
        """
        with sdpa_kernel([SDPBackend.MATH]) if twice_differentiable else nullcontext():
            logits = model(batch.src, batch.tgt_in).logits
        with torch.no_grad():
            toxic = self.toxic(batch.src, batch.tgt_in).logits
            clean = self.clean(batch.src, batch.tgt_in).logits
        w = self.weights
        mask = batch.tgt_out.ne(self.pad_id)
        return logits, safety_loss(logits, toxic, clean, mask, beta=w.beta, gamma=w.gamma)

    def lm_loss(self, model: nn.Module, batch: SafetyBatch, safety_logits: Tensor) -> Tensor:
        """Eq. 3 per target token over the Safe DiaSafety responses and the DailyDialog pairs."""
        safe_targets = batch.safety.tgt_out.masked_fill(~batch.safe_rows[:, None], self.pad_id)
        parts = [(safety_logits, safe_targets)]
        if batch.lm is not None:
            parts.append((model(batch.lm.src, batch.lm.tgt_in).logits, batch.lm.tgt_out))
        total = safety_logits.new_zeros((), dtype=torch.float32)
        tokens = 0
        for logits, targets in parts:
            total = total + F.cross_entropy(
                logits.transpose(1, 2).float(),
                targets,
                ignore_index=self.pad_id,
                label_smoothing=self.weights.label_smoothing,
                reduction="sum",
            )
            tokens += int(targets.ne(self.pad_id).sum())
        return total / max(tokens, 1)

    def terms(self, model: nn.Module, batch: SafetyBatch) -> dict[str, Tensor]:
        """The three terms of eq. 2 (``grad_sq`` only when λ > 0) and L_S's two divergences."""
        lam = self.weights.lam
        logits, ls = self.safety_terms(model, batch.safety, twice_differentiable=lam > 0)
        out = {
            "lm": self.lm_loss(model, batch, logits),
            "safety": ls.loss,
            "js_toxic": ls.js_toxic,
            "js_clean": ls.js_clean,
        }
        if lam > 0:
            if isinstance(model, DistributedDataParallel):
                raise ValueError("the gradient-norm term (λ > 0) needs a single process, not DDP")
            out["grad_sq"] = squared_gradient_norm(ls.loss, trainable_parameters(model))
        return out

    def __call__(self, model: nn.Module, batch: SafetyBatch) -> tuple[Tensor, dict[str, float]]:
        w = self.weights
        t = self.terms(model, batch)
        loss = w.alpha * t["lm"] + w.safety_weight * t["safety"]
        if "grad_sq" in t:
            loss = loss + w.lam * t["grad_sq"]
        return loss, {name: float(v.detach()) for name, v in t.items()}


class SafetyTuningData:
    """Trainer batches for FlatGD: one index space, DiaSafety pairs first, then DailyDialog.

    An epoch is one pass over the DiaSafety pairs in length-bucketed batches of ``batch_size``;
    each batch also takes the next ``lm_batch_size`` DailyDialog pairs of a seeded permutation
    (fresh per epoch). Both are pure functions of (seed, epoch), so a resumed run replays them.
    """

    def __init__(
        self,
        safety: PairSet,
        unsafe: Sequence[bool],
        lm: PairSet | None,
        *,
        batch_size: int,
        lm_batch_size: int,
        seed: int,
    ) -> None:
        assert len(unsafe) == len(safety), f"{len(unsafe)} labels for {len(safety)} pairs"
        assert lm is not None or lm_batch_size == 0, "lm_batch_size > 0 needs DailyDialog pairs"
        self.safety, self.lm = safety, lm
        self.unsafe = torch.tensor(list(unsafe), dtype=torch.bool)
        self.batch_size, self.lm_batch_size, self.seed = batch_size, lm_batch_size, seed
        self._lengths = safety.lengths()

    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.safety) / self.batch_size)

    def make_epoch(self, epoch: int) -> list[list[int]]:
        batches = bucketed_batches(self._lengths, self.batch_size, seed=self.seed, epoch=epoch)
        if not self.lm_batch_size or self.lm is None:
            return batches
        n, offset = len(self.lm), len(self.safety)
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(n)
        out = []
        for i, batch in enumerate(batches):
            picks = order[(np.arange(self.lm_batch_size) + i * self.lm_batch_size) % n]
            out.append(batch + (picks + offset).tolist())
        return out

    def collate(self, indices: Sequence[int], device: torch.device | str = "cpu") -> SafetyBatch:
        offset = len(self.safety)
        safety_idx = [i for i in indices if i < offset]
        lm_idx = [i - offset for i in indices if i >= offset]
        assert safety_idx, "a FlatGD batch needs DiaSafety pairs"
        lm = self.lm.collate(lm_idx) if lm_idx and self.lm is not None else None
        batch = SafetyBatch(self.safety.collate(safety_idx), ~self.unsafe[safety_idx], lm)
        return batch.to(torch.device(device))

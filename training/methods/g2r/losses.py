"""Retrieval losses and Hits@k/K for the bi-encoder (G2R, Kim et al., Findings of EMNLP 2021).

Eq. 2 (cross-entropy over the positives against in-batch and shared random negatives) and
eqs. 4-5 (KD from the teacher's scores, teacher probability 0 for negatives) as pure functions
over tensors with a loss class each; Hits@1/K and Hits@5/K (K = 100) for validation and early
stopping.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from models.biencoder import BiEncoder
from models.generator import InputConfig
from models.retriever import embed_responses
from models.tokenizer import DialogueTokenizer
from training.core.data import DialogueExample, sample_examples


def contrastive_cross_entropy(scores: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """Eq. 2, averaged over the positive pairs: -log e^{s_p} / (e^{s_p} + sum_{n in R^-} e^{s_n}).

    ``scores`` (B, M) are R(c_b, r_j); ``positive``/``negative`` (B, M) are disjoint boolean masks.
    Each positive competes with the row's negatives only, never with the row's other positives.
    """
    neg = scores.masked_fill(~negative, float("-inf")).logsumexp(dim=1, keepdim=True)  # (B, 1)
    log_p = scores - torch.logaddexp(scores, neg)  # (B, M)
    return -log_p[positive].mean()


def distillation_cross_entropy(
    scores: Tensor, teacher: Tensor, positive: Tensor, negative: Tensor, temperature: float = 1.0
) -> Tensor:
    """Eq. 4, averaged over the rows (contexts) that have teacher scores for all their positives.

    P_G = softmax(G/T) over the row's positives R_i (random and in-batch negatives get teacher
    probability 0), P_R = softmax(R/T) over R_i + R^-; loss = -sum_{r in R_i} P_G log P_R.
    ``teacher`` (B, M) holds G(c_b, r_j) on positive entries (NaN elsewhere or when unknown).
    """
    rows = positive.any(dim=1) & ~(teacher.isnan() & positive).any(dim=1)
    if not bool(rows.any()):
        return scores.new_zeros(())
    s, t, pos, neg = scores[rows], teacher[rows], positive[rows], negative[rows]
    log_p_student = (s / temperature).masked_fill(~(pos | neg), float("-inf")).log_softmax(dim=1)
    p_teacher = (t.nan_to_num(0.0) / temperature).masked_fill(~pos, float("-inf")).softmax(dim=1)
    return -(p_teacher * log_p_student.masked_fill(~pos, 0.0)).sum(dim=1).mean()


class RetrievalCrossEntropyLoss(nn.Module):
    """Bi-encoder cross-entropy over the gold response and the negatives (G2R eq. 2)."""

    def forward(self, scores: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return contrastive_cross_entropy(scores, positive, negative)


def symmetric_contrastive_cross_entropy(
    scores: Tensor, positive: Tensor, negative: Tensor
) -> Tensor:
    """Eq. 2 in both directions, averaged: each context picks its positive among the responses
    (eq. 2 as written) and each positive response picks its context among the batch's contexts
    (eq. 2 on the transposed scores). The second direction is not in G2R; it is CLIP's
    symmetric loss (Radford et al. 2021), free here since both use one (B, M) score matrix.
    Random-negative columns are no one's positive, so they only ever act as negatives."""
    forward = contrastive_cross_entropy(scores, positive, negative)
    backward = contrastive_cross_entropy(scores.T, positive.T, negative.T)
    return (forward + backward) / 2


class G2RDistillationLoss(nn.Module):
    """Model-level G2R: alpha * L_CE (eq. 2) + (1 - alpha) * L_KD (eq. 4), i.e. eq. 5.

    With ``alpha = 1`` this is the data-level (and plain bi-encoder) objective and L_KD is skipped.
    ``symmetric``: L_CE is :func:`symmetric_contrastive_cross_entropy` (both directions).
    """

    def __init__(
        self, alpha: float = 0.9, temperature: float = 1.0, symmetric: bool = False
    ) -> None:
        super().__init__()
        assert 0.0 <= alpha <= 1.0 and temperature > 0, "need 0 <= alpha <= 1 and T > 0"
        self.alpha, self.temperature, self.symmetric = alpha, temperature, symmetric

    def forward(
        self, scores: Tensor, positive: Tensor, negative: Tensor, teacher: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        ce_loss = (
            symmetric_contrastive_cross_entropy if self.symmetric else contrastive_cross_entropy
        )
        ce = ce_loss(scores, positive, negative)
        if self.alpha == 1.0:
            return ce, {"ce": ce.item()}
        kd = distillation_cross_entropy(scores, teacher, positive, negative, self.temperature)
        logs = {"ce": ce.item()}
        if (positive & ~teacher.isnan()).any():  # else no row had teacher scores: kd is 0
            logs["kd"] = kd.item()
        return self.alpha * ce + (1 - self.alpha) * kd, logs


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


# --- Hits@k/K ------------------------------------------------------------------------------------


def hits_at_k(scores: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Hits@k/K for candidate scores (N, K) whose column 0 is the gold response.

    The gold's rank is the number of distractors scoring at least as high (ties count against it).
    """
    rank = (scores[:, 1:] >= scores[:, :1]).sum(dim=1)  # (N,)
    return {f"hits@{k}": (rank < k).float().mean().item() for k in ks}


def hits_candidates(golds: Sequence[str], pool: Sequence[str], k: int, seed: int) -> np.ndarray:
    """(N, k) indices into ``pool``: the gold first, then k - 1 distinct random other responses."""
    position = {text: i for i, text in enumerate(pool)}
    k = min(k, len(pool))
    rng = np.random.default_rng(seed)
    out = np.empty((len(golds), k), dtype=np.int64)
    for row, gold in enumerate(golds):
        g = position[gold]
        others = rng.choice(len(pool) - 1, k - 1, replace=False)
        out[row, 0] = g
        out[row, 1:] = others + (others >= g)  # skip the gold's own index
    return out


class HitsEvaluator:
    """Validation Hits@1/K and Hits@5/K (K = 100: gold + 99 random responses of the split).

    Returns ``val_loss = -Hits@1/K`` so the trainer's early stopping maximises Hits@1/K.
    """

    def __init__(
        self,
        examples: Sequence[DialogueExample],
        tokenizer: DialogueTokenizer,
        inputs: InputConfig,
        *,
        k: int = 100,
        max_examples: int = 0,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        pool = list(dict.fromkeys(e.response for e in examples))
        # drawn across dialogues, the same pairs whatever the seed (which draws the negatives)
        chosen = sample_examples(examples, max_examples)
        cand = hits_candidates([e.response for e in chosen], pool, k, seed)
        used = np.unique(cand)
        self.candidates = torch.from_numpy(np.searchsorted(used, cand))  # into self.responses
        self.responses = [pool[i] for i in used.tolist()]
        contexts = [list(e.context)[-inputs.max_context_turns :] for e in chosen]
        self.context_ids = tokenizer.encode_contexts(contexts, inputs.max_source_len)
        self.tokenizer, self.inputs, self.batch_size = tokenizer, inputs, batch_size
        self.k = cand.shape[1]

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        assert isinstance(model, BiEncoder)
        device = next(model.parameters()).device
        resp = torch.from_numpy(
            np.concatenate(
                list(
                    embed_responses(
                        model,
                        self.tokenizer,
                        self.responses,
                        self.inputs,
                        batch_size=self.batch_size,
                    )
                )
            )
        )
        ctx = torch.cat(
            [
                model.encode_contexts(
                    self.tokenizer.pad(self.context_ids[r.start : r.stop], device)
                )
                .float()
                .cpu()
                for r in _chunks(len(self.context_ids), self.batch_size)
            ]
        )
        scores = (ctx[:, None, :] * resp[self.candidates]).sum(dim=-1)  # (N, K)
        hits = hits_at_k(scores)
        return {"val_loss": -hits["hits@1"], **hits, "hits_k": float(self.k)}

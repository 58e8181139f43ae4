"""The token-level maths every generator objective shares, each written once as a pure function
over tensors (docs/papers.md gives the equations).

* :func:`smoothed_nll`: the MLE term, ND eq. 1 with label smoothing :data:`LABEL_SMOOTHING`;
* :func:`token_log_probs`: log p(y_t | y_<t, x) per target token, He & Glass eq. 1's terms;
* :func:`log_one_minus` and :func:`expected_unlikelihood`: the -log(1 - p) of unlikelihood
  training (Welleck et al. 2020 eq. 4; ND eqs. 2 and 6-7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Label smoothing of every generator's MLE term: the standard model's (ND appendix A, after
# Szegedy et al. 2016), kept by every fine-tune of it (ND, NT, UL, FlatGD's L_LM, Alg. 1).
LABEL_SMOOTHING = 0.1
# 1 - p is kept at least this far from 0, so a token the model is sure of gives a finite loss.
UNLIKELIHOOD_EPS = 1e-6


def smoothed_nll(
    logits: Tensor, targets: Tensor, pad_id: int, label_smoothing: float = LABEL_SMOOTHING
) -> Tensor:
    """ND eq. 1 with label smoothing ε: token-mean over non-pad targets of
    ``-(1 - ε) log p(y_t) - ε/V Σ_k log p(k)``, for (B, T, V) logits and (B, T) targets.

    The MLE term of every generator objective (standard, ND eq. 13, NT eq. 4, UL)."""
    return F.cross_entropy(
        logits.transpose(1, 2).float(),
        targets,
        ignore_index=pad_id,
        label_smoothing=label_smoothing,
    )


def token_log_probs(logits: Tensor, targets: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """``log p(y_t | y_<t, x)`` per target token (B, T), 0 at padding, and the mask of real
    (non-pad) targets (B, T), for (B, T, V) logits. Summed over t it is He & Glass (2020) eq. 1,
    the log-likelihood of a response."""
    logp = logits.float().log_softmax(dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    real = targets.ne(pad_id)
    return logp.masked_fill(~real, 0.0), real


def log_one_minus(p: Tensor, eps: float = UNLIKELIHOOD_EPS) -> Tensor:
    """``log(1 - p)``, computed as log1p(-p) with p clamped at 1 - eps: the unlikelihood term of
    Welleck et al. (2020) eq. 4, finite where the model gives a token probability 1."""
    return torch.log1p(-p.clamp(max=1.0 - eps))


def expected_unlikelihood(
    student_logits: Tensor, p_target: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """``-Σ_k q(k) log(1 - p_S(k))`` per position, mean over the valid positions of ``mask``
    (B, T): ND eq. 6 with q = p_N, the negative teacher's softmax at temperature t (eq. 7), or q
    one-hot for hard targets. ``p_S`` is the student's softmax of ``student_logits`` (B, T, V) at t.
    """
    p_student = (student_logits.float() / temperature).softmax(dim=-1)
    per_position = -(p_target * log_one_minus(p_student)).sum(dim=-1)  # (B, T)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


def frequent_word_weights(targets: Tensor, pad_id: int, spared: dict[int, float]) -> Tensor:
    """Per-target weights (B, T) of a negative update: 0 at padding, ``spared[y_t]`` for the
    listed tokens, else 1. He & Glass (2020) section 4.3, frequent word avoiding: the negative
    gradient of frequent words is scaled down (NT: ``{EOS: 0.1}``) or dropped (Alg. 1: ``{EOS, "you",
    "i", ...: 0}``), so negative training does not unlearn them."""
    weights = targets.ne(pad_id).float()
    for token, weight in spared.items():
        weights = weights.masked_fill(targets.eq(token) & targets.ne(pad_id), weight)
    return weights

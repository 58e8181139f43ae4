"""Binary-classification metrics as pure functions: precision, recall, F1, ROC AUC, and the
threshold choices (F1-best, capped at a benign flag rate) of the safety classifier."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from models.safety import (
    SafetyClassifier,
)
from training.core.safety_data import SafetyExample

# --- metrics (pure functions) -----------------------------------------------------------------


def binary_metrics(
    probs: Sequence[float], labels: Sequence[bool], threshold: float
) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of ``p >= threshold`` with unsafe as the positive class
    (precision/recall/F1 are 0 where undefined), plus the counts."""
    tp = fp = fn = tn = 0
    for p, y in zip(probs, labels, strict=True):
        pred = p >= threshold
        tp += pred and y
        fp += pred and not y
        fn += (not pred) and y
        tn += (not pred) and (not y)
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {
        "n": n,
        "unsafe": tp + fn,
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def best_f1_threshold(
    probs: Sequence[float], labels: Sequence[bool], *, above: float | None = None
) -> tuple[float, float]:
    """(threshold, F1): the cut ``p >= threshold`` with the highest F1; ties in F1 go to the
    higher threshold. The threshold is one of the probabilities, kept inside (0, 1); with
    ``above``, only thresholds greater than it are considered (none: just above it, F1 0)."""
    positives = sum(labels)
    if positives == 0 or not probs:
        return (0.5 if above is None else _just_above(above)), 0.0
    order = sorted(zip(probs, labels, strict=True), key=lambda x: -x[0])
    best_t, best_f1, tp = 0.5, -1.0, 0
    for k, (p, y) in enumerate(order, start=1):
        if above is not None and p <= above:
            break
        tp += y
        if k < len(order) and order[k][0] == p:
            continue  # a cut can only fall between distinct probabilities
        f1 = 2 * tp / (k + positives)
        if f1 > best_f1:
            best_t, best_f1 = p, f1
    if best_f1 < 0:  # no probability above the floor: flag nothing
        return _just_above(above if above is not None else 0.5), 0.0
    return min(max(best_t, 1e-6), 1 - 1e-6), best_f1


def _just_above(p: float) -> float:
    return min(max(math.nextafter(p, 1.0), 1e-6), 1 - 1e-6)


def benign_floor(benign_probs: Sequence[float], max_flag_rate: float) -> float | None:
    """The largest benign probability a threshold must exceed so that ``p >= threshold`` flags
    at most ``max_flag_rate`` of ``benign_probs``; None when there is no cap."""
    if not benign_probs or max_flag_rate <= 0.0:
        return None
    allowed = math.floor(max_flag_rate * len(benign_probs))  # flagged benign pairs allowed
    if allowed >= len(benign_probs):
        return None
    return sorted(benign_probs, reverse=True)[allowed]


def capped_f1_threshold(
    probs: Sequence[float],
    labels: Sequence[bool],
    benign_probs: Sequence[float],
    max_flag_rate: float,
) -> tuple[float, float]:
    """(threshold, F1): the F1-best cut on (``probs``, ``labels``) among those that flag at most
    ``max_flag_rate`` of ``benign_probs`` (ordinary, harmless pairs); no cap without them."""
    return best_f1_threshold(probs, labels, above=benign_floor(benign_probs, max_flag_rate))


def roc_auc(probs: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class."""
    pos = sum(labels)
    neg = len(labels) - pos
    if not pos or not neg:
        return math.nan
    order = sorted(range(len(probs)), key=lambda i: probs[i])
    ranks = [0.0] * len(probs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and probs[order[j + 1]] == probs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # average 1-based rank of the tie group
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def evaluate_split(
    classifier: SafetyClassifier, examples: Sequence[SafetyExample], threshold: float
) -> dict[str, Any]:
    """Overall and per-category metrics of ``classifier`` at ``threshold``, plus ROC AUC."""
    probs = classifier.unsafe_probability(
        [e.context for e in examples], [e.response for e in examples]
    )
    labels = [e.unsafe for e in examples]
    result: dict[str, Any] = {
        **binary_metrics(probs, labels, threshold),
        "roc_auc": roc_auc(probs, labels),
        "at_0.5": binary_metrics(probs, labels, 0.5),
        "per_category": {},
    }
    for category in sorted({e.category for e in examples}):
        rows = [i for i, e in enumerate(examples) if e.category == category]
        result["per_category"][category] = binary_metrics(
            [probs[i] for i in rows], [labels[i] for i in rows], threshold
        )
    return result

"""D_N, the negative set of negative distillation (Li et al., NAACL 2022, section 2.1): the pairs
whose responses have the highest source entropy H_src (eq. 4), exact-string or clustered
(training/methods/nd/entropy.py)."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.core.data import DialogueExample
from training.methods.nd.entropy import (
    EntropyConfig,
    NegativeSetStats,
    negative_set_stats,
    pair_source_entropy,
    top_fraction,
)

# --- D_N: source entropy ------------------------------------------------------------------------


def source_entropy(examples: Sequence[DialogueExample]) -> dict[str, float]:
    """ND eq. 4 (Csáky et al. 2019): H_src(r) = -Σ_q p(q|r) log p(q|r) for every response r.

    p(q|r) is the relative frequency of query q among the training pairs whose response is r;
    a query is the whole context (its turns joined). Natural log.
    """
    queries: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
    for ex in examples:
        queries[ex.response][ex.context] += 1
    entropy: dict[str, float] = {}
    for response, counts in queries.items():
        total = sum(counts.values())
        entropy[response] = -sum((c / total) * math.log(c / total) for c in counts.values()) + 0.0
    return entropy


@dataclass
class NegativeSet:
    """D_N and what it looks like."""

    examples: list[DialogueExample]
    threshold: float  # the lowest H_src inside D_N
    top_responses: list[
        tuple[str, float, int]
    ]  # (response, H_src, pairs in D_N), most generic first
    top20_share_in_dn: float  # share of D_N pairs whose response is one of D's 20 most frequent
    top20_share_in_d: float
    entropy: EntropyConfig = field(default_factory=EntropyConfig)  # how H_src was computed
    stats: NegativeSetStats | None = None  # ties, frequent responses, length, Dist-2 vs D

    def write_report(self, n_train: int, path: Path) -> None:
        """D_N's size, cut-off and most generic responses (``build``'s negative_set.json)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "train_pairs": n_train,
            "negative_pairs": len(self.examples),
            "entropy_threshold": self.threshold,
            "top20_share_in_dn": self.top20_share_in_dn,
            "top20_share_in_d": self.top20_share_in_d,
            "top_responses": [
                {"response": r, "source_entropy": h, "pairs_in_dn": n}
                for r, h, n in self.top_responses
            ],
            "entropy": self.entropy.describe(),
            "stats": self.stats.to_dict() if self.stats is not None else None,
        }
        path.write_text(json.dumps(report, indent=2))

    def summary(self) -> dict[str, Any]:
        return {"pairs": len(self.examples), "threshold": self.threshold}


def negative_set_summary(report: Path) -> dict[str, Any] | None:
    """:meth:`NegativeSet.summary` of the D_N an earlier build wrote to ``report`` (None if none)."""
    try:
        previous = json.loads(report.read_text())
    except (OSError, ValueError):
        return None
    return {"pairs": previous["negative_pairs"], "threshold": previous["entropy_threshold"]}


def negative_set(
    examples: Sequence[DialogueExample],
    fraction: float = 0.5,
    seed: int = 0,
    entropy: EntropyConfig | None = None,
) -> NegativeSet:
    """The top ``fraction`` of pairs by H_src of their response (ND Alg. 1, lines 2-4).

    ``entropy`` says how H_src (eq. 4) is computed: over exact strings (the default, "identity",
    :func:`source_entropy`) or over clusters of utterances (Csáky et al. 2019; see
    training/methods/nd/entropy.py), where a pair's score is its response cluster's entropy. Ties at the
    cut (under identity most pairs have H_src = 0) are broken by a seeded shuffle, so D_N is not
    biased toward the corpus order.
    """
    assert 0 < fraction <= 1, f"fraction must be in (0, 1], got {fraction}"
    cfg = entropy or EntropyConfig()
    pair_h = pair_source_entropy(examples, cfg).entropy
    keep = top_fraction(pair_h.tolist(), fraction, seed)
    dn = [examples[i] for i in sorted(keep)]
    h = {e.response: float(v) for e, v in zip(examples, pair_h.tolist(), strict=True)}
    d_counts = Counter(e.response for e in examples)
    dn_counts = Counter(e.response for e in dn)
    top20 = {r for r, _ in d_counts.most_common(20)}
    top = sorted(dn_counts, key=lambda r: (-h[r], -dn_counts[r]))[:20]
    return NegativeSet(
        examples=dn,
        threshold=min(h[e.response] for e in dn),
        top_responses=[(r, h[r], dn_counts[r]) for r in top],
        top20_share_in_dn=sum(dn_counts[r] for r in top20) / len(dn),
        top20_share_in_d=sum(d_counts[r] for r in top20) / len(examples),
        entropy=cfg,
        stats=negative_set_stats(
            examples, pair_h, keep, fraction=fraction, method=cfg.describe(), seed=seed
        ),
    )

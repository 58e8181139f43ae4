"""Which generator (and which retriever) the service serves. Generators: the least generic of those that model the data about as well
as the best, chosen on the validation split and recorded in ``<artifacts>/serving.json``.

The rule (``SelectionRule``):

1. candidates = the generators whose validation perplexity is within ``max_ppl_ratio`` of the
   lowest one (a generator that is diverse because it models the data badly is not a candidate);
2. among them, the lowest greedy max-ratio (the share of the most frequent reply: what a user
   sees as "it always says the same thing"); ties within ``tie`` go to the higher greedy Dist-2.

Selection never looks at the test split, so the test figures in the reports stay unbiased.
Retrievers (``RetrieverRule``): the highest validation Hits@1/K, so a G2R retriever is served only
when its teacher made it better than the plain bi-encoder trained beside it.

The service reads ``serving.json`` when its ``GENERATIVE_BUNDLE`` / ``RETRIEVAL_BUNDLE`` settings
are ``auto`` (the default).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models.bundle import SERVING_FILE


@dataclass(frozen=True)
class SelectionRule:
    max_ppl_ratio: float = 1.10  # candidates: validation perplexity <= 1.10 x the best
    tie: float = 0.01  # max-ratios closer than this are a tie, broken by Dist-2


def select_generator(
    evaluations: Mapping[str, Mapping[str, Any]], rule: SelectionRule = SelectionRule()
) -> tuple[str, dict[str, Any]]:
    """``evaluations``: name -> {"perplexity": float, "greedy": {"max-ratio", "dist-2", ...}}.

    Returns the chosen name and a record of why (the rule, every candidate's figures, who was
    excluded by perplexity)."""
    if not evaluations:
        raise ValueError("no generator evaluations to choose from")
    best_ppl = min(float(e["perplexity"]) for e in evaluations.values())
    eligible = {
        name: e
        for name, e in evaluations.items()
        if float(e["perplexity"]) <= rule.max_ppl_ratio * best_ppl
    }

    def key(name: str) -> tuple[float, float]:
        g = eligible[name]["greedy"]
        # Bucket max-ratio by the tie width so near-equal values fall to Dist-2.
        return (round(float(g["max-ratio"]) / rule.tie), -float(g["dist-2"]))

    chosen = min(sorted(eligible), key=key)
    record = {
        "chosen": chosen,
        "criterion": (
            f"lowest greedy max-ratio on the validation split among generators with validation "
            f"perplexity <= {rule.max_ppl_ratio:g} x the best ({best_ppl:.2f}); max-ratios within "
            f"{rule.tie:g} tie and go to the higher Dist-2"
        ),
        "rule": asdict(rule),
        "candidates": {
            name: {
                "perplexity": float(e["perplexity"]),
                "max-ratio": float(e["greedy"]["max-ratio"]),
                "dist-2": float(e["greedy"]["dist-2"]),
                "bleu-4": float(e["greedy"].get("bleu-4", float("nan"))),
                "eligible": name in eligible,
            }
            for name, e in evaluations.items()
        },
    }
    return chosen, record


@dataclass(frozen=True)
class RetrieverRule:
    """The served retriever: the highest validation Hits@1/K *as served* (with the bundle's TF-IDF
    re-ranker, ``served_hits@1``, when every candidate records it; else the dense Hits@1/K);
    scores closer than ``tie`` tie and go to the earlier candidate in the build's order (the
    cheaper method first). Served, not dense: the base build of session 10 chose G2R-DM on dense
    validation (0.2215 vs 0.2160) while the bi-encoder was ahead as served (0.2905 vs 0.2875),
    and on test as served too (0.2914 vs 0.2864, reports/build_base.md)."""

    tie: float = 0.005


def select_retriever(
    validations: Mapping[str, Mapping[str, Any]], rule: RetrieverRule = RetrieverRule()
) -> tuple[str, dict[str, Any]]:
    """``validations``: name -> the bundle's validation metrics ({"hits@1", "hits@5", "hits_k"}),
    in the build's order; every candidate must have been validated on the same contexts and K.

    Returns the chosen name and the record of why."""
    if not validations:
        raise ValueError("no retriever validations to choose from")
    ks = {float(v["hits_k"]) for v in validations.values()}
    if len(ks) != 1:
        raise ValueError(f"retrievers validated with different K ({sorted(ks)}) do not compare")
    order = list(validations)
    served = all("served_hits@1" in v for v in validations.values())
    key = "served_hits@1" if served else "hits@1"
    best = max(float(v[key]) for v in validations.values())
    chosen = next(n for n in order if float(validations[n][key]) >= best - rule.tie)
    record = {
        "chosen": chosen,
        "criterion": (
            f"highest validation Hits@1/{int(ks.pop())}{' as served (re-ranked)' if served else ''}"
            f" (best {best:.4f}); scores within "
            f"{rule.tie:g} of the best tie and go to the first in build order ({', '.join(order)})"
        ),
        "rule": asdict(rule),
        "candidates": {
            name: {k: float(v[k]) for k in ("hits@1", "hits@5", "served_hits@1") if k in v}
            for name, v in validations.items()
        },
    }
    return chosen, record


def write_serving(
    out_dir: Path,
    generative: str | None,
    retrieval: str | None,
    why: Any,
    *,
    retrieval_why: Any = None,
) -> Path:
    """Atomically write ``serving.json``: the bundles the service should load and why (``why``:
    the generator's selection record; ``retrieval_why``: the retriever's, when there was a choice)."""
    path = out_dir / SERVING_FILE
    tmp = path.with_suffix(".tmp")
    record = {"generative": generative, "retrieval": retrieval, "why": why}
    if retrieval_why is not None:
        record["retrieval_why"] = retrieval_why
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)
    return path

"""Retriever methods across seeds: test Hits@1/100 per seed, mean, and each G2R variant against the
plain bi-encoder with its standard error.

Reads every bundle directory under ``--bundles`` named ``<method>-s<seed>`` (as written by
``reports/commands/retriever_seeds_small.sh``) and scores it on the whole DailyDialog test split
with the protocol of the other retrieval reports (K = 100: the gold and 99 random test responses,
seed 0; ``training.methods.g2r.losses.HitsEvaluator``).

Each bundle is scored twice: ``dense`` (the float32 bi-encoder alone) and ``served`` (the bundle
loaded as the service loads it, so with the int8 context encoder on a CPU, and its
TF-IDF re-ranker, models/lexical.py; a bundle built before re-ranking existed gets one fitted
here exactly as the build fits it: the weight chosen on 2,000 validation pairs,
``training.methods.g2r.index.fit_rerank_weight``). Comparisons use the served scores.

Two standard errors are shown for a difference of method means: ``binomial``, sqrt(p(1-p)/n) of
each mean combined (how precisely one test split measures a fixed model), and ``seeds``, the
seed-to-seed spread, sd / sqrt(seeds) combined (how much training luck moves it). A difference
counts as "above by > 2 SE" only against the larger of the two.

    python -m benchmarks.retriever_seeds --bundles artifacts-exp/retriever-seeds \\
        --out reports/retriever_seeds_small
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from benchmarks import write_report
from models.lexical import LexicalReranker
from models.retriever import RetrievalResponder
from training.core.data import load_splits, sample_examples
from training.methods.g2r.index import fit_rerank_weight
from training.methods.g2r.losses import HitsEvaluator, hits_at_k, hits_candidates

BUNDLE_NAME = re.compile(r"^(?P<method>[a-z0-9-]+)-s(?P<seed>\d+)$")
BASELINE = "biencoder"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundles", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/dailydialog"))
    ap.add_argument("--baseline", default=BASELINE, help="the method every other is compared with")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    baseline = args.baseline
    load_before = os.getloadavg()
    runs: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    splits_by_turns: dict[int, Any] = {}
    for path in sorted(p for p in args.bundles.iterdir() if (p / "manifest.json").is_file()):
        m = BUNDLE_NAME.match(path.name)
        if not m:
            continue
        responder = RetrievalResponder.load(path, device="cpu")
        turns = responder.inputs.max_context_turns
        if turns not in splits_by_turns:
            splits_by_turns[turns] = load_splits(args.data, max_context_turns=turns)
        test = splits_by_turns[turns].test
        with torch.inference_mode():
            hits = HitsEvaluator(test, responder.tokenizer, responder.inputs, k=100, seed=0)(
                responder.model
            )
        fitted_here = responder.reranker is None
        if fitted_here:
            responder.reranker = LexicalReranker.fit(responder.responses)
            fit_rerank_weight(responder, sample_examples(splits_by_turns[turns].validation, 2000))
        weight = responder.reranker.weight if responder.reranker else 0.0
        pool = list(dict.fromkeys(e.response for e in test))
        cand = hits_candidates([e.response for e in test], pool, 100, 0)
        served = hits_at_k(
            torch.from_numpy(responder.candidate_scores([e.context for e in test], pool, cand))
        )
        manifest = responder.manifest
        assert manifest is not None
        runs[m["method"]][int(m["seed"])] = {
            "bundle": responder.bundle_id,
            "dense_test_hits@1": hits["hits@1"],
            "test_hits@1": served["hits@1"],
            "test_hits@5": served["hits@5"],
            "rerank_weight": weight,
            "rerank_fitted_here": fitted_here,
            "n": len(test),
            "val_hits@1": manifest.metrics.get("hits@1"),
            "steps": manifest.training.get("steps"),
            "wall_time_s": manifest.training.get("wall_time_s"),
        }
    if baseline not in runs:
        raise SystemExit(f"no {baseline}-s<seed> bundles under {args.bundles}")
    summary: dict[str, dict[str, float]] = {}
    for method, by_seed in runs.items():
        vals = [r["test_hits@1"] for r in by_seed.values()]
        n = statistics.fmean(r["n"] for r in by_seed.values())
        mean = statistics.fmean(vals)
        summary[method] = {
            "seeds": len(vals),
            "mean": mean,
            "sd": statistics.stdev(vals) if len(vals) > 1 else math.nan,
            "binomial_se": math.sqrt(mean * (1 - mean) / n / len(vals)),
        }
    base = summary[baseline]
    comparisons = {}
    for method, s in summary.items():
        if method == baseline:
            continue
        diff = s["mean"] - base["mean"]
        se_binom = math.hypot(s["binomial_se"], base["binomial_se"])
        se_seeds = math.hypot(
            s["sd"] / math.sqrt(s["seeds"]), base["sd"] / math.sqrt(base["seeds"])
        )
        se = max(se_binom, se_seeds) if not math.isnan(se_seeds) else se_binom
        comparisons[method] = {
            "diff": diff,
            "se_binomial": se_binom,
            "se_seeds": se_seeds,
            "z": diff / se if se > 0 else math.nan,
            "above_by_2se": diff > 2 * se,
        }
    result = {
        "command": "python -m benchmarks.retriever_seeds " + " ".join(argv or sys.argv[1:]),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
        "summary": summary,
        "vs_" + baseline: comparisons,
    }
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    lines = [
        "# Retrievers across seeds: test Hits@1/100, served and dense",
        "",
        f"Command: `{result['command']}`  ",
        f"Load average before {result['load_before']}, after {result['load_after']} (scores do "
        "not depend on load). Whole DailyDialog test split, K = 100 (gold + 99 random test "
        "responses, seed 0).",
        "",
        "Served (bi-encoder + TF-IDF re-ranking; the weight of each run is in the JSON):",
        "",
        "| method | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean | sd | val Hits@1 (mean, dense) |",
        "|---|" + "---:|" * (len(seeds) + 3),
    ]
    for method, by_seed in sorted(runs.items()):
        cells = [f"{by_seed[s]['test_hits@1']:.4f}" if s in by_seed else "-" for s in seeds]
        vals = [r["val_hits@1"] for r in by_seed.values() if r["val_hits@1"] is not None]
        s = summary[method]
        lines.append(
            f"| {method} | " + " | ".join(cells) + f" | {s['mean']:.4f} | {s['sd']:.4f} | "
            f"{statistics.fmean(vals):.4f} |"
        )
    lines += [
        "",
        "Dense (the bi-encoder alone), the same test candidates:",
        "",
        "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | served / dense |",
        "|---|" + "---:|" * (len(seeds) + 2),
    ]
    for method, by_seed in sorted(runs.items()):
        cells = [f"{by_seed[s]['dense_test_hits@1']:.4f}" if s in by_seed else "-" for s in seeds]
        dense_mean = statistics.fmean(r["dense_test_hits@1"] for r in by_seed.values())
        lines.append(
            f"| {method} | " + " | ".join(cells) + f" | {dense_mean:.4f} | "
            f"{summary[method]['mean'] / dense_mean:.2f}x |"
        )
    lines += [
        "",
        f"Against {baseline}, served scores (difference of means; SE: binomial / seeds; z uses "
        "the larger):",
        "",
        "| method | diff | SE binomial | SE seeds | z | above by > 2 SE |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for method, c in comparisons.items():
        lines.append(
            f"| {method} | {c['diff']:+.4f} | {c['se_binomial']:.4f} | {c['se_seeds']:.4f} | "
            f"{c['z']:+.2f} | {'yes' if c['above_by_2se'] else 'no'} |"
        )
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    write_report(args.out, result, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

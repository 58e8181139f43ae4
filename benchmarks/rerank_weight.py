"""How well does the build's validation choice of the TF-IDF re-ranking weight carry to the test split?

For each retriever bundle (``LABEL=DIR``) this scores every weight the build tries
(``training.methods.g2r.index.RERANK_WEIGHTS``, 0 = the bi-encoder alone) by Hits@1/100 with the
protocol of the other retrieval reports (the gold and 99 random responses of the same split, seed
0) on three sets: the first N validation pairs (what the build chose on), the whole validation
split, and the whole test split. Then, for each validation set, the weight it picks (ties to the
smaller weight, as the build) and what that weight scores on test, against the best weight on
test. With ~1,000 validation pairs a standard error of Hits@1 is ~0.014, larger than the gaps
between neighbouring weights, so the choice can be noise; the whole split (~3x the pairs) less so.

    python -m benchmarks.rerank_weight --bundle s13=artifacts/retriever-g2r --first 1000 \\
        --out reports/rerank_weight_small
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import write_report
from models.lexical import LexicalReranker, mix_scores
from models.retriever import RetrievalResponder
from training.config import DAILYDIALOG
from training.core.data import DialogueExample, load_splits
from training.eval.tables import markdown_table
from training.methods.g2r.index import RERANK_WEIGHTS
from training.methods.g2r.losses import hits_at_k, hits_candidates


def hits_by_weight(
    responder: RetrievalResponder, examples: Sequence[DialogueExample], k: int = 100
) -> dict[float, float]:
    """Hits@1/k of every re-ranking weight on ``examples`` (candidates from their own responses)."""
    pool = list(dict.fromkeys(e.response for e in examples))
    cand = hits_candidates([e.response for e in examples], pool, k, 0)
    dense, lexical = responder.candidate_score_parts([e.context for e in examples], pool, cand)
    assert lexical is not None
    return {
        w: float(hits_at_k(torch.from_numpy(mix_scores(dense, lexical, w)))["hits@1"])
        for w in RERANK_WEIGHTS
    }


def pick(table: dict[float, float]) -> float:
    """The build's rule: the highest Hits@1, ties to the smaller weight."""
    return max(table, key=lambda w: (table[w], -w))


def score_bundle(path: Path, data: Path, first: int) -> dict[str, Any]:
    responder = RetrievalResponder.load(path, device="cpu")
    if responder.reranker is None:
        responder.reranker = LexicalReranker.fit(responder.responses)
    splits = load_splits(data, max_context_turns=responder.inputs.max_context_turns)
    sets = {
        f"validation[:{first}]": splits.validation[:first],
        "validation": splits.validation,
        "test": splits.test,
    }
    tables = {name: hits_by_weight(responder, examples) for name, examples in sets.items()}
    test = tables["test"]
    best_test = pick(test)
    choices = {}
    for name in (f"validation[:{first}]", "validation"):
        w = pick(tables[name])
        choices[name] = {"weight": w, "test_hits@1": test[w], "test_best": test[best_test]}
    return {
        "bundle": responder.bundle_id,
        "built_weight": responder.reranker.weight,
        "pairs": {name: len(examples) for name, examples in sets.items()},
        "hits@1_by_weight": {name: {str(w): v for w, v in t.items()} for name, t in tables.items()},
        "choices": choices,
        "best_test_weight": best_test,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", action="append", default=[], metavar="LABEL=DIR", required=True)
    ap.add_argument("--data", type=Path, default=DAILYDIALOG)
    ap.add_argument("--first", type=int, default=1000, help="the validation pairs a build used")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {}
    for spec in args.bundle:
        label, _, path = spec.partition("=")
        rows[label] = score_bundle(Path(path), args.data, args.first)
        print(label, rows[label]["choices"], flush=True)
    command = "python -m benchmarks.rerank_weight " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    parts = [
        "# TF-IDF re-ranking weight: chosen on validation, scored on test\n",
        f"Command: `{command}`  \nMachine: {os.cpu_count()} CPUs, torch {torch.__version__}; "
        "quality figures do not depend on load. Hits@1/100: the gold and 99 random responses of "
        "the same split (seed 0); weight 0 = the bi-encoder alone.\n",
    ]
    for label, r in rows.items():
        names = list(r["hits@1_by_weight"])
        table = [
            [w, *(f"{r['hits@1_by_weight'][n][w]:.4f}" for n in names)]
            for w in r["hits@1_by_weight"]["test"]
        ]
        n_test = r["pairs"]["test"]
        choice_rows = [
            [
                name,
                r["pairs"][name],
                c["weight"],
                f"{c['test_hits@1']:.4f}",
                f"{c['test_best']:.4f} ({r['best_test_weight']})",
                f"{c['test_hits@1'] - c['test_best']:+.4f}",
            ]
            for name, c in r["choices"].items()
        ]
        se = math.sqrt(0.27 * 0.73 / n_test)
        parts.append(
            f"## {label}: `{r['bundle']}` (built with weight {r['built_weight']})\n\n"
            + markdown_table(["weight", *(f"{n} ({r['pairs'][n]} pairs)" for n in names)], table)
            + "\n\n"
            + markdown_table(
                [
                    "chosen on",
                    "pairs",
                    "weight",
                    "its test Hits@1",
                    "best on test (weight)",
                    "gap",
                ],
                choice_rows,
            )
            + f"\n\n(one test Hits@1 near 0.27 has a standard error of {se:.4f} over {n_test} "
            "pairs; gaps between weights on the same pairs are paired, so smaller)\n"
        )
    markdown = "\n".join(parts)
    write_report(args.out, {"command": command, "bundles": rows}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

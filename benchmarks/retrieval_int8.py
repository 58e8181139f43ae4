"""The retriever's context encoder in int8 against float32: test quality, agreement and batch-1 time.

For every retriever bundle given, loaded twice (``RetrievalResponder.load(int8=False)`` and the
default, which quantizes the context encoder's linear layers where it applies,
``RetrievalResponder.quantize_context_encoder``):

- test Hits@1/100 and Hits@5/100 on the whole DailyDialog test split (K = 100: the gold and 99
  random test responses, seed 0, as every retrieval report), dense (the bi-encoder alone) and as
  served (with the bundle's TF-IDF re-ranker), each with its binomial standard error;
- the share of test contexts whose served top-1 reply from the whole index is the same in int8 as
  in float32;
- batch-1 time, *interleaved* context by context over every bundle and precision (one process,
  rows in an order shuffled per context): the context encoder's forward alone (as ``embed`` runs
  it, the trace), tokenize + embed, and the whole served path (``respond``, top-1). Ratios are against the first bundle's
  float32 served path, measured in the same run.

    OMP_NUM_THREADS=1 python -m benchmarks.retrieval_int8 \\
        --retriever biencoder=artifacts-base/retriever-biencoder \\
        --retriever fast=artifacts-base/retriever-fast --out reports/retrieval_int8_base
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import write_report
from benchmarks.latency import latency_summary, machine_description, set_threads, time_interleaved
from benchmarks.retrieval import parse_labelled
from benchmarks.retrieval_stages import seeded_indices
from models.retriever import RetrievalResponder
from training.config import DAILYDIALOG
from training.core.data import DialogueExample, load_splits
from training.methods.g2r.losses import hits_at_k, hits_candidates

PRECISIONS = ("float32", "int8")


def test_hits(responder: RetrievalResponder, test: Sequence[DialogueExample]) -> dict[str, float]:
    """Dense and served Hits@1/5 out of 100 on ``test``, with the binomial SE of each Hits@1."""
    pool = list(dict.fromkeys(e.response for e in test))
    cand = hits_candidates([e.response for e in test], pool, 100, 0)
    contexts = [e.context for e in test]
    dense, lexical = responder.candidate_score_parts(contexts, pool, cand)
    out: dict[str, float] = {}
    parts = {"dense": dense}
    if lexical is not None and responder.reranker is not None:
        parts["served"] = responder.candidate_scores(contexts, pool, cand)
    else:
        parts["served"] = dense
    for name, scores in parts.items():
        hits = hits_at_k(torch.from_numpy(scores))
        p = hits["hits@1"]
        out[f"{name}_hits@1"] = p
        out[f"{name}_hits@5"] = hits["hits@5"]
        out[f"{name}_se"] = math.sqrt(p * (1 - p) / len(test))
    return out


def served_top1(responder: RetrievalResponder, contexts: Sequence[Sequence[str]]) -> list[str]:
    """The served top-1 reply from the whole index for each context."""
    out = []
    for start in range(0, len(contexts), 256):
        hits = responder.respond(contexts[start : start + 256], 1)
        out += [h[0][0] if h else "" for h in hits]
    return out


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    set_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    bundles = parse_labelled(args.retriever)
    responders = {
        (label, precision): RetrievalResponder.load(path, device="cpu", int8=precision == "int8")
        for label, path in bundles.items()
        for precision in PRECISIONS
    }
    splits: dict[int, Any] = {}
    quality: dict[str, dict[str, Any]] = {}
    timed_rows: dict[str, Any] = {}
    contexts: list[list[str]] = []
    for (label, precision), responder in responders.items():
        turns = responder.inputs.max_context_turns
        if turns not in splits:
            splits[turns] = load_splits(args.data, max_context_turns=turns).test
        test = splits[turns]
        if not contexts:
            contexts = [list(test[i].context) for i in seeded_indices(len(test), args.queries)]
        row: dict[str, Any] = {"bundle": responder.bundle_id, **test_hits(responder, test)}
        row["n"] = len(test)
        agreement = [test[i].context for i in seeded_indices(len(test), args.agreement, seed=1)]
        if precision == "float32":
            reference = served_top1(responder, agreement)
        else:
            got = served_top1(responder, agreement)
            row["served_top1_agreement_with_float32"] = float(
                np.mean([a == b for a, b in zip(got, reference, strict=True)])
            )
        quality[f"{label} {precision}"] = row

        def encoder(context: Sequence[str], r: RetrievalResponder = responder) -> Any:
            return r.embed(r.encode_contexts([context]))

        ids = {tuple(c): responder.encode_contexts([c]) for c in contexts}

        def forward(
            context: Sequence[str],
            r: RetrievalResponder = responder,
            ids: dict[tuple[str, ...], Any] = ids,
        ) -> Any:
            x = ids[tuple(context)]
            return r._context_encoder_for(x)(x)

        def served(context: Sequence[str], r: RetrievalResponder = responder) -> Any:
            return r.respond([context], 1)

        timed_rows[f"{label} {precision}: context encoder forward alone (as served: trace)"] = (
            forward
        )
        timed_rows[f"{label} {precision}: context encoder (tokenize + embed)"] = encoder
        timed_rows[f"{label} {precision}: served path (respond, top-1)"] = served
    with torch.inference_mode():
        seconds = time_interleaved(timed_rows, contexts, args.rounds)
    latency = {name: latency_summary(s) for name, s in seconds.items()}
    first = next(iter(bundles))
    baseline = f"{first} float32: served path (respond, top-1)"
    for row in latency.values():
        row["x_faster_than_baseline"] = latency[baseline]["mean_ms"] / row["mean_ms"]
    return {
        "command": "python -m benchmarks.retrieval_int8 "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine_description(args.threads),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "bundles": {label: str(path) for label, path in bundles.items()},
        "n_timed": len(contexts),
        "rounds": args.rounds,
        "n_agreement": args.agreement,
        "baseline": baseline,
        "quality": quality,
        "latency": latency,
    }


def to_markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# The retriever's context encoder in int8 against float32",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {m['machine']}, {m['cpu_count']} CPU cores; torch {m['torch']} with "
        f"{m['threads']} thread(s); load average before {r['load_before']}, after "
        f"{r['load_after']}.",
        "",
        "## Quality: whole DailyDialog test split, Hits@k out of 100 (gold + 99 random test "
        "responses)",
        "",
        "| retriever | bundle | dense Hits@1 | served Hits@1 (± SE) | served Hits@5 | served "
        f"top-1 from the index = float32's ({r['n_agreement']} test contexts) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, q in r["quality"].items():
        agree = q.get("served_top1_agreement_with_float32")
        lines.append(
            f"| {name} | {q['bundle']} | {q['dense_hits@1']:.4f} | {q['served_hits@1']:.4f} "
            f"(± {q['served_se']:.4f}) | {q['served_hits@5']:.4f} | "
            + ("(reference)" if agree is None else f"{agree:.4f}")
            + " |"
        )
    lines += [
        "",
        f"## Batch-1 time, interleaved: {r['n_timed']} seeded test contexts, {r['rounds']} "
        "passes, every row once per context in a shuffled order",
        "",
        f"Ratios against `{r['baseline']}` (what was served before), the same run.",
        "",
        "| row | mean ms | p50 ms | p90 ms | x faster than the baseline (mean) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t in r["latency"].items():
        lines.append(
            f"| {name} | {t['mean_ms']:.3f} | {t['p50_ms']:.3f} | {t['p90_ms']:.3f} | "
            f"{t['x_faster_than_baseline']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--retriever", action="append", required=True, metavar="LABEL=DIR")
    p.add_argument("--data", type=Path, default=DAILYDIALOG)
    p.add_argument("--queries", type=int, default=200, help="timed test contexts")
    p.add_argument("--agreement", type=int, default=2000, help="contexts for the agreement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    results = run(args, argv)
    md = to_markdown(results)
    write_report(args.out, results, md)
    print(md)


if __name__ == "__main__":
    main()

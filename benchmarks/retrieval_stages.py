"""Where a retriever's batch-1 time goes as served: tokenize, encode, search (HNSW + re-rank).

The quality report times the whole served path (``RetrievalResponder.respond``) against greedy
generation; this one splits it by the responder's own stage observer and, for the search stage,
times the HNSW top-K the re-ranker starts from at several efSearch values, with what a smaller
efSearch costs in agreement: the share of contexts whose *served* top-1 reply stays the one the
bundle's efSearch gives, and the recall of its K candidates. Each row is timed over the same
seeded test contexts, one row after another in one process (not interleaved: compare rows of one
run only, on an idle machine); speed-ups are against the served path of the same run.

With ``--generator`` it also times, *interleaved* context by context, greedy generation against
the served retrieval and its variants (the context encoder untraced, in float32 where int8
serves, other efSearch values, the dense path alone at each efSearch): the G2R paper's speed-up
claim, measured so that a noisy neighbour on a shared VM slows every row alike.

    OMP_NUM_THREADS=1 python -m benchmarks.retrieval_stages \\
        --bundle artifacts-base/retriever-biencoder --generator artifacts-base/generator-nt \\
        --out reports/retrieval_stages_base
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import write_report
from benchmarks.latency import (
    latency_summary,
    machine_description,
    recall_at_k,
    set_threads,
    time_interleaved,
    time_per_query,
)
from benchmarks.quality_report import greedy, seeded_indices
from benchmarks.retrieval import DEFAULT_DATA
from models.generator import GenerativeResponder
from models.retriever import RetrievalResponder
from training.core.data import load_dailydialog

logger = logging.getLogger(__name__)

STAGES = ("tokenize", "encode", "search")
GENERATION_ROW = "greedy generation (the generator bundle)"
SERVED_ROW = "retrieval as served (re-ranked top-1)"
FLOAT32_ROW = "as served, the float32 context encoder (RETRIEVAL_INT8=off)"
DENSE_ROW = "dense path alone (tokenize + encode + HNSW top-1)"
ENCODE_ROW = "tokenize + encode alone (no search: what any retrieval with this encoder pays)"
GOAL = 20.0  # issue 11's target: retrieval this many times faster than greedy generation


def stage_times(
    responder: RetrievalResponder, contexts: Sequence[Sequence[str]], rounds: int
) -> dict[str, dict[str, float]]:
    """Latency summary (ms) of each served stage and of the whole ``respond`` call (top-1),
    over ``rounds`` passes of ``contexts``."""
    seconds: dict[str, list[float]] = defaultdict(list)

    def respond(context: Sequence[str]) -> Any:
        return responder.respond([context], 1, on_stage=lambda s, t: seconds[s].append(t))

    total = time_per_query(respond, list(contexts) * rounds)
    # the warm-up calls observed their stages too: keep the timed calls' (the last ones)
    stages = {s: latency_summary(v[-len(total) :]) for s, v in seconds.items()}
    return {**stages, "total": latency_summary(total)}


def timed(fn: Callable[[Any], Any], items: Sequence[Any], rounds: int) -> dict[str, float]:
    """Latency summary (ms) of ``fn`` over ``rounds`` passes of ``items`` (3 warm-ups first)."""
    return latency_summary(time_per_query(fn, list(items) * rounds))


def ef_sweep(
    responder: RetrievalResponder,
    contexts: Sequence[Sequence[str]],
    agreement_contexts: Sequence[Sequence[str]],
    efs: Sequence[int],
    rounds: int,
) -> list[dict[str, Any]]:
    """Per efSearch: HNSW top-K time (K = the re-ranker's candidates, or 1 without one), the
    served top-1 agreement with the bundle's efSearch and the candidates' recall@K."""
    reranker = responder.reranker
    k = reranker.candidates if reranker is not None and reranker.weight > 0 else 1
    bundle_ef = responder.index.config.ef_search
    embeddings = [responder.embed(responder.encode_contexts([c])) for c in contexts]
    agree_emb = responder.embed(responder.encode_contexts(agreement_contexts))

    def served_top1() -> list[str]:
        hits = responder.search(agree_emb, 1, agreement_contexts)
        return [h[0][0] if h else "" for h in hits]

    responder.index.set_ef_search(bundle_ef)
    reference_ids = responder.index.search(agree_emb, k)[1]
    reference_top1 = served_top1()
    rows = []
    try:
        for ef in efs:
            responder.index.set_ef_search(ef)
            ids = responder.index.search(agree_emb, k)[1]
            top1 = served_top1()
            rows.append(
                {
                    "ef_search": ef,
                    "k": k,
                    "hnsw": timed(lambda e: responder.index.search(e, k), embeddings, rounds),
                    "served_top1_agreement": float(
                        np.mean([a == b for a, b in zip(top1, reference_top1, strict=True)])
                    ),
                    "candidate_recall": recall_at_k(ids, reference_ids),
                }
            )
    finally:
        responder.index.set_ef_search(bundle_ef)
    return rows


def against_generation(
    responder: RetrievalResponder,
    generator: GenerativeResponder,
    contexts: Sequence[Sequence[str]],
    efs: Sequence[int],
    rounds: int,
    float32: RetrievalResponder | None = None,
) -> dict[str, dict[str, float]]:
    """Batch-1 latency summaries (ms) of greedy generation (the KV cache, the bundle's rules:
    the quality report's protocol) and of the retriever as served and in variants, timed
    *interleaved*: for each context every row runs once, in an order that alternates between
    passes, so that a slower minute of a shared machine slows every row alike. Variants: the
    context encoder as a module (no trace), ``float32`` (the same bundle loaded with a float32
    context encoder, when the served one is int8), the bundle at each other efSearch of ``efs``,
    and the dense path alone (tokenize + encode + HNSW top-1, G2R's own retrieval, which has no
    re-ranker) at each efSearch."""
    decoding = greedy(generator)
    bundle_ef = responder.index.config.ef_search

    def served(ef: int, traced: bool = True) -> Callable[[Sequence[str]], Any]:
        def run(context: Sequence[str]) -> Any:
            responder.index.set_ef_search(ef)
            if traced:
                return responder.respond([context], 1)
            with responder.untraced():
                return responder.respond([context], 1)

        return run

    def dense(ef: int) -> Callable[[Sequence[str]], Any]:
        def run(context: Sequence[str]) -> Any:
            responder.index.set_ef_search(ef)
            return responder.index.search(responder.embed(responder.encode_contexts([context])), 1)

        return run

    other_efs = [ef for ef in efs if ef != bundle_ef]

    rows: dict[str, Callable[[Sequence[str]], Any]] = {
        GENERATION_ROW: lambda c: generator.respond([c], decoding),
        SERVED_ROW: served(bundle_ef),
        "as served, the context encoder as a module (no trace)": served(bundle_ef, traced=False),
        **({} if float32 is None else {FLOAT32_ROW: lambda c: float32.respond([c], 1)}),
        **{f"as served at efSearch {ef}": served(ef) for ef in other_efs},
        DENSE_ROW: dense(bundle_ef),
        **{f"dense path alone at efSearch {ef}": dense(ef) for ef in other_efs},
        ENCODE_ROW: lambda c: responder.embed(responder.encode_contexts([c])),
    }
    try:
        seconds = time_interleaved(rows, contexts, rounds)
    finally:
        responder.index.set_ef_search(bundle_ef)
    return {name: latency_summary(v) for name, v in seconds.items()}


def to_markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    served = r["stages"]["total"]["mean_ms"]
    lines = [
        f"# Retrieval stages at batch 1: {r['bundle']}",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {m['machine']}, {m['cpu_count']} CPU cores; torch {m['torch']} and FAISS "
        f"{m['faiss']} with {m['threads']} thread(s); load average before {r['load_before']}, "
        f"after {r['load_after']}.  ",
        f"{r['n_contexts']} seeded test contexts ({r['context_turns']} turns each at most), "
        f"{r['rounds']} passes each, the rows one after another; agreement over "
        f"{r['n_agreement']} test contexts.",
        "",
        "## The served path (`respond`, top-1), by stage",
        "",
        "| stage | mean ms | p50 ms | share of the served mean |",
        "|---|---:|---:|---:|",
    ]
    for stage in (*STAGES, "total"):
        s = r["stages"][stage]
        lines.append(
            f"| {stage} | {s['mean_ms']:.3f} | {s['p50_ms']:.3f} | {s['mean_ms'] / served:.2f} |"
        )
    lines += [
        "",
        "Parts timed alone, the same contexts:",
        "",
        "| part | mean ms | p50 ms | x faster than the served path (mean) |",
        "|---|---:|---:|---:|",
    ]
    for name, s in r["parts"].items():
        lines.append(
            f"| {name} | {s['mean_ms']:.3f} | {s['p50_ms']:.3f} | {served / s['mean_ms']:.2f}x |"
        )
    lines += [
        "",
        "## efSearch of the HNSW search the re-ranker starts from",
        "",
        f"The bundle searches at efSearch {r['bundle_ef_search']}; agreement is against it.",
        "",
        "| efSearch | K | HNSW top-K mean ms | p50 ms | served top-1 agreement | "
        "candidate recall@K |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["ef_sweep"]:
        h = row["hnsw"]
        lines.append(
            f"| {row['ef_search']} | {row['k']} | {h['mean_ms']:.3f} | {h['p50_ms']:.3f} | "
            f"{row['served_top1_agreement']:.4f} | {row['candidate_recall']:.4f} |"
        )
    if r.get("against_generation"):
        rows = r["against_generation"]
        gen = rows[GENERATION_ROW]["mean_ms"]
        lines += [
            "",
            f"## Against greedy generation ({r['generator']}), interleaved",
            "",
            f"The same {r['n_contexts']} contexts, {r['rounds']} passes; for each context every "
            "row runs once, in an order shuffled per context (seeded). The G2R paper's claim: "
            "retrieval 19.9x faster than generation on an A100, 11.6x on a CPU.",
            "",
            "| row | mean ms | p50 ms | p90 ms | x faster than generation (mean) | (p50) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        gen50 = rows[GENERATION_ROW]["p50_ms"]
        for name, s in rows.items():
            lines.append(
                f"| {name} | {s['mean_ms']:.3f} | {s['p50_ms']:.3f} | {s['p90_ms']:.3f} | "
                f"{gen / s['mean_ms']:.2f}x | {gen50 / s['p50_ms']:.2f}x |"
            )
        if ENCODE_ROW in rows:
            floor = rows[ENCODE_ROW]["mean_ms"]
            lines += [
                "",
                f"{GOAL:.0f}x faster than generation is a served path of {gen / GOAL:.3f} ms "
                f"(mean); tokenize + encode alone take {floor:.3f} ms, which leaves "
                f"{gen / GOAL - floor:.3f} ms for the HNSW search and the re-ranking together "
                f"(they take {rows[SERVED_ROW]['mean_ms'] - floor:.3f} ms as served).",
            ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="retriever bundle")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--queries", type=int, default=200, help="timed test contexts")
    p.add_argument("--agreement", type=int, default=2000, help="contexts for the agreement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ef", default="256,128,100", help="efSearch values to sweep")
    p.add_argument(
        "--generator", type=Path, help="generator bundle: time greedy generation interleaved"
    )
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    set_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    responder = RetrievalResponder.load(args.bundle, device="cpu")
    turns = responder.inputs.max_context_turns
    test = load_dailydialog(args.data, "test", turns)
    contexts = [test[i].context for i in seeded_indices(len(test), args.queries)]
    agreement = [test[i].context for i in seeded_indices(len(test), args.agreement, seed=1)]
    stages = stage_times(responder, contexts, args.rounds)

    def dense_top1(context: Sequence[str]) -> Any:
        return responder.index.search(responder.embed(responder.encode_contexts([context])), 1)

    ids = [responder.encode_contexts([c]) for c in contexts]
    with torch.inference_mode():
        parts = {
            "dense path (tokenize + encode + HNSW top-1, no re-rank)": timed(
                dense_top1, contexts, args.rounds
            ),
            "context encoder forward alone (module)": timed(
                responder.model.encode_contexts, ids, args.rounds
            ),
            "context encoder forward alone (as embed() runs it: the trace where on)": timed(
                lambda i: responder._context_encoder_for(i)(i), ids, args.rounds
            ),
        }
    sweep = ef_sweep(
        responder, contexts, agreement, [int(x) for x in args.ef.split(",")], args.rounds
    )
    generator = None
    against = None
    if args.generator is not None:
        generator = GenerativeResponder.load(args.generator, device="cpu")
        efs = [int(x) for x in args.ef.split(",")]
        float32 = (
            RetrievalResponder.load(args.bundle, device="cpu", int8=False)
            if responder.int8
            else None
        )
        against = against_generation(
            responder, generator, contexts, efs, args.rounds, float32=float32
        )
    results = {
        "command": "python -m benchmarks.retrieval_stages "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "bundle": responder.bundle_id,
        "machine": machine_description(args.threads),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "n_contexts": len(contexts),
        "n_agreement": len(agreement),
        "context_turns": turns,
        "rounds": args.rounds,
        "bundle_ef_search": responder.index.config.ef_search,
        "stages": stages,
        "parts": parts,
        "ef_sweep": sweep,
        "generator": generator.bundle_id if generator is not None else None,
        "against_generation": against,
    }
    markdown = to_markdown(results)
    print(markdown)
    write_report(args.out, results, markdown)


if __name__ == "__main__":
    main()

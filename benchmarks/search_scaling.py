"""Response-index search as the response set grows: HNSW (``ResponseIndex``) vs exact FlatIP.

Seeded synthetic embeddings of the small retriever's size (128): standard Gaussian rows, with
``--unit-norm`` rows scaled to norm 1, or with ``--like BUNDLE`` Gaussian rows with the mean and
covariance of a retriever bundle's embeddings (database: its stored response embeddings; queries:
its context encoder over seeded responses as stand-in contexts, as ``rebuild_index`` does), which
keeps the real embeddings' spectrum and query/database offset at any size. The approximate side is exactly what a retriever bundle
serves: :class:`models.retriever.ResponseIndex` with the bundle defaults (``HNSW32,Flat``, inner
product over ``[x, sqrt(M^2 - |x|^2)]``, efConstruction 40, efSearch 256). Per size: build time,
batch-1 latency per query (mean, p50, p90; 3 warm-ups), and top-1 agreement / recall@10 against
exact ``IndexFlatIP`` search over ``--queries`` seeded queries. A build that would run past
``--build-budget-s`` stops early: the report then gives the vectors indexed, the measured time
and a clearly labelled linear extrapolation, and searches the partial index (and exact search
over the same partial database).

    OMP_NUM_THREADS=1 python -m benchmarks.search_scaling --out reports/search_scaling
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks import write_report
from benchmarks.latency import (
    latency_summary,
    machine_description,
    recall_at_k,
    set_threads,
    time_per_query,
    top1_agreement,
)
from models.retriever import IndexConfig, ResponseIndex
from training.config import get_retriever_preset

logger = logging.getLogger("benchmarks.search_scaling")


def synthetic_embeddings(n: int, dim: int, *, seed: int, unit_norm: bool = False) -> np.ndarray:
    """``n`` seeded standard-Gaussian rows of ``dim`` floats (scaled to norm 1 with ``unit_norm``)."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    if unit_norm:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def gaussian_like(reference: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """``n`` seeded Gaussian rows with the mean and covariance of the rows of ``reference``."""
    ref = reference.astype(np.float64)
    cov = np.cov(ref, rowvar=False) + 1e-8 * np.eye(ref.shape[1])
    chol = np.linalg.cholesky(cov)
    z = np.random.default_rng(seed).standard_normal((n, ref.shape[1]))
    return np.ascontiguousarray(z @ chol.T + ref.mean(axis=0), dtype=np.float32)


def bundle_embeddings(bundle: Path, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A retriever bundle's stored response embeddings and context embeddings of ``n_queries``
    seeded responses used as single-turn contexts."""
    from models.retriever import RetrievalResponder

    responder = RetrievalResponder.load(bundle, device="cpu")
    picks = np.random.default_rng(seed).choice(len(responder.responses), n_queries, replace=False)
    contexts = [[responder.responses[i]] for i in picks.tolist()]
    queries = np.concatenate(
        [
            responder.embed(responder.encode_contexts(contexts[s : s + 256]))
            for s in range(0, len(contexts), 256)
        ]
    )
    return responder.index.vectors(), queries


def build_with_budget(
    database: np.ndarray, config: IndexConfig, budget_s: float
) -> tuple[ResponseIndex, float]:
    """Add ``database`` in ``add_batch_size`` chunks until done or past ``budget_s``.

    Returns the index (possibly partial: see ``ntotal``) and the seconds spent adding.
    """
    index = ResponseIndex.create(database.shape[1], config)
    index.max_norm = float(np.linalg.norm(database, axis=1).max())  # M over the full set
    step = config.add_batch_size
    started = time.perf_counter()
    for start in range(0, len(database), step):
        index.add(database[start : start + step])
        elapsed = time.perf_counter() - started
        if start // step % 50 == 0:
            logger.info("  %d / %d added, %.0f s", index.ntotal, len(database), elapsed)
        if elapsed > budget_s and index.ntotal < len(database):
            logger.warning("build budget %.0f s spent at %d vectors", budget_s, index.ntotal)
            break
    return index, time.perf_counter() - started


def measure_size(
    n: int,
    *,
    dim: int,
    queries: np.ndarray,
    config: IndexConfig,
    ef_values: list[int],
    make_database: Callable[[int], np.ndarray],
    budget_s: float,
    warmup: int,
    exact_latency_queries: int,
) -> dict[str, Any]:
    """Build time, batch-1 latency and agreement with exact search for one database size."""
    database = make_database(n)
    logger.info("n=%d: building %s (efConstruction %d)", n, config.factory, config.ef_construction)
    index, build_s = build_with_budget(database, config, budget_s)
    indexed = index.ntotal
    complete = indexed == n
    flat = faiss.IndexFlatIP(dim)
    flat.add(database[:indexed])
    del database
    started = time.perf_counter()
    _, exact10 = flat.search(queries, 10)
    exact_batch_s = time.perf_counter() - started
    rows = [q[None, :] for q in queries]
    exact_latency = latency_summary(
        time_per_query(lambda q: flat.search(q, 1), rows[:exact_latency_queries], warmup=warmup)
    )
    per_ef = {}
    for ef in ef_values:
        index.set_ef_search(ef)
        _, approx10 = index.search(queries, 10)
        latency = latency_summary(time_per_query(lambda q: index.search(q, 1), rows, warmup=warmup))
        per_ef[str(ef)] = {
            "top1_agreement": top1_agreement(approx10, exact10),
            "recall@10": recall_at_k(approx10, exact10),
            "latency": latency,
        }
        logger.info("n=%d ef=%d: %s", n, ef, json.dumps(per_ef[str(ef)]))
    out: dict[str, Any] = {
        "n": n,
        "indexed": indexed,
        "complete": complete,
        "build_s": build_s,
        "exact_latency": exact_latency,
        "exact_batch_search_s": exact_batch_s,
        "hnsw": per_ef,
    }
    if not complete:
        # Labelled extrapolation: the measured add rate at this size, applied to the rest. HNSW
        # insertion slows down slowly (log n) as the graph grows, so this is a lower bound.
        out["extrapolated_full_build_s_lower_bound"] = build_s * n / indexed
    return out


def _run_markdown(run: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    ef_main = str(meta["ef_search"])
    lines = [
        f"## {run['name']}: {run['distribution']}",
        "",
        f"efSearch {ef_main}:",
        "",
        "| vectors | build s | HNSW p50 ms | HNSW mean ms | exact p50 ms | exact mean ms | "
        "exact / HNSW (p50) | top-1 agreement | recall@10 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in run["sizes"]:
        h = r["hnsw"][ef_main]
        size = f"{r['indexed']:,}" + ("" if r["complete"] else f" of {r['n']:,} (partial)")
        lines.append(
            f"| {size} | {r['build_s']:.1f} | {h['latency']['p50_ms']:.3f} | "
            f"{h['latency']['mean_ms']:.3f} | {r['exact_latency']['p50_ms']:.3f} | "
            f"{r['exact_latency']['mean_ms']:.3f} | "
            f"{r['exact_latency']['p50_ms'] / h['latency']['p50_ms']:.1f}x | "
            f"{h['top1_agreement']:.4f} | {h['recall@10']:.4f} |"
        )
    for r in run["sizes"]:
        if not r["complete"]:
            lines += [
                "",
                f"**Extrapolation (not measured):** the {r['n']:,}-vector build stopped at the "
                f"{meta['build_budget_s']:.0f} s budget with {r['indexed']:,} vectors indexed; "
                f"at the measured rate the full build would take at least "
                f"{r['extrapolated_full_build_s_lower_bound'] / 60:.1f} min on this thread. "
                "Search numbers in that row are over the partial index.",
            ]
    lines += [
        "",
        "efSearch sweep (same indexes):",
        "",
        "| vectors | efSearch | p50 ms | mean ms | top-1 agreement | recall@10 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in run["sizes"]:
        for ef, h in r["hnsw"].items():
            lines.append(
                f"| {r['indexed']:,} | {ef} | {h['latency']['p50_ms']:.3f} | "
                f"{h['latency']['mean_ms']:.3f} | {h['top1_agreement']:.4f} | "
                f"{h['recall@10']:.4f} |"
            )
    return [*lines, ""]


def to_markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"# Response-index search scaling (synthetic embeddings, d = {meta['dim']})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']['machine']}, {meta['machine']['cpu_count']} CPU cores (one "
        f"kept busy by another job), {meta['threads']} thread(s); faiss "
        f"{meta['machine']['faiss']}; load average at start "
        f"{meta['machine']['load_average_at_start']}.  ",
        f"Index: `ResponseIndex` ({meta['factory']}, inner product with the equal-norm transform, "
        f"efConstruction {meta['ef_construction']}, added {meta['add_batch_size']} at a time); "
        f"exact: `IndexFlatIP`. {meta['queries']} seeded queries; latency at batch 1 after "
        f"{meta['warmup']} warm-ups (HNSW over all queries, exact over "
        f"{meta['exact_latency_queries']}).",
        "",
    ]
    for run in results["runs"]:
        lines += _run_markdown(run, meta)
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [
        f"| {t['target']} | {t['measured']} | {'met' if t['met'] else 'NOT met'} |"
        for t in results["targets"]
    ]
    return "\n".join(lines) + "\n"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    ef = str(results["meta"]["ef_search"])
    out = []
    for run in results["runs"]:
        for r in run["sizes"]:
            h = r["hnsw"][ef]
            label = f"{r['indexed']:,}" + ("" if r["complete"] else " (partial)")
            out.append(
                {
                    "target": f"top-1 agreement with exact >= 0.98 at efSearch {ef}: "
                    f"{run['name']}, {label} vectors",
                    "measured": f"{h['top1_agreement']:.4f}",
                    "met": h["top1_agreement"] >= 0.98,
                }
            )
        for r in run["sizes"]:
            if r["n"] < 1_000_000:
                continue
            p50 = r["hnsw"][ef]["latency"]["p50_ms"]
            out.append(
                {
                    "target": f"search p50 <= 10 ms with a 1M-vector index: {run['name']} "
                    "(search only, batch 1)",
                    "measured": f"{p50:.3f} ms over {r['indexed']:,} vectors"
                    + ("" if r["complete"] else " (partial index)"),
                    "met": p50 <= 10.0 and r["complete"],
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, help="default: the small retriever's embed_dim")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--exact-latency-queries", type=int, default=1000)
    parser.add_argument("--ef", default="64,128,256", help="efSearch values; the last is the main")
    parser.add_argument("--unit-norm", action="store_true", help="rows scaled to norm 1")
    parser.add_argument(
        "--like",
        type=Path,
        help="also measure Gaussian rows with this retriever bundle's embedding mean/covariance",
    )
    parser.add_argument("--build-budget-s", type=float, default=720.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    set_threads(args.threads)
    small = get_retriever_preset("small")
    dim = args.dim or small.model.embed_dim
    config = replace(small.index)
    ef_values = [int(x) for x in args.ef.split(",")]
    # (name, description, queries, database maker)
    plans: list[tuple[str, str, np.ndarray, Callable[[int], np.ndarray]]] = [
        (
            "unit-norm Gaussian" if args.unit_norm else "Gaussian",
            "seeded " + ("unit-norm " if args.unit_norm else "") + "standard Gaussian rows",
            synthetic_embeddings(args.queries, dim, seed=args.seed + 1, unit_norm=args.unit_norm),
            lambda n: synthetic_embeddings(n, dim, seed=args.seed, unit_norm=args.unit_norm),
        )
    ]
    if args.like is not None:
        ref_db, ref_q = bundle_embeddings(args.like, max(args.queries, 5000), args.seed)
        assert ref_db.shape[1] == dim, f"{args.like} embeds to {ref_db.shape[1]}, not {dim}"
        plans.append(
            (
                "real covariance",
                f"seeded Gaussian rows with the mean and covariance of `{args.like}`'s "
                f"{len(ref_db):,} response embeddings; queries with those of its context "
                f"embeddings of {len(ref_q):,} responses (as stand-in contexts)",
                gaussian_like(ref_q, args.queries, seed=args.seed + 1),
                lambda n: gaussian_like(ref_db, n, seed=args.seed),
            )
        )
    meta = {
        "command": "python -m benchmarks.search_scaling " + " ".join(sys.argv[1:]),
        "machine": machine_description(args.threads),
        "threads": args.threads,
        "dim": dim,
        "factory": config.factory,
        "ef_construction": config.ef_construction,
        "add_batch_size": config.add_batch_size,
        "ef_search": ef_values[-1],
        "queries": args.queries,
        "exact_latency_queries": args.exact_latency_queries,
        "warmup": args.warmup,
        "build_budget_s": args.build_budget_s,
        "seed": args.seed,
    }
    results: dict[str, Any] = {"meta": meta, "runs": []}
    for name, description, queries, make_database in plans:
        run: dict[str, Any] = {"name": name, "distribution": description, "sizes": []}
        results["runs"].append(run)
        for n in (int(x) for x in args.sizes.split(",")):
            run["sizes"].append(
                measure_size(
                    n,
                    dim=dim,
                    queries=queries,
                    config=config,
                    ef_values=ef_values,
                    make_database=make_database,
                    budget_s=args.build_budget_s,
                    warmup=args.warmup,
                    exact_latency_queries=args.exact_latency_queries,
                )
            )
            results["targets"] = targets(results)
            # after every size, so a killed run keeps what it measured
            write_report(args.out, results, to_markdown(results))
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

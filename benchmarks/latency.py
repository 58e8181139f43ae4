"""Per-query latency and search agreement, shared by the retrieval benchmarks.

Latency follows the G2R paper (Kim et al. 2021, sec. 4.4): one request at a time, a few warm-up
requests first, then the mean over the timed ones; we add the median (p50) and p90.
"""

from __future__ import annotations

import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

Q = TypeVar("Q")


def fresh_request() -> None:
    """Empty the text-normalisation cache (models/text.py, ``normalize_text``) before a timed
    call, so that each call is timed as a request whose text was never seen: passes over the
    same contexts, and the rows of an interleaved table, would otherwise find it cached."""
    from models.text import normalize_text

    normalize_text.cache_clear()


def time_per_query(fn: Callable[[Q], Any], queries: Sequence[Q], *, warmup: int = 3) -> list[float]:
    """Seconds per call of ``fn(q)`` for every query, after ``warmup`` untimed calls; each call
    a fresh request (:func:`fresh_request`)."""
    assert queries, "need at least one query"
    for i in range(warmup):
        fn(queries[i % len(queries)])
    times = []
    for q in queries:
        fresh_request()
        start = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - start)
    return times


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Mean, p50 and p90 in milliseconds, and the number of timed queries."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    assert ms.size, "no timings"
    return {
        "mean_ms": float(ms.mean()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "n": float(ms.size),
    }


def top1_agreement(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Share of queries whose approximate top-1 id equals the exact top-1 id."""
    a, e = np.asarray(approx_ids), np.asarray(exact_ids)
    assert a.shape[0] == e.shape[0] and a.shape[0] > 0, f"shapes {a.shape} and {e.shape}"
    return float(np.mean(a[:, 0] == e[:, 0]))


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Share of the exact top-k ids that the approximate top-k also returns (k = their width)."""
    hits = [
        len(set(a) & set(e)) for a, e in zip(approx_ids.tolist(), exact_ids.tolist(), strict=True)
    ]
    return float(np.sum(hits) / exact_ids.size)


def machine_description(threads: int) -> dict[str, Any]:
    """What every report states about where its numbers come from."""
    import faiss
    import torch

    return {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def set_threads(threads: int) -> None:
    """One thread count for torch and FAISS (OMP_NUM_THREADS should match, set before start)."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def time_interleaved(
    rows: dict[str, Callable[[Q], Any]],
    queries: Sequence[Q],
    rounds: int,
    *,
    warmup: int = 3,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Seconds per call of every row on every query, timed *interleaved*: for each query each row
    runs once, so that a shared VM's slow minute slows every row alike, in an order shuffled per
    query (seeded), so that every row runs first, last and after every other row about equally
    often: a row that runs right after a heavy one (generation evicting the caches) would
    otherwise pay for it alone (``warmup`` untimed queries first). Each call is a fresh request
    (:func:`fresh_request`)."""
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    order = list(rows.items())
    rng = random.Random(seed)
    for q in queries[:warmup]:
        for _, fn in order:
            fn(q)
    for _ in range(rounds):
        for q in queries:
            rng.shuffle(order)
            for name, fn in order:
                fresh_request()
                start = time.perf_counter()
                fn(q)
                seconds[name].append(time.perf_counter() - start)
    return seconds

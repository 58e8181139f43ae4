"""Bounded closed-loop load on ``python -m service`` over loopback: latency and throughput per cell.

Starts ``python -m service`` itself (a subprocess on a free 127.0.0.1 port) once with micro-batching
on (``DIALOGUE_MAX_BATCH=--max-batch``) and once with it off (``DIALOGUE_MAX_BATCH=1``), waits for
``/readyz``, and for every backend x concurrency cell runs ``--warmup`` untimed requests and then a
fixed number of timed ones from N concurrent workers (asyncio + httpx, closed loop: each worker
sends its next request when the previous one is answered). Every request is
``{"context": [...], "backend": "<b>"}`` with a real DailyDialog test context; the latency is the
client's (send to parsed JSON). Before any server starts, the same bundles are loaded in this
process as the service loads them (output safety filter included) and the worker thread's call,
``backend.infer([context])``, is timed at batch 1 on the same contexts: the HTTP + metrics
overhead is the HTTP p50 at concurrency 1 with batching off minus that in-process p50.

The load generator runs on the same machine (and the same cores) as the server, so it competes
with it for CPU; the report says so. The default request counts (1,000 per retrieval cell, 384 per
generative cell) keep the whole run to a few minutes on 2 CPU cores with the ``small`` bundles.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.service_load --threads 1 \\
        --out reports/service

``--threads`` sets the server's ``DIALOGUE_TORCH_THREADS`` (and OMP_NUM_THREADS) and
``--workers`` its ``DIALOGUE_WORKERS`` (uvicorn processes, each with its own models); both take
lists (``--workers 1,2 --threads 1,2``): every combination is served in turn, the on/off ratios,
overhead and targets are those of the first (the in-process baseline runs with the first thread
count), and a sweep table sets each combination's throughput and p50 against the first's.
``--server-omp-wait-policy`` its OpenMP wait policy (``unset``: as the service runs by default).
Every cell also records each response's latency, errors included (``max_all_ms``) and the count
of each HTTP status, so a deadline (``--request-timeout-s``) can be checked against the worst
latency a client saw (reports/reliability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.load_client import (
    MAX_REQUEST_CHARS,
    MAX_TURN_CHARS,
    CellResult,
    load_contexts,
    make_client,
    percentile,
    run_cell,
    summarize,
)
from benchmarks.service_load_report import (
    TARGET_GENERATIVE_SPEEDUP,
    TARGET_OVERHEAD_P50_MS,
    TARGET_RETRIEVAL_P50_MS,
    _f,
    overheads,
    ratios,
    render_markdown,
    sweep,
    targets,
)
from benchmarks.service_process import (
    BACKEND_NAMES,
    ROOT,
    free_port,
    inprocess_latencies,
    serve,
    server_env,
    server_log_level,
    wait_ready,
)
from training.config import DAILYDIALOG

__all__ = [
    "BACKEND_NAMES",
    "BATCHING_MODES",
    "MAX_REQUEST_CHARS",
    "MAX_TURN_CHARS",
    "ROOT",
    "TARGET_GENERATIVE_SPEEDUP",
    "TARGET_OVERHEAD_P50_MS",
    "TARGET_RETRIEVAL_P50_MS",
    "CellResult",
    "add_load_arguments",
    "build_parser",
    "free_port",
    "inprocess_latencies",
    "load_contexts",
    "main",
    "make_client",
    "overheads",
    "parse_args",
    "percentile",
    "ratios",
    "render_markdown",
    "run",
    "run_cell",
    "serve",
    "server_env",
    "server_log_level",
    "summarize",
    "sweep",
    "targets",
    "wait_ready",
]

BATCHING_MODES = ("on", "off")


def int_list(text: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]`` (positive, unique, in the given order)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected unique positive integers, got {text!r}")
    return values


def choice_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        bad = [v for v in values if v not in allowed]
        if not values or bad or len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(
                f"expected unique values from {', '.join(allowed)}, got {text!r}"
            )
        return values

    return parse


def add_load_arguments(
    parser: argparse.ArgumentParser, backends: Sequence[str] | None = None
) -> None:
    """The bundles, the contexts and the load of every cell: the arguments this benchmark and
    benchmarks/peer.py share (``backends``: the default order they run in)."""
    parser.add_argument("--models-dir", type=Path, default=ROOT / "artifacts")
    # as the service's settings: a name, "auto" (the build's choice), "<prefix>*" or "any"
    parser.add_argument("--generative-bundle", default="auto")
    parser.add_argument("--retrieval-bundle", default="auto")
    parser.add_argument(
        "--data",
        type=Path,
        default=DAILYDIALOG,
        help="DailyDialog release (contexts from test/dialogues_test.txt)",
    )
    parser.add_argument(
        "--backends", type=choice_list(BACKEND_NAMES), default=list(backends or BACKEND_NAMES)
    )
    parser.add_argument("--concurrency", type=int_list, default=[1, 8, 32])
    parser.add_argument(
        "--batching", type=choice_list(BATCHING_MODES), default=list(BATCHING_MODES)
    )
    parser.add_argument("--retrieval-requests", type=int, default=1000, help="timed, per cell")
    parser.add_argument("--generative-requests", type=int, default=384, help="timed, per cell")
    parser.add_argument(
        "--requests-per-cell", type=int, help="timed requests for every cell (overrides both)"
    )
    parser.add_argument(
        "--warmup", type=int, default=16, help="untimed requests per cell (at least one per worker)"
    )
    parser.add_argument("--context-turns", type=int, default=3, help="turns sent per request")
    parser.add_argument("--contexts", type=int, default=512, help="distinct test contexts used")
    parser.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_load_arguments(parser)
    parser.add_argument(
        "--threads",
        type=int_list,
        default=[1],
        help="torch/OpenMP threads, a list to sweep (server: DIALOGUE_TORCH_THREADS; "
        "in-process: the first)",
    )
    parser.add_argument(
        "--workers",
        type=int_list,
        default=[1],
        help="uvicorn worker processes of the server (DIALOGUE_WORKERS), a list to sweep",
    )
    parser.add_argument(
        "--server-omp-wait-policy",
        choices=("unset", "passive", "active"),
        default="unset",
        help="OMP_WAIT_POLICY of the server (unset: libgomp's default, as the service runs)",
    )
    parser.add_argument("--max-batch", type=int, default=16, help="DIALOGUE_MAX_BATCH when on")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="DIALOGUE_MAX_WAIT_MS")
    parser.add_argument(
        "--continuous-batching",
        choices=("auto", "on", "off"),
        default="auto",
        help="DIALOGUE_CONTINUOUS_BATCHING (auto: on for generation when batching is on)",
    )
    parser.add_argument(
        "--generative-rerank",
        type=int,
        help="DIALOGUE_GENERATIVE_RERANK (unset: the service's default); the in-process "
        "baseline calls the generator alone, unranked",
    )
    parser.add_argument(
        "--generative-rerank-below",
        type=int,
        help="DIALOGUE_GENERATIVE_RERANK_BELOW (unset: the service's default)",
    )
    parser.add_argument("--max-queue", type=int, default=4096, help="DIALOGUE_MAX_QUEUE")
    parser.add_argument("--request-timeout-s", type=float, default=300.0)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--server-log-level", default="warning", help="DIALOGUE_LOG_LEVEL")
    parser.add_argument("--startup-timeout-s", type=float, default=180.0)
    parser.add_argument("--skip-inprocess", action="store_true")
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("retrieval_requests", "generative_requests", "requests_per_cell", "contexts"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.max_batch < 2 or args.context_turns < 1:
        parser.error("need --warmup >= 0, --max-batch >= 2, --context-turns >= 1")
    return args


def requests_for(args: argparse.Namespace, backend: str) -> int:
    """Timed requests per cell for ``backend``."""
    if args.requests_per_cell is not None:
        return int(args.requests_per_cell)
    return int(args.retrieval_requests if backend == "retrieval" else args.generative_requests)


# --- main ----------------------------------------------------------------------------------------


def machine(threads: int) -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


async def _run_server_cells(
    args: argparse.Namespace,
    base_url: str,
    batching: str,
    contexts: Sequence[Sequence[str]],
    workers: int = 1,
    threads: int = 1,
) -> list[CellResult]:
    results = []
    for backend in args.backends:
        for conc in args.concurrency:
            async with make_client(base_url, conc) as client:
                cell = await run_cell(
                    client,
                    backend,
                    contexts,
                    concurrency=conc,
                    requests=requests_for(args, backend),
                    warmup=args.warmup,
                    batching=batching,
                )
            cell.workers, cell.threads = workers, threads
            s = cell.summary()
            print(
                f"  {backend:10s} batching={batching:3s} workers={workers} threads={threads} "
                f"c={conc:<3d} p50={_f(s['p50_ms'])} ms "
                f"p99={_f(s['p99_ms'])} ms {_f(s['throughput_rps'])} req/s "
                f"errors={cell.errors}",
                flush=True,
            )
            results.append(cell)
    return results


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    from benchmarks.latency import set_threads
    from service.engine import select_bundle

    first_threads, first_workers = args.threads[0], args.workers[0]
    os.environ["OMP_NUM_THREADS"] = str(first_threads)
    meta_machine = machine(first_threads)  # load average before we add any
    set_threads(first_threads)
    contexts = load_contexts(args.data, args.contexts, args.context_turns, args.seed)
    wanted = {"generative": args.generative_bundle, "retrieval": args.retrieval_bundle}
    warnings: list[str] = []

    inprocess: dict[str, dict[str, Any]] = {}
    model_ids: dict[str, str] = {}
    if not args.skip_inprocess:
        for backend in args.backends:
            path = select_bundle(Path(args.models_dir), backend, wanted[backend])
            if path is None:
                raise SystemExit(f"no {backend} bundle in {args.models_dir}")
            n = requests_for(args, backend)
            times, model_ids[backend] = inprocess_latencies(
                backend,
                Path(args.models_dir),
                wanted[backend],
                contexts,
                n,
                args.warmup,
                args.device,
            )
            inprocess[backend] = {**summarize(times, sum(times)), "bundle": str(path)}
            print(
                f"  {backend:10s} in-process          p50={_f(inprocess[backend]['p50_ms'])} ms "
                f"p99={_f(inprocess[backend]['p99_ms'])} ms",
                flush=True,
            )

    cells: list[CellResult] = []
    for workers in args.workers:
        for threads in args.threads:
            for batching in args.batching:
                max_batch = args.max_batch if batching == "on" else 1
                with serve(args, max_batch, threads, workers) as base_url:
                    cells += asyncio.run(
                        _run_server_cells(args, base_url, batching, contexts, workers, threads)
                    )

    all_summaries = [c.summary() for c in cells]
    # ratios, overhead and targets: the first workers x threads combination
    summaries = [
        s for s in all_summaries if (s["workers"], s["threads"]) == (first_workers, first_threads)
    ]
    for s in all_summaries:
        if s["errors"]:
            warnings.append(
                f"{s['backend']} batching={s['batching']} c={s['concurrency']}: "
                f"{int(s['errors'])} errors, e.g. {s.get('error_samples', [])[:1]}"
            )
        served = model_ids.get(s["backend"])
        if served is not None and s["models"] and s["models"] != [served]:
            warnings.append(
                f"{s['backend']}: the server answered with {s['models']}, in-process used {served}"
            )
    ratio_rows = ratios(summaries)
    overhead_rows = overheads(summaries, inprocess)
    requests_desc = (
        str(args.requests_per_cell)
        if args.requests_per_cell is not None
        else f"{args.retrieval_requests} (retrieval) / {args.generative_requests} (generative)"
    )
    meta = {
        "command": shlex.join(
            [f"OMP_NUM_THREADS={first_threads}", "python", "-m", "benchmarks.service_load", *argv]
        ),
        "machine": meta_machine,
        "threads": first_threads,
        "threads_swept": args.threads,
        "workers_swept": args.workers,
        "device": args.device,
        "generative_bundle": args.generative_bundle,
        "retrieval_bundle": args.retrieval_bundle,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "continuous_batching": args.continuous_batching,
        "generative_rerank": args.generative_rerank,
        "generative_rerank_below": args.generative_rerank_below,
        "max_queue": args.max_queue,
        "request_timeout_s": args.request_timeout_s,
        "server_log_level": server_log_level(args),
        "server_omp_wait_policy": args.server_omp_wait_policy,
        "warmup": args.warmup,
        "requests": requests_desc,
        "contexts": len(contexts),
        "context_turns": args.context_turns,
        "concurrency": args.concurrency,
        "load_generator": "same machine and cores as the server (asyncio + httpx, one process)",
        "model_ids": model_ids,
    }
    return {
        "meta": meta,
        "cells": all_summaries,
        "sweep": sweep(all_summaries),
        "inprocess": inprocess,
        "ratios": ratio_rows,
        "overhead": overhead_rows,
        "targets": targets(summaries, ratio_rows, overhead_rows),
        "warnings": warnings,
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.perf_counter()
    report = run(args, argv)
    report["meta"]["total_wall_s"] = round(time.perf_counter() - started, 1)
    md = render_markdown(report)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(
            json.dumps(_finite(report), indent=2, default=_jsonable, allow_nan=False) + "\n"
        )
        out.with_suffix(".md").write_text(md)
    return 0


def _finite(value: Any) -> Any:
    """NaN -> None everywhere (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, set):
        return sorted(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


if __name__ == "__main__":
    sys.exit(main())

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
import contextlib
import itertools
import json
import math
import os
import platform
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from training.eval.tables import markdown_table as table

ROOT = Path(__file__).resolve().parents[1]
BACKEND_NAMES = ("retrieval", "generative")
BATCHING_MODES = ("on", "off")
# Service limits (service/settings.py defaults): contexts beyond them would be refused with 413.
MAX_TURN_CHARS = 1000
MAX_REQUEST_CHARS = 8000

TARGET_RETRIEVAL_P50_MS = 15.0
TARGET_GENERATIVE_SPEEDUP = 3.0
TARGET_OVERHEAD_P50_MS = 2.0


# --- pure parts: statistics, argument parsing ----------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics
    (numpy's default method); raises ValueError on an empty sequence or q outside [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def summarize(latencies_s: Sequence[float], wall_s: float, errors: int = 0) -> dict[str, float]:
    """p50/p99/mean latency in ms over the successful requests, throughput (successful requests
    per second of wall time) and the error count. Latency fields are NaN when nothing succeeded."""
    n = len(latencies_s)
    ms = [s * 1000.0 for s in latencies_s]
    nan = float("nan")
    return {
        "n": float(n),
        "errors": float(errors),
        "p50_ms": percentile(ms, 50) if ms else nan,
        "p99_ms": percentile(ms, 99) if ms else nan,
        "mean_ms": sum(ms) / n if ms else nan,
        "throughput_rps": n / wall_s if wall_s > 0 else nan,
    }


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=ROOT / "artifacts")
    # as the service's settings: a name, "auto" (the build's choice), "<prefix>*" or "any"
    parser.add_argument("--generative-bundle", default="auto")
    parser.add_argument("--retrieval-bundle", default="auto")
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "dailydialog",
        help="DailyDialog release (contexts from test/dialogues_test.txt)",
    )
    parser.add_argument("--backends", type=choice_list(BACKEND_NAMES), default=list(BACKEND_NAMES))
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


# --- contexts ------------------------------------------------------------------------------------


def load_contexts(data_dir: Path, count: int, turns: int, seed: int) -> list[list[str]]:
    """``count`` DailyDialog test contexts (up to ``turns`` turns each, within the service's
    default size limits), a seeded sample in a seeded order."""
    from training.core.data import load_dailydialog

    examples = load_dailydialog(data_dir, "test", max_context_turns=turns)
    contexts = [
        list(ex.context)
        for ex in examples
        if all(len(t) <= MAX_TURN_CHARS for t in ex.context)
        and sum(len(t) for t in ex.context) <= MAX_REQUEST_CHARS
    ]
    if not contexts:
        raise SystemExit(f"no usable contexts in {data_dir}/test")
    rng = random.Random(seed)
    return rng.sample(contexts, min(count, len(contexts)))


# --- the load generator --------------------------------------------------------------------------


@dataclass
class CellResult:
    backend: str
    batching: str
    concurrency: int
    requests: int
    workers: int = 1  # the server's DIALOGUE_WORKERS
    threads: int = 1  # the server's DIALOGUE_TORCH_THREADS
    latencies_s: list[float] = field(default_factory=list)
    all_latencies_s: list[float] = field(default_factory=list)  # every response, errors too
    statuses: dict[str, int] = field(default_factory=dict)  # HTTP status (or exception) -> count
    server_ms: list[float] = field(default_factory=list)  # the service's own latency_ms
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": self.backend,
            "batching": self.batching,
            "concurrency": self.concurrency,
            "workers": self.workers,
            "threads": self.threads,
            "requests": self.requests,
            "wall_s": round(self.wall_s, 4),
            **summarize(self.latencies_s, self.wall_s, self.errors),
            "server_p50_ms": percentile(self.server_ms, 50) if self.server_ms else float("nan"),
            "max_all_ms": max(self.all_latencies_s) * 1000
            if self.all_latencies_s
            else float("nan"),
            "statuses": dict(sorted(self.statuses.items())),
            "models": sorted(self.models),
        }
        if self.error_samples:
            out["error_samples"] = self.error_samples
        return out


async def _drive(
    client: httpx.AsyncClient,
    backend: str,
    contexts: Sequence[Sequence[str]],
    concurrency: int,
    count: int,
    result: CellResult | None,
    options: dict[str, Any] | None = None,
) -> float:
    """``count`` requests from ``concurrency`` closed-loop workers; returns the wall seconds.
    Records into ``result`` when given (None = warm-up). ``options`` go into every request."""
    counter = itertools.count()

    async def worker() -> None:
        while (i := next(counter)) < count:
            body: dict[str, Any] = {
                "context": list(contexts[i % len(contexts)]),
                "backend": backend,
            }
            if options:
                body["options"] = options
            started = time.perf_counter()
            problem: str | None = None
            payload: dict[str, Any] = {}
            status = "exception"
            try:
                resp = await client.post("/respond", json=body)
                status = str(resp.status_code)
                payload = resp.json()
                elapsed = time.perf_counter() - started
                if resp.status_code != 200:
                    problem = f"HTTP {resp.status_code}: {payload.get('error', payload)}"
                elif payload.get("backend") != backend:
                    problem = f"answered by {payload.get('backend')!r}, not {backend!r}"
            except (httpx.HTTPError, ValueError) as exc:
                elapsed = time.perf_counter() - started
                problem = f"{type(exc).__name__}: {exc}"
            if result is None:
                continue
            result.all_latencies_s.append(elapsed)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if problem is not None:
                result.errors += 1
                if len(result.error_samples) < 5:
                    result.error_samples.append(problem)
                continue
            result.latencies_s.append(elapsed)
            result.server_ms.append(float(payload.get("latency_ms", float("nan"))))
            result.models.add(str(payload.get("model")))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def make_client(base_url: str, concurrency: int, **kwargs: Any) -> httpx.AsyncClient:
    """A client with one keep-alive connection per worker; no proxies (loopback)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(
        base_url=base_url,
        limits=limits,
        timeout=httpx.Timeout(600.0),
        trust_env=False,
        **kwargs,
    )


async def run_cell(
    client: httpx.AsyncClient,
    backend: str,
    contexts: Sequence[Sequence[str]],
    *,
    concurrency: int,
    requests: int,
    warmup: int,
    batching: str = "on",
    options: dict[str, Any] | None = None,
) -> CellResult:
    """One cell: ``warmup`` untimed requests (at least one per worker), then ``requests`` timed."""
    if warmup:
        await _drive(
            client, backend, contexts, concurrency, max(warmup, concurrency), None, options
        )
    result = CellResult(backend, batching, concurrency, requests)
    result.wall_s = await _drive(client, backend, contexts, concurrency, requests, result, options)
    return result


# --- the server subprocess -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(
    args: argparse.Namespace,
    port: int,
    max_batch: int,
    threads: int | None = None,
    workers: int | None = None,
) -> dict[str, str]:
    """The environment of ``python -m service``: ours without DIALOGUE_* and thread settings,
    plus the benchmark's (``threads`` / ``workers``: the first of their lists by default)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DIALOGUE_")
        and k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
    }
    threads_text = str(threads if threads is not None else args.threads[0])
    workers = workers if workers is not None else args.workers[0]
    if args.server_omp_wait_policy != "unset":
        env["OMP_WAIT_POLICY"] = args.server_omp_wait_policy.upper()
    env.update(
        {
            "OMP_NUM_THREADS": threads_text,
            "MKL_NUM_THREADS": threads_text,
            "DIALOGUE_TORCH_THREADS": threads_text,
            "DIALOGUE_WORKERS": str(workers),
            "DIALOGUE_MODELS_DIR": str(Path(args.models_dir).resolve()),
            "DIALOGUE_GENERATIVE_BUNDLE": args.generative_bundle,
            "DIALOGUE_RETRIEVAL_BUNDLE": args.retrieval_bundle,
            "DIALOGUE_HOST": "127.0.0.1",
            "DIALOGUE_PORT": str(port),
            "DIALOGUE_DEVICE": args.device,
            "DIALOGUE_MAX_BATCH": str(max_batch),
            "DIALOGUE_MAX_WAIT_MS": str(args.max_wait_ms),
            "DIALOGUE_CONTINUOUS_BATCHING": getattr(args, "continuous_batching", "auto"),
            "DIALOGUE_MAX_QUEUE": str(args.max_queue),
            "DIALOGUE_REQUEST_TIMEOUT_S": str(args.request_timeout_s),
            "DIALOGUE_FALLBACK": "off",  # a failure must count as an error, not as the other arm
            "DIALOGUE_LOG_LEVEL": server_log_level(args),
        }
    )
    return env


def server_log_level(args: argparse.Namespace) -> str:
    """The server's LOG_LEVEL: ``--server-log-level``, but at least ``info`` when a worker count
    above 1 is swept, since readiness is then each worker's "ready:" line (nothing is logged per
    request at info: the access log is off)."""
    if max(args.workers) > 1 and args.server_log_level.lower() in ("warning", "error", "critical"):
        return "info"
    return str(args.server_log_level)


@contextlib.contextmanager
def serve(
    args: argparse.Namespace, max_batch: int, threads: int | None = None, workers: int = 1
) -> Iterator[str]:
    """Run ``python -m service`` until the block ends (SIGTERM); yields its base URL once ready
    (every worker, when there are several)."""
    port = free_port()
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=server_env(args, port, max_batch, threads, workers),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, base_url, args.startup_timeout_s, log, workers=workers)
            yield base_url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_ready(
    proc: subprocess.Popen[Any], base_url: str, timeout_s: float, log: Any, workers: int = 1
) -> None:
    """Until /readyz answers 200 and, with several workers, each has logged "ready:"."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base_url, trust_env=False, timeout=5.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/readyz").status_code == 200 and (
                    workers <= 1 or _ready_lines(log) >= workers
                ):
                    return
            time.sleep(0.2)
    log.seek(0)
    tail = log.read()[-4000:]
    state = f"exited with {proc.returncode}" if proc.poll() is not None else "not ready in time"
    raise RuntimeError(f"python -m service {state}; its output:\n{tail}")


def _ready_lines(log: Any) -> int:
    """How many workers have logged their "ready:" line (service/app.py) so far."""
    # pread: the server writes through a descriptor that shares this file's offset
    fd = log.fileno()
    text = os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")
    return sum(1 for line in text.splitlines() if " ready: " in line)


# --- in-process baseline -------------------------------------------------------------------------


def inprocess_latencies(
    backend: str,
    models_dir: Path,
    wanted: str,
    contexts: Sequence[Sequence[str]],
    requests: int,
    warmup: int,
    device: str = "cpu",
) -> tuple[list[float], str]:
    """Seconds per batch-1 model call of ``backend``, exactly what the service's worker thread
    runs for one request: the backend loaded as the service loads it (``load_serving``, default
    settings: the output safety filter included) and its ``infer([context], [default options])``
    timed on the first ``requests`` contexts in the order the load generator sends them; also the
    bundle id, to check the server served the same model. What HTTP adds on top is the queue
    hand-off, validation, routing, metrics and the HTTP exchange itself."""
    from service.bundles import load_serving
    from service.metrics import ServiceMetrics
    from service.settings import Settings

    values: dict[str, Any] = {
        f"{b}_bundle": wanted if b == backend else "off" for b in BACKEND_NAMES
    }
    values["device"] = device
    settings = Settings(models_dir=models_dir, **values)
    serving = load_serving(settings, ServiceMetrics())
    [loaded] = serving.unique_backends()
    params = loaded.prepare(None)
    try:
        for i in range(warmup):
            loaded.infer([list(contexts[i % len(contexts)])], [params])
        times = []
        for i in range(requests):
            ctx = list(contexts[i % len(contexts)])
            started = time.perf_counter()
            loaded.infer([ctx], [params])
            times.append(time.perf_counter() - started)
    finally:
        loaded.close()
    return times, loaded.model_id


# --- report ---------------------------------------------------------------------------------------


def _cell(cells: Sequence[dict[str, Any]], backend: str, batching: str, conc: int) -> Any:
    for c in cells:
        if (c["backend"], c["batching"], c["concurrency"]) == (backend, batching, conc):
            return c
    return None


def ratios(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batching on/off throughput and p50 ratios for every backend x concurrency with both."""
    out = []
    for backend in BACKEND_NAMES:
        concs = sorted({c["concurrency"] for c in cells if c["backend"] == backend})
        for conc in concs:
            on, off = _cell(cells, backend, "on", conc), _cell(cells, backend, "off", conc)
            if on is None or off is None:
                continue
            out.append(
                {
                    "backend": backend,
                    "concurrency": conc,
                    "throughput_on_rps": on["throughput_rps"],
                    "throughput_off_rps": off["throughput_rps"],
                    "throughput_ratio_on_off": on["throughput_rps"] / off["throughput_rps"],
                    "p50_ratio_on_off": on["p50_ms"] / off["p50_ms"],
                }
            )
    return out


def sweep(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every workers x threads combination against the first one measured, cell by cell
    (backend, batching, concurrency): throughput and p50 ratios. Empty for one combination."""
    configs = list(dict.fromkeys((c.get("workers", 1), c.get("threads", 1)) for c in cells))
    if len(configs) < 2:
        return []
    base_config = configs[0]
    by_key = {
        (c["backend"], c["batching"], c["concurrency"], c.get("workers", 1), c.get("threads", 1)): c
        for c in cells
    }
    out = []
    for c in cells:
        config = (c.get("workers", 1), c.get("threads", 1))
        base = by_key.get((c["backend"], c["batching"], c["concurrency"], *base_config))
        if base is None:
            continue
        out.append(
            {
                "backend": c["backend"],
                "batching": c["batching"],
                "concurrency": c["concurrency"],
                "workers": config[0],
                "threads": config[1],
                "throughput_rps": c["throughput_rps"],
                "p50_ms": c["p50_ms"],
                "throughput_vs_first": c["throughput_rps"] / base["throughput_rps"]
                if base["throughput_rps"]
                else float("nan"),
                "p50_vs_first": c["p50_ms"] / base["p50_ms"] if base["p50_ms"] else float("nan"),
            }
        )
    out.sort(
        key=lambda r: (r["backend"], r["batching"], r["concurrency"], r["workers"], r["threads"])
    )
    return out


def overheads(
    cells: Sequence[dict[str, Any]], inprocess: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """HTTP p50 (concurrency 1, batching off) against the in-process p50, per backend."""
    out = []
    for backend, base in inprocess.items():
        http = _cell(cells, backend, "off", 1)
        if http is None:
            continue
        out.append(
            {
                "backend": backend,
                "http_p50_ms": http["p50_ms"],
                "server_p50_ms": http["server_p50_ms"],
                "inprocess_p50_ms": base["p50_ms"],
                "overhead_p50_ms": http["p50_ms"] - base["p50_ms"],
                "http_over_inprocess": http["p50_ms"] / base["p50_ms"],
            }
        )
    return out


def targets(
    cells: Sequence[dict[str, Any]],
    ratio_rows: Sequence[dict[str, Any]],
    overhead_rows: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The issue's three goals, each met / not met / not measured, with the measured number."""

    def row(goal: str, value: float | None, limit: float, higher_is_better: bool) -> dict[str, Any]:
        if value is None or math.isnan(value):
            status = "not measured"
        elif higher_is_better:
            status = "met" if value >= limit else "not met"
        else:
            status = "met" if value <= limit else "not met"
        return {"goal": goal, "target": limit, "measured": value, "status": status}

    out = []
    on = _cell(cells, "retrieval", "on", 1)
    out.append(
        row(
            "retrieval p50 over HTTP, ms (concurrency 1, batching on = service defaults)",
            on["p50_ms"] if on else None,
            TARGET_RETRIEVAL_P50_MS,
            higher_is_better=False,
        )
    )
    off = _cell(cells, "retrieval", "off", 1)
    out.append(
        row(
            "retrieval p50 over HTTP, ms (concurrency 1, batching off)",
            off["p50_ms"] if off else None,
            TARGET_RETRIEVAL_P50_MS,
            higher_is_better=False,
        )
    )
    speedup = next(
        (
            r["throughput_ratio_on_off"]
            for r in ratio_rows
            if r["backend"] == "generative" and r["concurrency"] == 32
        ),
        None,
    )
    out.append(
        row(
            "generative throughput at concurrency 32, batching on / off",
            speedup,
            TARGET_GENERATIVE_SPEEDUP,
            higher_is_better=True,
        )
    )
    for backend in BACKEND_NAMES:
        o = next((r for r in overhead_rows if r["backend"] == backend), None)
        out.append(
            row(
                f"{backend}: HTTP + metrics overhead, p50 ms (HTTP c=1 off - in-process)",
                o["overhead_p50_ms"] if o else None,
                TARGET_OVERHEAD_P50_MS,
                higher_is_better=False,
            )
        )
    return out


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return table(headers, [[_f(v) for v in r] for r in rows], align="l" * len(headers)).split("\n")


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "# Service load: latency and throughput over HTTP",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs, "
        f"{meta['threads']} torch/OpenMP thread(s) in the server and in-process (swept: "
        f"threads {meta.get('threads_swept', [meta['threads']])}, uvicorn workers "
        f"{meta.get('workers_swept', [1])}), load average "
        f"at start {meta['machine']['load_average_at_start']}, Python "
        f"{meta['machine']['python']}, torch {meta['machine']['torch']}; whole run "
        f"{meta.get('total_wall_s', '-')} s.",
        "",
        f"Server: `python -m service` on 127.0.0.1, device {meta['device']}, bundles "
        f"`{meta['generative_bundle']}` and `{meta['retrieval_bundle']}`; micro-batching on = "
        f"MAX_BATCH={meta['max_batch']}, off = MAX_BATCH=1; MAX_WAIT_MS={meta['max_wait_ms']}, "
        f"CONTINUOUS_BATCHING={meta.get('continuous_batching', 'auto')}, "
        f"MAX_QUEUE={meta['max_queue']}, REQUEST_TIMEOUT_S={meta['request_timeout_s']}, "
        f"FALLBACK=off, LOG_LEVEL={meta['server_log_level']}, OMP_WAIT_POLICY "
        f"{meta.get('server_omp_wait_policy', 'unset')}.",
        "",
        f"Load: closed loop, N workers each with its own keep-alive connection (httpx), "
        f"{meta['warmup']} untimed warm-up requests per cell (at least one per worker), then "
        f"{meta['requests']} timed requests per cell; {meta['contexts']} DailyDialog test "
        f"contexts of up to {meta['context_turns']} turns, cycled. Latency is the client's "
        "(request sent to JSON parsed); throughput is successful requests per wall second. "
        "**The load generator shares the CPU cores with the server**, so the numbers include its "
        "cost and contention (more so at high concurrency); p99 over a few dozen requests is "
        "close to the maximum.",
        "",
        "## Cells",
        "",
    ]
    lines += _table(
        [
            "backend",
            "batching",
            "workers",
            "threads",
            "concurrency",
            "requests",
            "errors",
            "p50 ms",
            "p99 ms",
            "mean ms",
            "server p50 ms",
            "req/s",
            "max ms (all)",
            "statuses",
        ],
        [
            [
                c["backend"],
                c["batching"],
                c.get("workers", 1),
                c.get("threads", 1),
                c["concurrency"],
                int(c["n"]),
                int(c["errors"]),
                c["p50_ms"],
                c["p99_ms"],
                c["mean_ms"],
                c["server_p50_ms"],
                c["throughput_rps"],
                c.get("max_all_ms"),
                " ".join(f"{k}:{v}" for k, v in c.get("statuses", {}).items()) or "-",
            ]
            for c in report["cells"]
        ],
    )
    lines += [
        "",
        "server p50 = the service's own `latency_ms` (queue + model call, no HTTP). max ms (all) "
        "= the slowest response of the cell, errors (429, 504) included.",
        "",
        "## Micro-batching on vs off",
        "",
    ]
    lines += _table(
        ["backend", "concurrency", "req/s on", "req/s off", "throughput on/off", "p50 on/off"],
        [
            [
                r["backend"],
                r["concurrency"],
                r["throughput_on_rps"],
                r["throughput_off_rps"],
                r["throughput_ratio_on_off"],
                r["p50_ratio_on_off"],
            ]
            for r in report["ratios"]
        ],
    )
    if report.get("sweep"):
        lines += [
            "",
            "## Threads and workers",
            "",
            "Each workers x threads combination against the first one (the on/off ratios, "
            "overhead and targets below are the first's); choose the one with the best "
            "throughput at an unchanged p50.",
            "",
        ]
        lines += _table(
            [
                "backend",
                "batching",
                "concurrency",
                "workers",
                "threads",
                "req/s",
                "p50 ms",
                "throughput / first",
                "p50 / first",
            ],
            [
                [
                    r["backend"],
                    r["batching"],
                    r["concurrency"],
                    r["workers"],
                    r["threads"],
                    r["throughput_rps"],
                    r["p50_ms"],
                    r["throughput_vs_first"],
                    r["p50_vs_first"],
                ]
                for r in report["sweep"]
            ],
        )
    lines += [
        "",
        "## HTTP + metrics overhead vs in-process",
        "",
        "In-process = the worker thread's batch-1 call (`backend.infer`: the model and the output "
        "safety filter, loaded as the service loads them); overhead = HTTP p50 - in-process p50 "
        "(queue hand-off, validation, routing, metrics, the HTTP exchange and the client).",
        "",
    ]
    lines += _table(
        ["backend", "in-process p50 ms", "in-process p99 ms", "n"],
        [[b, s["p50_ms"], s["p99_ms"], int(s["n"])] for b, s in report["inprocess"].items()],
    )
    lines += [""]
    lines += _table(
        [
            "backend",
            "HTTP p50 ms (c=1, off)",
            "server p50 ms",
            "in-process p50 ms",
            "overhead ms",
            "HTTP / in-process",
        ],
        [
            [
                r["backend"],
                r["http_p50_ms"],
                r["server_p50_ms"],
                r["inprocess_p50_ms"],
                r["overhead_p50_ms"],
                r["http_over_inprocess"],
            ]
            for r in report["overhead"]
        ],
    )
    lines += ["", "## Targets", ""]
    lines += _table(
        ["goal", "target", "measured", "status"],
        [[t["goal"], t["target"], t["measured"], t["status"]] for t in report["targets"]],
    )
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


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

"""``python -m service`` as a subprocess for the benchmarks (environment, readiness, shutdown), and
the in-process baseline: the worker thread's own call, loaded as the service loads it."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BACKEND_NAMES = ("retrieval", "generative")


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
    if getattr(args, "generative_rerank", None) is not None:
        env["DIALOGUE_GENERATIVE_RERANK"] = str(args.generative_rerank)
    if getattr(args, "generative_rerank_below", None) is not None:
        env["DIALOGUE_GENERATIVE_RERANK_BELOW"] = str(args.generative_rerank_below)
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

"""The closed-loop load generator of the service benchmarks: DailyDialog test contexts as requests,
N workers on keep-alive connections (asyncio + httpx), each sending its next request when the
previous one is answered, and the latency statistics of a cell. ``benchmarks/service_load.py``
drives it; ``peer.py``, ``byo_generator.py``, ``profile_http.py`` and ``http_overhead.py`` reuse it."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# Service limits (service/settings.py defaults): contexts beyond them would be refused with 413.
MAX_TURN_CHARS = 1000
MAX_REQUEST_CHARS = 8000


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

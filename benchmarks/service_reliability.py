"""Reliability figures of ``python -m service`` (issue 12; reports/reliability.md), each against a
real server started here (a subprocess on a free 127.0.0.1 port, default settings unless said):

- ``deadline``: N concurrent closed-loop clients on one backend (FALLBACK on, the default), each
  on its own connection and waiting Retry-After after a 429; every response's latency and status,
  the slowest against REQUEST_TIMEOUT_S.
- ``poison``: 16 normal clients plus one poison request every 50 ms (a lone surrogate in a turn,
  a 1e-39 temperature with sampling and with greedy decoding): how many normal requests fail.
- ``soak``: mixed traffic for a fixed time (A/B routed and explicit backends, decoding options,
  invalid and poison requests); the server's RSS sampled throughout.
- ``chunked``: a 200 MiB body without Content-Length, and one declaring 200 MiB: time to the
  413, bytes the client got to send, the server's RSS before and after.

    .venv/bin/python -m benchmarks.service_reliability deadline --backend generative \\
        --concurrency 128 --requests 1500 --out reports/reliability_deadline_generative
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.service_load import free_port, load_contexts, percentile, wait_ready
from training.config import DAILYDIALOG

ROOT = Path(__file__).resolve().parents[1]
POISON_BODIES = (
    # a lone UTF-16 surrogate in a turn (raw JSON: json.dumps would refuse to write it)
    b'{"context": ["hi \\ud800 there"], "backend": "%s"}',
    b'{"context": ["hello"], "backend": "%s", "options": {"strategy": "sample", '
    b'"temperature": 1e-39}}',
    b'{"context": ["hello"], "backend": "%s", "options": {"strategy": "greedy", '
    b'"temperature": 1e-39}}',
)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def running_service(
    models_dir: Path, env: dict[str, str] | None = None, startup_timeout_s: float = 180.0
) -> Iterator[tuple[str, int]]:
    """``python -m service`` with ``models_dir`` and the given DIALOGUE_* overrides (defaults
    otherwise); yields (base URL, pid) once /readyz answers, SIGTERMs it at the end."""
    port = free_port()
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOGUE_")}
    server_env.pop("OMP_WAIT_POLICY", None)  # as the service runs by default
    server_env.update(
        {
            "DIALOGUE_MODELS_DIR": str(Path(models_dir).resolve()),
            "DIALOGUE_HOST": "127.0.0.1",
            "DIALOGUE_PORT": str(port),
            "DIALOGUE_LOG_LEVEL": "error",
        }
    )
    server_env.update(env or {})
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=server_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(proc, base_url, startup_timeout_s, log)
            yield base_url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.seek(0)
            tracebacks = log.read().count("Traceback")
            if tracebacks:
                print(f"warning: the server logged {tracebacks} tracebacks", file=sys.stderr)


def _client(base_url: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=httpx.Timeout(600.0), trust_env=False
    )


async def _post(client: httpx.AsyncClient, body: bytes) -> tuple[str, float, dict[str, Any]]:
    started = time.perf_counter()
    try:
        resp = await client.post(
            "/respond", content=body, headers={"content-type": "application/json"}
        )
        payload = resp.json()
        return str(resp.status_code), time.perf_counter() - started, payload
    except (httpx.HTTPError, ValueError) as exc:
        return type(exc).__name__, time.perf_counter() - started, {}


def _machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# --- deadline -------------------------------------------------------------------------------------


async def _raw_post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
) -> tuple[str, float, dict[str, Any], dict[bytes, bytes]]:
    """One POST /respond on a kept-alive connection, as bytes: (status, seconds, JSON, headers).
    A lean client: httpx's per-request work, 128-fold in one process on a busy CPU, delays
    requests before they are sent by more than the service takes to answer them."""
    request = (
        b"POST /respond HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    started = time.perf_counter()
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        if value
    }
    payload = await reader.readexactly(int(headers[b"content-length"]))
    elapsed = time.perf_counter() - started
    return head[9:12].decode(), elapsed, json.loads(payload), headers


async def _deadline(
    base_url: str,
    backend: str,
    contexts: Sequence[Sequence[str]],
    concurrency: int,
    count: int,
    client: str = "raw",
) -> dict[str, Any]:
    """``count`` requests from ``concurrency`` closed-loop clients, each on its own connection.
    With ``client="raw"`` a client waits Retry-After after a 429, as the service asks; with
    ``client="httpx"`` it does not (the load benchmark's client, kept for comparison)."""
    counter = itertools.count()
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    answered_by: Counter[str] = Counter()
    server_ms: list[float] = []  # the service's own latency_ms of its 200s
    client_lag_ms: list[float] = []  # how late this process's own event loop wakes
    finished = asyncio.Event()
    host, port = base_url.removeprefix("http://").rsplit(":", 1)

    def record(status: str, elapsed: float, payload: dict[str, Any]) -> None:
        latencies.append(elapsed)
        statuses[status] += 1
        if status == "200":
            answered_by[payload.get("backend", "?")] += 1
            server_ms.append(float(payload["latency_ms"]))

    def body(i: int) -> bytes:
        request: dict[str, Any] = {"context": list(contexts[i % len(contexts)])}
        if backend == "ab":  # A/B routed: both backends busy at once
            request["session_id"] = f"s{i % 997}"
        else:
            request["backend"] = backend
        return json.dumps(request).encode()

    async def raw_worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while (i := next(counter)) < count:
                status, elapsed, payload, headers = await _raw_post(reader, writer, body(i))
                record(status, elapsed, payload)
                if status == "429":
                    await asyncio.sleep(float(headers.get(b"retry-after", b"1")))
        finally:
            writer.close()

    async def lag() -> None:
        while not finished.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.05)
            client_lag_ms.append((time.perf_counter() - started - 0.05) * 1000)

    lag_task = asyncio.create_task(lag())
    started = time.perf_counter()
    if client == "raw":
        await asyncio.gather(*(raw_worker() for _ in range(concurrency)))
    else:
        async with _client(base_url, concurrency) as http:

            async def httpx_worker() -> None:
                while (i := next(counter)) < count:
                    record(*await _post(http, body(i)))

            await asyncio.gather(*(httpx_worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    finished.set()
    await lag_task
    ms = [x * 1000 for x in latencies]
    return {
        "client": client,
        "requests": len(latencies),
        "wall_s": round(wall, 1),
        "statuses": dict(sorted(statuses.items())),
        "answered_by": dict(answered_by),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1),
        "server_p50_ms": round(percentile(server_ms, 50), 1) if server_ms else None,
        "server_max_ms": round(max(server_ms), 1) if server_ms else None,
        "client_loop_lag_p50_ms": round(percentile(client_lag_ms, 50), 1),
        "client_loop_lag_max_ms": round(max(client_lag_ms), 1),
    }


def longest_stage(exposition: str, stages: Sequence[str]) -> float | None:
    """An upper bound of the longest model call: per batch, the stages of one call run one after
    another, so their slowest histogram buckets (``le``) add up to at most it."""
    total = 0.0
    found = False
    for stage in stages:
        counts: list[tuple[float, float]] = []
        prefix = "dialogue_stage_duration_seconds_bucket{"
        for line in exposition.splitlines():
            if line.startswith(prefix) and f'stage="{stage}"' in line:
                le = line.split('le="', 1)[1].split('"', 1)[0]
                counts.append((float(le), float(line.rsplit(" ", 1)[1])))
        if not counts or counts[-1][1] == 0:
            continue
        found = True
        below = [le for le, n in counts if n < counts[-1][1]]  # buckets missing some calls
        bounds = sorted(le for le, _ in counts)
        total += bounds[len(below)] if len(below) < len(bounds) else bounds[-1]
    return round(total, 3) if found else None


def run_deadline(args: argparse.Namespace) -> dict[str, Any]:
    contexts = load_contexts(args.data, 512, 3, seed=0)
    env = {"DIALOGUE_REQUEST_TIMEOUT_S": str(args.request_timeout_s), **args.server_env}
    machine = _machine()
    with running_service(args.models_dir, env) as (base_url, _pid):
        result = asyncio.run(
            _deadline(
                base_url, args.backend, contexts, args.concurrency, args.requests, args.client
            )
        )
        with httpx.Client(base_url=base_url, trust_env=False) as client:
            result["longest_model_call_s_at_most"] = longest_stage(
                client.get("/metrics").text, ("tokenize", "encode", "search", "generate", "safety")
            )
    deadline_ms = args.request_timeout_s * 1000
    return {
        "figure": "deadline",
        "backend": args.backend,
        "concurrency": args.concurrency,
        "request_timeout_s": args.request_timeout_s,
        "server_env": args.server_env,
        "settings": "service defaults otherwise (FALLBACK on, MAX_QUEUE 64, MAX_BATCH 16)",
        **result,
        "max_over_deadline_ms": round(result["max_ms"] - deadline_ms, 1),
        "machine_at_start": machine,
        "machine_at_end": _machine(),
    }


# --- poison --------------------------------------------------------------------------------------


async def _poison(
    base_url: str, backend: str, contexts: Sequence[Sequence[str]], normal: int, every_s: float
) -> dict[str, Any]:
    counter = itertools.count()
    normal_statuses: Counter[str] = Counter()
    poison_statuses: Counter[str] = Counter()
    done = asyncio.Event()
    async with _client(base_url, 17) as client:

        async def worker() -> None:
            while (i := next(counter)) < normal:
                body = json.dumps(
                    {"context": list(contexts[i % len(contexts)]), "backend": backend}
                ).encode()
                status, _, _ = await _post(client, body)
                normal_statuses[status] += 1

        async def poisoner() -> None:
            for kind in itertools.cycle(range(len(POISON_BODIES))):
                if done.is_set():
                    return
                status, _, _ = await _post(client, POISON_BODIES[kind] % backend.encode())
                poison_statuses[f"kind{kind}:{status}"] += 1
                await asyncio.sleep(every_s)

        poison_task = asyncio.create_task(poisoner())
        await asyncio.gather(*(worker() for _ in range(16)))
        done.set()
        await poison_task
    return {
        "normal_requests": sum(normal_statuses.values()),
        "normal_statuses": dict(sorted(normal_statuses.items())),
        "normal_failed": sum(v for k, v in normal_statuses.items() if k != "200"),
        "poison_requests": sum(poison_statuses.values()),
        "poison_statuses": dict(sorted(poison_statuses.items())),
    }


def run_poison(args: argparse.Namespace) -> dict[str, Any]:
    contexts = load_contexts(args.data, 512, 3, seed=0)
    machine = _machine()
    out: dict[str, Any] = {
        "figure": "poison",
        "setup": "16 closed-loop normal clients + 1 poison request every 50 ms (kind0: lone "
        "surrogate in a turn; kind1: temperature 1e-39 with sampling; kind2: temperature 1e-39 "
        "with greedy), service defaults",
        "backends": {},
        "machine_at_start": machine,
    }
    with running_service(args.models_dir) as (base_url, _pid):
        for backend in args.backends:
            out["backends"][backend] = asyncio.run(
                _poison(base_url, backend, contexts, args.requests, 0.05)
            )
    out["machine_at_end"] = _machine()
    return out


# --- soak ----------------------------------------------------------------------------------------


def _soak_body(rng: random.Random, contexts: Sequence[Sequence[str]], i: int) -> bytes:
    """One request of the soak mix: mostly A/B routed conversations, then explicit backends with
    options, invalid requests and poison."""
    context = list(contexts[i % len(contexts)])
    roll = rng.random()
    if roll < 0.02:
        return POISON_BODIES[i % len(POISON_BODIES)] % rng.choice([b"retrieval", b"generative"])
    if roll < 0.05:
        return json.dumps({"context": [" "]}).encode()  # a 422
    if roll < 0.15:
        options = rng.choice(
            [
                {"strategy": "sample", "top_p": 0.9, "temperature": 0.8},
                {"strategy": "beam", "beam_size": 4},
                {"strategy": "greedy", "max_length": 12},
            ]
        )
        return json.dumps(
            {"context": context, "backend": "generative", "options": options}
        ).encode()
    if roll < 0.25:
        return json.dumps(
            {"context": context, "backend": "retrieval", "options": {"num_candidates": 5}}
        ).encode()
    return json.dumps({"context": context, "session_id": f"soak-{i % 5000}"}).encode()


async def _soak(
    base_url: str, pid: int, contexts: Sequence[Sequence[str]], seconds: float, concurrency: int
) -> dict[str, Any]:
    counter = itertools.count()
    statuses: Counter[str] = Counter()
    samples: list[tuple[float, int]] = []
    started = time.perf_counter()
    stop_at = started + seconds
    async with _client(base_url, concurrency) as client:

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while time.perf_counter() < stop_at:
                status, _, _ = await _post(client, _soak_body(rng, contexts, next(counter)))
                statuses[status] += 1

        async def sampler() -> None:
            while time.perf_counter() < stop_at:
                samples.append((round(time.perf_counter() - started, 1), rss_bytes(pid)))
                await asyncio.sleep(5)
            samples.append((round(time.perf_counter() - started, 1), rss_bytes(pid)))

        await asyncio.gather(sampler(), *(worker(s) for s in range(concurrency)))
    mib = [(t, round(b / 2**20, 1)) for t, b in samples]
    after_warmup = [m for t, m in mib if t >= 30] or [mib[-1][1]]
    return {
        "seconds": seconds,
        "concurrency": concurrency,
        "requests": sum(statuses.values()),
        "statuses": dict(sorted(statuses.items())),
        "rss_mib_at_start": mib[0][1],
        "rss_mib_at_30s": after_warmup[0],
        "rss_mib_at_end": mib[-1][1],
        "rss_mib_max": max(m for _, m in mib),
        "rss_growth_mib_from_30s": round(mib[-1][1] - after_warmup[0], 1),
        "rss_samples_mib": mib,
    }


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    contexts = load_contexts(args.data, 512, 3, seed=0)
    machine = _machine()
    with running_service(args.models_dir) as (base_url, pid):
        result = asyncio.run(_soak(base_url, pid, contexts, args.seconds, args.concurrency))
    return {
        "figure": "soak",
        "mix": "75% A/B routed with session ids, 10% generative with sample/beam/greedy options, "
        "10% retrieval with 5 candidates, 3% invalid (blank turn), 2% poison",
        **result,
        "machine_at_start": machine,
        "machine_at_end": _machine(),
    }


# --- chunked -------------------------------------------------------------------------------------


def _send_body(port: int, total: int, chunked: bool) -> dict[str, Any]:
    """POST /respond with a ``total``-byte body (chunked, or with Content-Length), sending until
    the server answers or closes."""
    chunk = 64 * 1024
    started = time.perf_counter()
    sent = 0
    reply = b""
    framing = (
        b"Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n".encode()
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /respond HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            + framing
            + b"\r\n"
        )
        payload = b'{"context": ["' + b"z" * (chunk - 14)
        frame = f"{len(payload):x}\r\n".encode() + payload + b"\r\n" if chunked else payload
        sock.setblocking(False)
        while sent < total:
            with contextlib.suppress(BlockingIOError):
                reply += sock.recv(65536)
            if reply:
                break
            try:
                sock.sendall(frame)
                sent += len(payload)
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        sock.settimeout(30)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while part := sock.recv(65536):
                reply += part
    seconds = time.perf_counter() - started
    return {
        "status": reply[9:12].decode(errors="replace"),
        "seconds_to_answer": round(seconds, 3),
        "bytes_sent": sent,
        "answer": reply.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")[:300],
    }


def run_chunked(args: argparse.Namespace) -> dict[str, Any]:
    total = 200 * 1024 * 1024
    out: dict[str, Any] = {"figure": "chunked", "body_bytes": total, "machine": _machine()}
    with running_service(args.models_dir) as (base_url, pid):
        port = int(base_url.rsplit(":", 1)[1])
        for name, chunked in (("chunked", True), ("content_length", False)):
            before = rss_bytes(pid)
            result = _send_body(port, total, chunked)
            time.sleep(1.0)
            after = rss_bytes(pid)
            out[name] = {
                **result,
                "server_rss_mib_before": round(before / 2**20, 1),
                "server_rss_mib_after": round(after / 2**20, 1),
                "server_rss_growth_mib": round((after - before) / 2**20, 1),
            }
    return out


# --- main ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("figure", choices=("deadline", "poison", "soak", "chunked"))
    parser.add_argument("--models-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--data", type=Path, default=DAILYDIALOG)
    parser.add_argument(
        "--backend",
        choices=("retrieval", "generative", "ab"),
        default="generative",
        help="deadline: the backend every request names; ab = A/B routed (session ids)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="deadline: extra environment of the server (e.g. DIALOGUE_TORCH_THREADS=2, "
        "OMP_WAIT_POLICY=ACTIVE); repeatable",
    )
    parser.add_argument(
        "--backends", default="retrieval,generative", help="poison: comma-separated"
    )
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--request-timeout-s", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=300.0, help="soak duration")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="deadline: the load generator's HTTP client (raw sockets honour Retry-After)",
    )
    parser.add_argument("--out", type=Path, help="write <out>.json")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes NAME=VALUE")
    args.server_env = dict(item.split("=", 1) for item in args.server_env)
    run = {"deadline": run_deadline, "poison": run_poison, "soak": run_soak, "chunked": run_chunked}
    started = time.perf_counter()
    result = run[args.figure](args)
    result["command"] = "python -m benchmarks.service_reliability " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    result["wall_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

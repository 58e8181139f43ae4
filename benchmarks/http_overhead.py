"""Where one request's time goes besides the model, measured without drift (issue 17's "HTTP +
metrics overhead").

``benchmarks/service_load.py`` times the in-process call once, before any server starts, and its
HTTP cells minutes later; on this shared VM the same in-process call measured 13.4 ms in one run
and 22 ms in the next, so the difference of the two says little. Here, per backend, rounds
alternate the two, the same contexts in the same order:

1. **in process**: the worker thread's batch-1 call (``backend.infer``: the model and the output
   safety filter, loaded as the service loads them: ``service_load.inprocess_latencies``);
2. **over HTTP**: ``python -m service`` with batching off (MAX_BATCH=1), one keep-alive connection
   (a synchronous httpx client), one request at a time; the client's latency and the service's own
   ``latency_ms`` (from the outermost middleware to the built response: parsing, validation,
   routing, queue hand-off, the model call, metrics), and the mean of each stage the service
   observed (``dialogue_stage_duration_seconds``).

It prints, per backend, the medians over rounds of: in-process p50, the service's p50, the
client's p50, and the two differences: *inside the service* (service - in-process: the event loop's
work and the thread hand-off) and *HTTP and client* (client - service: the exchange on loopback,
uvicorn's parsing, httpx). Their sum is what ``service_load`` reports as the overhead.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.http_overhead --rounds 3 \\
        --out reports/http_overhead
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from benchmarks import service_load as sl
from benchmarks import write_report
from training.config import DAILYDIALOG
from training.eval.tables import markdown_table


def stage_means(metrics_text: str) -> dict[str, float]:
    """Mean milliseconds per observation of each stage in a /metrics exposition (read with
    prometheus_client's own parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "dialogue_stage_duration_seconds":
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage", "")
            if sample.name.endswith("_sum"):
                sums[stage] = sample.value
            elif sample.name.endswith("_count"):
                counts[stage] = sample.value
    return {stage: 1000 * sums[stage] / n for stage, n in counts.items() if n > 0}


class StdlibClient:
    """POST /respond over one keep-alive ``http.client`` connection: the least Python a client
    can run per request, so that "HTTP + client" with it is closer to the exchange itself than
    with httpx (whose own per-request work any httpx user pays, and which is measured beside)."""

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        self.conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(body).encode()
        self.conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
        reply = self.conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {reply.status}: {data[:200]!r}")
        return dict(json.loads(data))

    def close(self) -> None:
        self.conn.close()


def http_round(
    args: argparse.Namespace, backend: str, contexts: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """One server (batching off), ``--warmup`` then ``--requests`` sequential requests from each
    client (httpx and http.client, one keep-alive connection each), alternating request by
    request so that both see the same server at the same moment."""
    server_args = sl.parse_args(
        ["--models-dir", str(args.models_dir), "--backends", backend, "--threads", "1"]
    )
    with sl.serve(server_args, 1) as url, httpx.Client(base_url=url, trust_env=False) as client:
        plain = StdlibClient(url)
        try:
            for i in range(args.warmup):
                body = {"context": list(contexts[i]), "backend": backend}
                client.post("/respond", json=body).raise_for_status()
                plain.post("/respond", body)
            client_ms: dict[str, list[float]] = {"httpx": [], "stdlib": []}
            server_ms: dict[str, list[float]] = {"httpx": [], "stdlib": []}
            for i in range(2 * args.requests):
                body = {"context": list(contexts[(i // 2) % len(contexts)]), "backend": backend}
                which = "httpx" if i % 2 == 0 else "stdlib"
                started = time.perf_counter()
                if which == "httpx":
                    reply = client.post("/respond", json=body)
                    elapsed = time.perf_counter() - started
                    reply.raise_for_status()
                    answer = reply.json()
                else:
                    answer = plain.post("/respond", body)
                    elapsed = time.perf_counter() - started
                client_ms[which].append(1000 * elapsed)
                server_ms[which].append(float(answer["latency_ms"]))
        finally:
            plain.close()
        stages = stage_means(client.get("/metrics").text)
    return {
        "client_p50_ms": statistics.median(client_ms["httpx"]),
        "server_p50_ms": statistics.median(server_ms["httpx"] + server_ms["stdlib"]),
        "stdlib_client_p50_ms": statistics.median(client_ms["stdlib"]),
        "stages_ms": stages,  # warm-up included: per-observation means
    }


def measure(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    contexts = sl.load_contexts(args.data, 512, args.context_turns, 0)
    rounds = []
    for r in range(args.rounds):
        times, model_id = sl.inprocess_latencies(
            backend, args.models_dir, "auto", contexts, args.requests, args.warmup
        )
        inprocess = 1000 * statistics.median(times)
        served = http_round(args, backend, contexts)
        rounds.append({"inprocess_p50_ms": inprocess, **served, "model": model_id})
        print(
            f"  {backend:10s} round {r}: in-process {inprocess:.2f} ms, service "
            f"{served['server_p50_ms']:.2f} ms, client {served['client_p50_ms']:.2f} ms (httpx), "
            f"{served['stdlib_client_p50_ms']:.2f} ms (http.client)",
            file=sys.stderr,
            flush=True,
        )

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    inside = statistics.median(r["server_p50_ms"] - r["inprocess_p50_ms"] for r in rounds)
    http = statistics.median(r["client_p50_ms"] - r["server_p50_ms"] for r in rounds)
    return {
        "backend": backend,
        "model": rounds[0]["model"],
        "inprocess_p50_ms": med("inprocess_p50_ms"),
        "server_p50_ms": med("server_p50_ms"),
        "client_p50_ms": med("client_p50_ms"),
        "inside_service_ms": inside,
        "http_and_client_ms": http,
        "overhead_ms": statistics.median(
            r["client_p50_ms"] - r["inprocess_p50_ms"] for r in rounds
        ),
        "stdlib_client_p50_ms": med("stdlib_client_p50_ms"),
        "stdlib_http_ms": statistics.median(
            r["stdlib_client_p50_ms"] - r["server_p50_ms"] for r in rounds
        ),
        "stdlib_overhead_ms": statistics.median(
            r["stdlib_client_p50_ms"] - r["inprocess_p50_ms"] for r in rounds
        ),
        "stages_ms": rounds[-1]["stages_ms"],
        "rounds": rounds,
    }


def render(result: dict[str, Any]) -> str:
    meta, rows = result["meta"], result["backends"]
    lines = [
        "# Where a request's time goes besides the model (in process vs over HTTP, alternating)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}; load average {meta['load_before']} before, "
        f"{meta['load_after']} after. {meta['rounds']} rounds per backend, each: the in-process "
        f"call then a fresh server, {meta['requests']} sequential requests (one connection) "
        f"after {meta['warmup']} warm-up from each of two clients (httpx and the standard library's "
        f"http.client, one keep-alive connection each, alternating request by request); "
        f"medians over rounds.",
        "",
        markdown_table(
            [
                "backend",
                "client",
                "in process p50 ms",
                "service p50 ms",
                "client p50 ms",
                "inside the service ms",
                "HTTP + client ms",
                "overhead ms",
            ],
            [
                [
                    r["backend"],
                    client,
                    f"{r['inprocess_p50_ms']:.2f}",
                    f"{r['server_p50_ms']:.2f}",
                    f"{r[prefix + 'client_p50_ms']:.2f}",
                    f"{r['inside_service_ms']:.2f}",
                    f"{r[http_key]:.2f}",
                    f"{r[prefix + 'overhead_ms']:.2f}",
                ]
                for r in rows
                for client, prefix, http_key in (
                    ("httpx", "", "http_and_client_ms"),
                    ("http.client", "stdlib_", "stdlib_http_ms"),
                )
                if prefix + "client_p50_ms" in r
            ],
        ),
        "",
        "Stage means the service observed (last round, ms per observation):",
        "",
        markdown_table(
            ["backend", *sorted({s for r in rows for s in r["stages_ms"]})],
            [
                [
                    r["backend"],
                    *[
                        f"{r['stages_ms'][s]:.3f}" if s in r["stages_ms"] else ""
                        for s in sorted({s for r in rows for s in r["stages_ms"]})
                    ],
                ]
                for r in rows
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models-dir", type=Path, default=sl.ROOT / "artifacts")
    p.add_argument("--data", type=Path, default=DAILYDIALOG)
    p.add_argument("--backends", default="retrieval,generative")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--context-turns", type=int, default=3)
    p.add_argument("--out", type=Path, help="writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    from benchmarks.latency import set_threads

    set_threads(1)
    load_before = [round(x, 2) for x in os.getloadavg()]
    backends = [measure(args, b.strip()) for b in args.backends.split(",") if b.strip()]
    meta = {
        "command": "OMP_NUM_THREADS=1 python -m benchmarks.http_overhead "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{sl.machine(1)['platform']}, {os.cpu_count()} CPUs, 1 torch thread",
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "rounds": args.rounds,
        "requests": args.requests,
        "warmup": args.warmup,
    }
    result = {"meta": meta, "backends": backends}
    text = render(result)
    print(text)
    write_report(args.out, result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

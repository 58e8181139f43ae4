"""What the exposure log costs a request: POST /respond through the whole app (middleware, routes,
engine, backend; httpx's in-process ASGI transport, no TCP) with the log off, on, and on with raw
text, in alternating blocks of the same run, so load on the machine falls on every mode alike.

    .venv/bin/python -m benchmarks.exposure_log_cost --models-dir artifacts --out reports/exposure_log_cost

The retrieval arm answers, as served (safety filter as the settings say), with the generator off
(retrieval is the fastest request, so the log's share is the largest), batching off
(MAX_WAIT_MS=0) so nothing waits for company, one request at a time. Per mode it
prints p50, p90 and mean latency, the p50 ratio against "off", the per-round p50 difference
against "off" (paired: the same round, the same load), and what logging costs the request
itself (building the record and queueing it, timed alone); the load average before and after
says whether the machine was shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from service.app import create_app
from service.schemas import RespondRequest
from service.settings import Settings

MODES = ("off", "on", "on+text")


def _settings(models_dir: Path, mode: str, log_dir: Path) -> Settings:
    values: dict[str, Any] = {
        "models_dir": models_dir,
        "device": "cpu",
        "max_wait_ms": 0.0,
        "generative_bundle": "off",
        "ab_weights": {"retrieval": 1.0},
        "log_level": "warning",
    }
    if mode != "off":
        values["exposure_log_dir"] = log_dir / mode.replace("+", "-")
        values["exposure_log_text"] = mode == "on+text"
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def _run(
    models_dir: Path, rounds: int, block: int, warmup: int, calls: int
) -> tuple[dict[str, list[list[float]]], dict[str, float]]:
    """Per mode, each round's latencies (ms); and the request-path cost of logging one request
    (building the record and queueing it), in microseconds, per mode that logs."""
    latencies: dict[str, list[list[float]]] = {mode: [] for mode in MODES}
    direct: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        apps = {mode: create_app(_settings(models_dir, mode, Path(scratch))) for mode in MODES}
        contexts = [
            "hello , how are you ?",
            "what time is it ?",
            "i would like to book a table for two .",
            "do you like music ?",
        ]
        async with (
            apps["off"].router.lifespan_context(apps["off"]),
            apps["on"].router.lifespan_context(apps["on"]),
            apps["on+text"].router.lifespan_context(apps["on+text"]),
        ):
            clients = {
                mode: httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://bench"
                )
                for mode, app in apps.items()
            }

            async def one(mode: str, i: int) -> float:
                body = {"context": [contexts[i % len(contexts)]], "session_id": f"s{i}"}
                started = time.perf_counter()
                resp = await clients[mode].post("/respond", json=body)
                elapsed = time.perf_counter() - started
                assert resp.status_code == 200, resp.text
                return elapsed * 1000

            for mode in MODES:
                for i in range(warmup):
                    await one(mode, i)
            for r in range(rounds):
                order = MODES if r % 2 == 0 else tuple(reversed(MODES))
                for mode in order:
                    latencies[mode].append([await one(mode, r * block + i) for i in range(block)])
            for client in clients.values():
                await client.aclose()
            # What a request itself spends on the log: the record and the queue put, timed
            # alone (the writer thread's work happens elsewhere), on the request of a real answer.
            request = RespondRequest(context=["hello , how are you ?"], session_id="bench")
            for mode in ("on", "on+text"):
                engine = apps[mode].state.engine
                served = await engine.answer(request)
                log = engine.exposures
                started = time.perf_counter()
                for _ in range(calls):
                    log.write(engine._exposure(request, served, "respond"))
                direct[mode] = (time.perf_counter() - started) / calls * 1e6
                while log.queue.qsize():  # let the writer catch up before the next mode
                    await asyncio.sleep(0.05)
    return latencies, direct


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.exposure_log_cost")
    ap.add_argument("--models-dir", type=Path, default=Path("artifacts"))
    ap.add_argument("--rounds", type=int, default=10, help="alternations of the three modes")
    ap.add_argument("--block", type=int, default=100, help="requests per mode per round")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--calls", type=int, default=5000, help="direct request-path timings")
    ap.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    started = time.perf_counter()
    per_round, direct = asyncio.run(
        _run(args.models_dir, args.rounds, args.block, args.warmup, args.calls)
    )
    wall_s = time.perf_counter() - started
    load_after = os.getloadavg()
    latencies = {mode: [x for r in rounds for x in r] for mode, rounds in per_round.items()}
    base = statistics.median(latencies["off"])
    round_p50 = {mode: [statistics.median(r) for r in rounds] for mode, rounds in per_round.items()}
    rows: dict[str, dict[str, Any]] = {}
    for mode, values in latencies.items():
        # paired by round: this mode's p50 minus "off"'s p50 of the same round (same load)
        paired = [a - b for a, b in zip(round_p50[mode], round_p50["off"], strict=True)]
        rows[mode] = {
            "n": len(values),
            "p50_ms": round(statistics.median(values), 3),
            "p90_ms": round(_quantile(values, 0.9), 3),
            "mean_ms": round(statistics.fmean(values), 3),
            "p50_vs_off": round(statistics.median(values) / base, 3),
            "p50_minus_off_ms": round(statistics.median(values) - base, 3),
            "paired_round_diff_median_ms": round(statistics.median(paired), 3),
            "paired_round_diff_q1_q3_ms": [
                round(_quantile(paired, 0.25), 3),
                round(_quantile(paired, 0.75), 3),
            ],
            "rounds_slower_than_off": sum(d > 0 for d in paired),
            "request_path_us": round(direct[mode], 2) if mode in direct else None,
        }
    result = {
        "command": "python -m benchmarks.exposure_log_cost "
        f"--models-dir {args.models_dir} --rounds {args.rounds} --block {args.block} "
        f"--warmup {args.warmup} --calls {args.calls}",
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "wall_s": round(wall_s, 1),
        "modes": rows,
    }
    lines = [
        f"Command: `{result['command']}`; {args.rounds} rounds x {args.block} requests per mode, "
        f"modes alternating (reversed every other round); wall {result['wall_s']} s; load average "
        f"(1, 5, 15 min) before {result['load_before']}, after {result['load_after']} on "
        f"{result['cpus']} CPUs.",
        "",
        "| exposure log | n | p50 ms | p90 ms | mean ms | p50 vs off | p50 - off, ms "
        "| per-round p50 - off: median (q1, q3), ms | rounds slower than off "
        "| request path, us/request |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for mode, row in rows.items():
        q1, q3 = row["paired_round_diff_q1_q3_ms"]
        path_us = "-" if row["request_path_us"] is None else f"{row['request_path_us']:.2f}"
        lines.append(
            f"| {mode} | {row['n']} | {row['p50_ms']:.3f} | {row['p90_ms']:.3f} "
            f"| {row['mean_ms']:.3f} | {row['p50_vs_off']:.3f} | {row['p50_minus_off_ms']:+.3f} "
            f"| {row['paired_round_diff_median_ms']:+.3f} ({q1:+.3f}, {q3:+.3f}) "
            f"| {row['rounds_slower_than_off']}/{args.rounds} | {path_us} |"
        )
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

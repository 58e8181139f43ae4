"""Same-run A/B of this service's settings: one server per variant, alternating, same load.

Each variant is a name and DIALOGUE_* settings on top of the peer benchmark's server
(benchmarks/peer.py: only the measured backend loaded, safety filter and FALLBACK off, float32
unless ``--dtype``, batching on with ``--max-batch``). Every round starts each variant's server
in turn (the order reversed every other round, so neither always runs first on a warm or a
cold machine) and drives it with benchmarks/service_load.py's closed-loop load generator at each
concurrency. Prints every cell as it ends, then the medians over rounds and each variant's ratio
to the first one (throughput above 1 and p50 below 1: better than the first).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.server_ab --rounds 4 --concurrency 32 \\
        --variant thread:PREFILL_THREAD=false --variant prefill:PREFILL_THREAD=true \\
        --out reports/prefill_thread_ab
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import peer
from benchmarks import service_load as sl


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``name:KEY=value,KEY=value`` -> (name, {"DIALOGUE_KEY": value}); ``name:`` = defaults."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"a variant is name:KEY=value,..., not {text!r}")
    env = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise argparse.ArgumentTypeError(f"{part!r} in {text!r} is not KEY=value")
        key = key.strip().upper()
        env[key if key.startswith("DIALOGUE_") else f"DIALOGUE_{key}"] = value.strip()
    return name.strip(), env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", type=parse_variant, action="append", default=[])
    parser.add_argument("--backend", choices=("generative", "retrieval"), default="generative")
    parser.add_argument("--concurrency", type=sl.int_list, default=[32])
    parser.add_argument("--requests", type=int, default=768, help="timed requests per cell")
    parser.add_argument("--warmup", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--models-dir", default="artifacts")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--out", type=Path, help="writes <out>.json and <out>.md")
    parser.add_argument("--render", type=Path, help="print a run's JSON as its report, then exit")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = peer.parse_args(
        ["--models-dir", args.models_dir, "--dtype", args.dtype, "--max-batch", str(args.max_batch)]
    )
    contexts = sl.load_contexts(base.data, base.contexts, base.context_turns, base.seed)
    variants: list[tuple[str, dict[str, str]]] = args.variant
    machine = sl.machine(1)  # its load average: at the start
    cells: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for name, overrides in order:
            env = sl.server_env(peer._load_args(base, args.backend), 0, args.max_batch)
            env.update(
                {
                    "DIALOGUE_SAFETY_FILTER": "off",
                    "DIALOGUE_DTYPE": args.dtype,
                    "DIALOGUE_AB_WEIGHTS": f"{args.backend}=1",
                    **overrides,
                }
            )
            cmd = [sys.executable, "-m", "service"]
            with peer._process(cmd, env, "/readyz", base.startup_timeout_s) as url:
                for conc in args.concurrency:

                    async def cell(url: str = url, conc: int = conc) -> dict[str, Any]:
                        async with sl.make_client(url, conc) as client:
                            result = await sl.run_cell(
                                client,
                                args.backend,
                                contexts,
                                concurrency=conc,
                                requests=args.requests,
                                warmup=args.warmup,
                            )
                        return result.summary()

                    summary = asyncio.run(cell())
                    cells.append({"variant": name, "round": round_index + 1, **summary})
                    print(
                        f"  round {round_index + 1} {name:12s} c={conc:<3d} "
                        f"{summary['throughput_rps']:.1f} req/s p50 {summary['p50_ms']:.2f} ms "
                        f"p99 {summary['p99_ms']:.2f} ms errors {int(summary['errors'])}",
                        flush=True,
                    )
    return {
        "variants": dict(variants),
        "cells": cells,
        "machine": machine,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }


def medians(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant and concurrency: median req/s and p50 over rounds, and their ratio to the
    first variant's."""
    names = list(report["variants"])
    out = []
    for conc in sorted({c["concurrency"] for c in report["cells"]}):
        rows = {}
        for name in names:
            mine = [c for c in report["cells"] if c["variant"] == name and c["concurrency"] == conc]
            rows[name] = (
                statistics.median(c["throughput_rps"] for c in mine),
                statistics.median(c["p50_ms"] for c in mine),
                len(mine),
            )
        first = rows[names[0]]
        for name in names:
            rps, p50, n = rows[name]
            out.append(
                {
                    "variant": name,
                    "concurrency": conc,
                    "rounds": n,
                    "rps": rps,
                    "p50_ms": p50,
                    "rps_ratio": rps / first[0],
                    "p50_ratio": p50 / first[1],
                }
            )
    return out


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Same-run A/B of server settings",
        "",
        f"Command: `OMP_NUM_THREADS=1 {report['command']}`",
        "",
        f"Machine: {m.get('platform')}, {m.get('cpu_count')} CPUs, load average "
        f"{m.get('load_average_at_start')} at start, {report.get('load_average_end')} at end; "
        f"torch {m.get('torch')}. One server at a time, the variants alternating round by round "
        "(benchmarks/server_ab.py); the load generator shares the cores. Ratios against the "
        "first variant, medians over rounds.",
        "",
        "| variant | settings | concurrency | rounds | req/s (median) | p50 ms (median) | "
        "req/s ratio | p50 ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in medians(report):
        settings = ", ".join(f"{k}={v}" for k, v in report["variants"][row["variant"]].items())
        lines.append(
            f"| {row['variant']} | {settings or 'defaults'} | {row['concurrency']} | "
            f"{row['rounds']} | {row['rps']:.1f} | {row['p50_ms']:.2f} | "
            f"{row['rps_ratio']:.2f} | {row['p50_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render is not None:
        print(render(json.loads(args.render.read_text())))
        return 0
    if len(args.variant) < 2:
        raise SystemExit("give at least two --variant name:KEY=value,...")
    report = run(args)
    report["command"] = " ".join(["python -m benchmarks.server_ab", *(argv or sys.argv[1:])])
    print(render(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(render(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

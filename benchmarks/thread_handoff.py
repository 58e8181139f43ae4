"""What handing one job to a worker thread costs the event loop, by job length.

The service runs every model call in a backend's worker thread and awaits it on the event loop
(service/batching.py). Part of issue 17's "inside the service" overhead is that round trip:
the worker wakes up, runs, and wakes the loop again. On a VM an idle vCPU takes a while to
wake, so the cost depends on whether the waiting thread's CPU went idle meanwhile: this prints,
for a no-op job, a 5 ms job that keeps its core busy (spin) and a 5 ms job that sleeps, the
median of ``await loop.run_in_executor(pool, job)`` minus the job's own length, under uvloop
(what the service uses) and asyncio's default loop.

    python -m benchmarks.thread_handoff --rounds 400 --out reports/thread_handoff
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvloop

from benchmarks import write_report
from training.eval.tables import markdown_table

JOB_S = 0.005


def spin() -> None:
    started = time.perf_counter()
    while time.perf_counter() - started < JOB_S:
        pass


def sleep() -> None:
    time.sleep(JOB_S)


JOBS: dict[str, tuple[Callable[[], None], float]] = {
    "no-op": (lambda: None, 0.0),
    "5 ms, busy": (spin, JOB_S),
    "5 ms, sleeping": (sleep, JOB_S),
}


async def overheads(rounds: int) -> dict[str, float]:
    """Median milliseconds each job's round trip takes beyond the job itself."""
    loop = asyncio.get_running_loop()
    out = {}
    with ThreadPoolExecutor(1) as pool:
        for name, (job, length) in JOBS.items():
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                await loop.run_in_executor(pool, job)
                times.append(time.perf_counter() - started - length)
            out[name] = 1000 * statistics.median(times[rounds // 10 :])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    results: dict[str, Any] = {
        "uvloop": uvloop.run(overheads(args.rounds)),
        "asyncio": asyncio.run(overheads(args.rounds)),
    }
    command = "python -m benchmarks.thread_handoff " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; load "
        f"average {[round(x, 2) for x in load_before]} before"
    )
    rows = [
        [loop, *(f"{results[loop][name]:.3f}" for name in JOBS)] for loop in ("uvloop", "asyncio")
    ]
    markdown = (
        "# Event loop -> worker thread -> event loop: the round trip beyond the job\n\n"
        f"Command: `{command}`  \nMachine: {machine}.  \n"
        f"{args.rounds} round trips per cell, the first tenth dropped; median ms beyond the job's "
        "own length.\n\n" + markdown_table(["loop", *(f"{name} ms" for name in JOBS)], rows) + "\n"
    )
    write_report(args.out, {"command": command, "machine": machine, **results}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

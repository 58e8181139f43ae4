"""The first request of a fresh replica, with and without the start-up warm-up (Backend.warm_up).

Each round starts a fresh Python process per arm (``cold``: the backends loaded as the service
loads them, nothing more; ``warm``: then :meth:`service.backends.Backend.warm_up`, as the service
does before it serves), which times the first model call on a seeded test context and the mean
of the next ``--later`` ones, for the generative and the retrieval backend (their responders
called directly: the model's share of a request). Arms alternate, so a slower minute of a shared
machine slows both alike. Ratios are cold / warm of the same run.

    OMP_NUM_THREADS=1 python -m benchmarks.warm_up --artifacts artifacts --rounds 5 \\
        --out reports/warm_up_small
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import write_report
from benchmarks.latency import machine_description

ARMS = ("cold", "warm")

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from benchmarks.retrieval_stages import load_dailydialog, seeded_indices
from service.backends import GenerativeBackend, RetrievalBackend
from service.batching import BatchLimits
from service.device import serving_dtype
from service.metrics import ServiceMetrics
artifacts, arm, later = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
serving = json.loads((artifacts / "serving.json").read_text())
cpu = torch.device("cpu")
test = load_dailydialog(sys.argv[4], "test", 3)
contexts = [list(test[i].context) for i in seeded_indices(len(test), later + 1, seed=7)]
out = {}
for kind, cls, name in (("generative", GenerativeBackend, serving["generative"]),
                        ("retrieval", RetrievalBackend, serving["retrieval"])):
    backend = cls.load(artifacts / name, cpu, serving_dtype(cpu, "auto", kind), ServiceMetrics(),
                       BatchLimits())
    if arm == "warm":
        backend.warm_up()
    times = []
    for context in contexts:
        start = time.perf_counter()
        backend.responder.respond([context])
        times.append(time.perf_counter() - start)
    out[kind] = {"first_ms": 1000 * times[0], "later_ms": 1000 * sum(times[1:]) / later}
print(json.dumps(out))
"""


def run_child(artifacts: Path, arm: str, later: int, data: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(artifacts), arm, str(later), str(data)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> None:
    from training.config import DAILYDIALOG

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--data", type=Path, default=DAILYDIALOG)
    p.add_argument("--rounds", type=int, default=5, help="fresh processes per arm")
    p.add_argument("--later", type=int, default=5, help="calls timed after the first")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for _ in range(args.rounds):
        for arm in ARMS:
            runs[arm].append(run_child(args.artifacts, arm, args.later, args.data))
    summary = {
        arm: {
            kind: {
                part: statistics.fmean(r[kind][part] for r in runs[arm])
                for part in ("first_ms", "later_ms")
            }
            for kind in ("generative", "retrieval")
        }
        for arm in ARMS
    }
    results = {
        "command": "python -m benchmarks.warm_up "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine_description(1),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "rounds": args.rounds,
        "later": args.later,
        "runs": runs,
        "summary": summary,
    }
    lines = [
        "# The first request of a fresh replica, with and without the start-up warm-up",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']['machine']}, {results['machine']['cpu_count']} CPU cores, "
        f"torch {results['machine']['torch']}, 1 thread; load average before "
        f"{load_before}, after {results['load_after']}. {args.rounds} fresh processes per arm, "
        "alternating; the model call alone (the responder), bundles as `serving.json` names them.",
        "",
        "| backend | arm | first call ms (mean) | next calls ms (mean) | first / next |",
        "|---|---|---:|---:|---:|",
    ]
    for kind in ("generative", "retrieval"):
        for arm in ARMS:
            s = summary[arm][kind]
            lines.append(
                f"| {kind} | {arm} | {s['first_ms']:.2f} | {s['later_ms']:.2f} | "
                f"{s['first_ms'] / s['later_ms']:.2f}x |"
            )
        ratio = summary["cold"][kind]["first_ms"] / summary["warm"][kind]["first_ms"]
        lines.append(f"| {kind} | cold / warm, first call | {ratio:.2f}x | | |")
    md = "\n".join(lines) + "\n"
    write_report(args.out, results, md)
    print(md)


if __name__ == "__main__":
    main()

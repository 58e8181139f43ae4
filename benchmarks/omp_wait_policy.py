"""OpenMP wait policy: training step time with spinning vs sleeping idle threads, alone and beside a
busy neighbour process (what a shared 2-core machine usually has).

Policies (libgomp, which the torch CPU wheels use; it reads them once, when torch loads it):
``default`` (nothing set: spin 300,000 times, then sleep; run as ``GOMP_SPINCOUNT=300000``), ``ACTIVE`` (spin 30,000,000 times),
``PASSIVE`` (sleep at once) and ``spin:N`` (``GOMP_SPINCOUNT=N``, policy unset). Each cell runs
``benchmarks.train_throughput`` (2 threads, bf16, bucketed: the trainer's setting) in a fresh
process. The neighbour is an ordinary torch program (default policy, 2 threads, a matmul loop)
started before its cells and stopped after them. All cells repeat ``--rounds`` times; the table
shows the median over rounds of each cell's median step time.

    python -m benchmarks.omp_wait_policy --rounds 2 --steps 12 --out reports/omp_wait_policy
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import write_report
from training.eval.tables import markdown_table as table

NEIGHBOUR = (
    "import torch\n"
    "torch.set_num_threads(2)\n"
    "a = torch.randn(384, 384)\n"
    "while True:\n"
    "    a = torch.tanh(a @ a)\n"
)


def policy_env(policy: str) -> dict[str, str]:
    """The environment of a process run under ``policy`` (see the module doc). ``default`` sets
    libgomp's documented default spin count explicitly, so that ``prefer_passive_openmp`` (which
    leaves any explicit choice alone) does not apply."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy == "default":
        env["GOMP_SPINCOUNT"] = "300000"
    elif policy.startswith("spin:"):
        env["GOMP_SPINCOUNT"] = policy.removeprefix("spin:")
    else:
        env["OMP_WAIT_POLICY"] = policy
    return env


def _cell(policy: str, steps: int, preset: str) -> float:
    """Median step ms of one train_throughput run in a fresh process under ``policy``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tt"
        env = {**policy_env(policy), "OMP_NUM_THREADS": "2"}
        cmd = [sys.executable, "-m", "benchmarks.train_throughput", "--preset", preset]
        cmd += ["--steps", str(steps), "--warmup", "2", "--configs", "2t-bf16-bucketed"]
        cmd += ["--out", str(out)]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        result = json.loads(out.with_suffix(".json").read_text())
        return float(result["runs"][0]["step_ms_median"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--policies", default="default,ACTIVE,PASSIVE,spin:10000")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    policies = args.policies.split(",")
    cells: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for neighbour in (False, True):
            proc = None
            if neighbour:
                proc = subprocess.Popen(
                    [sys.executable, "-c", NEIGHBOUR], env=policy_env("default")
                )
                time.sleep(2)
            try:
                for policy in policies:
                    key = f"{policy}|{'busy' if neighbour else 'alone'}"
                    cells.setdefault(key, []).append(_cell(policy, args.steps, args.preset))
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait()
    med = {k: statistics.median(v) for k, v in cells.items()}
    result: dict[str, Any] = {
        "command": "python -m benchmarks.omp_wait_policy " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "step_ms": cells,
        "step_ms_median": med,
    }
    lines = [
        "# OpenMP wait policy: generator training step, alone and beside a busy process",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; load average (1, 5, 15 min) before {result['load_before']}"
        f", after {result['load_after']} (the busy neighbour adds ~2 while it runs).  ",
        f"Each cell: `benchmarks.train_throughput` 2t-bf16-bucketed, preset {args.preset}, "
        f"{args.steps} timed steps, median step; median over {args.rounds} rounds "
        f"(every round: {json.dumps({k: [round(x, 1) for x in v] for k, v in cells.items()})}).",
        "",
        "Step ms (x: speed-up against `default`, the same neighbour):",
        "",
    ]
    rows = []
    for where, label in (("alone", "none (idle machine)"), ("busy", "a 2-thread torch loop")):
        base = med[f"default|{where}"] if "default" in policies else None
        row = [label]
        for policy in policies:
            ms = med[f"{policy}|{where}"]
            row.append(f"{ms:.1f}" + (f" ({base / ms:.2f}x)" if base else ""))
        rows.append(row)
    lines.append(table(["neighbour", *policies], rows))
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    write_report(args.out, result, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

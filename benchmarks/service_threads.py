"""Why the service's throughput collapses beside a busy process, one model call at a time: the
generative backend's batched call (16 contexts, the served bundle, as the service runs it in its
worker thread) timed for each intra-op thread count x OpenMP wait policy, each in a fresh process
(libgomp reads OMP_WAIT_POLICY when torch loads), with and without a busy companion process on the
same cores (2 torch threads multiplying matrices, OpenMP policy as given).

    .venv/bin/python -m benchmarks.service_threads --out reports/reliability_threads_calls

With 2 or more intra-op threads every parallel region ends in a barrier: the thread that arrives
first waits (spinning under the default and ACTIVE policies, sleeping under PASSIVE) for the
other, and when the other is off the CPU because another process holds it, the call waits a time
slice per region. One thread has no barrier. The table shows how much of each call that is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter, so OMP_WAIT_POLICY applies (and `benchmarks`, which would set it,
# is not imported): load the served generator, time `calls` batched calls in a worker thread.
_CALLS = r"""
import json, sys, threading, time
import torch
threads, calls, models_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, sys.argv[4])
from service.engine import select_bundle
from models.generator import GenerativeResponder
from models.decoding import generate
path = select_bundle(models_dir, "generative", "auto")
responder = GenerativeResponder.load(path, torch.device("cpu"))
config = responder.decoding.with_overrides(num_return_sequences=1)
contexts = [["hello , how are you ?"], ["what time is it ?"], ["where are you going ?"],
            ["i am so tired today ."]] * 4
times = []
def work():
    torch.set_num_threads(threads)
    src = responder.encode_contexts(contexts)
    for i in range(calls + 3):
        started = time.perf_counter()
        generate(responder.model, src, config)
        if i >= 3:
            times.append(time.perf_counter() - started)
t = threading.Thread(target=work)
t.start(); t.join()
print(json.dumps({"bundle": path.name, "times": times}))
"""

_BUSY = r"""
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(384, 384)
while True:
    a = torch.tanh(a @ a)
"""


def _env(policy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy != "unset":
        env["OMP_WAIT_POLICY"] = policy.upper()
    return env


def time_calls(threads: int, policy: str, calls: int, models_dir: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _CALLS, str(threads), str(calls), str(models_dir), str(ROOT)],
        env=_env(policy),
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    ms = sorted(t * 1000 for t in data["times"])
    return {
        "threads": threads,
        "omp_wait_policy": policy,
        "bundle": data["bundle"],
        "calls": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "max_ms": round(ms[-1], 1),
        "mean_ms": round(statistics.fmean(ms), 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--policies", default="unset,active,passive")
    parser.add_argument("--busy-threads", type=int, default=2)
    parser.add_argument("--busy-omp-wait-policy", default="unset")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for busy in (False, True):
        companion = None
        if busy:
            companion = subprocess.Popen(
                [sys.executable, "-c", _BUSY, str(args.busy_threads)],
                env=_env(args.busy_omp_wait_policy),
            )
            time.sleep(1.0)
        try:
            for threads in (int(t) for t in args.threads.split(",")):
                for policy in args.policies.split(","):
                    load = [round(x, 2) for x in os.getloadavg()]
                    row = {
                        "busy_process": busy,
                        **time_calls(threads, policy, args.calls, args.models_dir),
                        "load_average": load,
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        finally:
            if companion is not None:
                companion.terminate()
                companion.wait()
    result = {
        "command": "python -m benchmarks.service_threads "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "busy_process": f"{args.busy_threads} torch threads multiplying 384x384 matrices, "
        f"OMP_WAIT_POLICY {args.busy_omp_wait_policy}",
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(str(args.out) + ".json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""This service against LitServe on the same bundles, the same load and the same machine.

For every backend and batching mode, in alternating order run by run (ours first in odd runs,
LitServe first in even ones), one server at a time is started and driven by
benchmarks/service_load.py's closed-loop load generator at each concurrency:

* ours: ``python -m service`` with only the measured backend loaded, micro-/continuous batching
  on (``MAX_BATCH=--max-batch``, ``MAX_WAIT_MS=--max-wait-ms``) or off (``MAX_BATCH=1``), the
  safety filter off (the peer has none), FALLBACK off, ``TORCH_THREADS=--threads``;
* LitServe (benchmarks/peer_litserve.py, the ``bench`` extra): the same bundle through
  ``GenerativeResponder`` / ``RetrievalResponder``, dynamic batching on (``max_batch_size
  =--max-batch``, ``batch_timeout=--peer-batch-timeout-ms``) or off (max_batch_size 1), one
  inference worker, ``torch.set_num_threads(--threads)``.

Each cell's numbers are the medians over ``--runs`` runs; the report prints ours / LitServe per
cell: throughput (above 1: ours faster), p50 and p99 (below 1: ours faster).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.peer --runs 3 --out reports/service_peer
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks import service_load as sl
from training.eval.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("ours", "litserve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sl.add_load_arguments(p, backends=["generative", "retrieval"])
    p.add_argument("--runs", type=int, default=3, help="alternating runs; medians are reported")
    p.add_argument("--threads", type=int, default=1, help="torch threads of both servers")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="both servers' model dtype (ours: DIALOGUE_DTYPE)",
    )
    p.add_argument("--max-batch", type=int, default=16, help="both servers, batching on")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="ours: DIALOGUE_MAX_WAIT_MS")
    p.add_argument(
        "--peer-batch-timeout-ms", type=float, default=5.0, help="LitServe's batch_timeout"
    )
    p.add_argument("--startup-timeout-s", type=float, default=180.0)
    p.add_argument("--smoke", action="store_true", help="label the report a smoke test")
    p.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.runs < 1 or args.max_batch < 2 or args.threads < 1:
        parser.error("need --runs >= 1, --max-batch >= 2, --threads >= 1")
    return args


def _load_args(args: argparse.Namespace, backend: str) -> argparse.Namespace:
    """service_load's arguments for our server serving ``backend`` alone."""
    other = "retrieval" if backend == "generative" else "generative"
    return sl.parse_args(
        [
            "--models-dir",
            str(args.models_dir),
            f"--{backend}-bundle",
            getattr(args, f"{backend}_bundle"),
            f"--{other}-bundle",
            "off",
            "--threads",
            str(args.threads),
            "--max-batch",
            str(args.max_batch),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--startup-timeout-s",
            str(args.startup_timeout_s),
        ]
    )


def requests_for(args: argparse.Namespace, backend: str) -> int:
    if args.requests_per_cell is not None:
        return int(args.requests_per_cell)
    return int(args.retrieval_requests if backend == "retrieval" else args.generative_requests)


# --- the two servers -----------------------------------------------------------------------------


@contextlib.contextmanager
def _process(
    cmd: list[str], env: dict[str, str], ready_path: str, timeout_s: float
) -> Iterator[str]:
    """Run ``cmd`` (a server on a fresh port, given as {port}) until the block ends; yields its
    base URL once GET ``ready_path`` answers 200."""
    port = sl.free_port()
    cmd = [part.replace("{port}", str(port)) for part in cmd]
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**env, "DIALOGUE_PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # LitServe's worker processes go with it
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            with httpx.Client(base_url=base_url, trust_env=False, timeout=5.0) as client:
                while True:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"{cmd[:4]} did not start:\n{log.read()[-4000:]}")
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(ready_path).status_code == 200:
                            break
                    time.sleep(0.2)
            yield base_url
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def serve_ours(args: argparse.Namespace, backend: str, batching: str) -> Any:
    load_args = _load_args(args, backend)
    max_batch = args.max_batch if batching == "on" else 1
    env = sl.server_env(load_args, 0, max_batch)
    env["DIALOGUE_SAFETY_FILTER"] = "off"  # the peer has no safety filter
    env["DIALOGUE_DTYPE"] = args.dtype  # the same as the peer's, not our CPU default
    env["DIALOGUE_AB_WEIGHTS"] = f"{backend}=1"
    return _process([sys.executable, "-m", "service"], env, "/readyz", args.startup_timeout_s)


def serve_litserve(args: argparse.Namespace, backend: str, batching: str, bundle: Path) -> Any:
    threads = str(args.threads)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DIALOGUE_")},
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.peer_litserve",
        "--backend",
        backend,
        "--bundle",
        str(bundle),
        "--port",
        "{port}",
        "--threads",
        threads,
        "--dtype",
        args.dtype,
        "--max-batch",
        str(args.max_batch if batching == "on" else 1),
        "--batch-timeout-ms",
        str(args.peer_batch_timeout_ms),
    ]
    return _process(cmd, env, "/health", args.startup_timeout_s)


# --- the comparison ------------------------------------------------------------------------------


async def _cells(
    base_url: str,
    backend: str,
    batching: str,
    contexts: Sequence[Sequence[str]],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    out = []
    for conc in args.concurrency:
        async with sl.make_client(base_url, conc) as client:
            cell = await sl.run_cell(
                client,
                backend,
                contexts,
                concurrency=conc,
                requests=requests_for(args, backend),
                warmup=args.warmup,
                batching=batching,
            )
        out.append(cell.summary())
    return out


def order_of(run: int) -> tuple[str, str]:
    """Ours first in odd runs (1, 3, ...), LitServe first in even ones."""
    return ("ours", "litserve") if run % 2 == 1 else ("litserve", "ours")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every cell of every run: {server, run, backend, batching, concurrency, ...summary}."""
    from service.engine import select_bundle

    contexts = sl.load_contexts(args.data, args.contexts, args.context_turns, args.seed)
    rows: list[dict[str, Any]] = []
    for run_index in range(1, args.runs + 1):
        for backend in args.backends:
            bundle = select_bundle(
                Path(args.models_dir), backend, getattr(args, f"{backend}_bundle")
            )
            if bundle is None:
                raise SystemExit(f"no {backend} bundle in {args.models_dir}")
            for batching in args.batching:
                for server in order_of(run_index):
                    if server == "ours":
                        ctx = serve_ours(args, backend, batching)
                    else:
                        ctx = serve_litserve(args, backend, batching, bundle)
                    with ctx as base_url:
                        cells = asyncio.run(_cells(base_url, backend, batching, contexts, args))
                    for c in cells:
                        rows.append({"server": server, "run": run_index, **c})
                        print(
                            f"  run {run_index} {server:8s} {backend:10s} batching={batching:3s}"
                            f" c={c['concurrency']:<3d} p50={sl._f(c['p50_ms'])} ms "
                            f"p99={sl._f(c['p99_ms'])} ms {sl._f(c['throughput_rps'])} req/s "
                            f"errors={int(c['errors'])}",
                            flush=True,
                        )
    return rows


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]  # NaN-free
    return statistics.median(finite) if finite else float("nan")


def compare(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per backend x batching x concurrency: each server's medians over its runs, and ours /
    LitServe for throughput, p50 and p99."""
    keys = list(dict.fromkeys((r["backend"], r["batching"], r["concurrency"]) for r in rows))
    out = []
    for backend, batching, conc in keys:
        med: dict[str, dict[str, float]] = {}
        for server in SERVERS:
            mine = [
                r
                for r in rows
                if r["server"] == server
                and (r["backend"], r["batching"], r["concurrency"]) == (backend, batching, conc)
            ]
            med[server] = {
                k: _median([float(r[k]) for r in mine])
                for k in ("throughput_rps", "p50_ms", "p99_ms", "errors")
            }
            med[server]["runs"] = float(len(mine))
        ours, peer = med["ours"], med["litserve"]
        out.append(
            {
                "backend": backend,
                "batching": batching,
                "concurrency": conc,
                "ours": ours,
                "litserve": peer,
                "throughput_ratio": _ratio(ours["throughput_rps"], peer["throughput_rps"]),
                "p50_ratio": _ratio(ours["p50_ms"], peer["p50_ms"]),
                "p99_ratio": _ratio(ours["p99_ms"], peer["p99_ms"]),
            }
        )
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    title = "# Ours vs LitServe on the same bundles"
    lines = [title + (" (SMOKE TEST, not a result)" if meta["smoke"] else ""), ""]
    if meta["smoke"]:
        lines += [
            "**Smoke test**: a few requests per cell to show the comparison runs end to end; "
            "the numbers mean nothing (a loaded machine, tiny cells). The measurement is the "
            "command below with the default request counts on an idle machine.",
            "",
        ]
    lines += [
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['platform']}, {meta['cpu_count']} CPUs, load average "
        f"{meta['load_average_at_start']} at start, {meta['load_average_at_end']} at end; "
        f"{meta['threads']} torch thread(s) and {meta.get('dtype', 'float32')} weights in both "
        f"servers; {meta['runs']} run(s) in "
        "alternating order (ours first in odd runs); medians over runs. The load generator "
        "(benchmarks/service_load.py: closed loop, one keep-alive connection per worker) shares "
        "the cores with the server.",
        "",
        f"Ours: `python -m service`, only the measured backend loaded, batching on = "
        f"MAX_BATCH={meta['max_batch']}, MAX_WAIT_MS={meta['max_wait_ms']} (continuous "
        "batching for generation, CONTINUOUS_BATCHING=auto), off = MAX_BATCH=1; safety filter "
        f"and FALLBACK off. LitServe {meta['litserve']}: benchmarks/peer_litserve.py, batching "
        f"on = max_batch_size {meta['max_batch']}, batch_timeout "
        f"{meta['peer_batch_timeout_ms']} ms, off = max_batch_size 1; one inference worker.",
        "",
        "Throughput ratio above 1 and latency ratios below 1 mean ours is better.",
        "",
    ]
    body = []
    for r in report["comparison"]:
        o, p = r["ours"], r["litserve"]
        body.append(
            [
                r["backend"],
                r["batching"],
                str(r["concurrency"]),
                f"{sl._f(o['throughput_rps'], 1)} / {sl._f(p['throughput_rps'], 1)}",
                sl._f(r["throughput_ratio"]),
                f"{sl._f(o['p50_ms'])} / {sl._f(p['p50_ms'])}",
                sl._f(r["p50_ratio"]),
                f"{sl._f(o['p99_ms'])} / {sl._f(p['p99_ms'])}",
                sl._f(r["p99_ratio"]),
                f"{int(o['errors'])} / {int(p['errors'])}",
            ]
        )
    lines += markdown_table(
        [
            "backend",
            "batching",
            "concurrency",
            "req/s ours / LitServe",
            "throughput ratio",
            "p50 ms",
            "p50 ratio",
            "p99 ms",
            "p99 ratio",
            "errors",
        ],
        body,
        align="lllrrrrrrr",
    ).split("\n")
    targets = target_rows(report["comparison"])
    if targets:
        lines += [
            "",
            "Issue 17's ratios from the cells above (ours with batching on against ours with it "
            "off, and against LitServe's better mode at that concurrency):",
            "",
            *markdown_table(
                [
                    "backend",
                    "concurrency",
                    "ours req/s, on / off",
                    "ours p50, on / off",
                    "ours on / LitServe's best req/s",
                ],
                targets,
                align="llrrr",
            ).split("\n"),
        ]
    return "\n".join(lines) + "\n"


def target_rows(comparison: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Per backend and concurrency measured with batching on and off: our throughput and p50 on
    over off, and our throughput on over LitServe's best of its two modes."""
    cells = {(r["backend"], r["batching"], r["concurrency"]): r for r in comparison}
    out = []
    for (backend, batching, c), on in cells.items():
        off = cells.get((backend, "off", c))
        if batching != "on" or off is None:
            continue
        best = max(on["litserve"]["throughput_rps"], off["litserve"]["throughput_rps"])
        out.append(
            [
                backend,
                str(c),
                sl._f(on["ours"]["throughput_rps"] / off["ours"]["throughput_rps"]),
                sl._f(on["ours"]["p50_ms"] / off["ours"]["p50_ms"]),
                sl._f(on["ours"]["throughput_rps"] / best),
            ]
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--render"]:  # the markdown of an earlier run's JSON, nothing re-measured
        if len(argv) != 2:
            raise SystemExit("usage: python -m benchmarks.peer --render REPORT.json")
        print(render(json.loads(Path(argv[1]).read_text())))
        return 0
    args = parse_args(argv)
    try:
        from importlib.metadata import version

        litserve_version = version("litserve")
    except Exception:
        raise SystemExit("litserve is not installed: pip install -e '.[bench]'") from None
    import platform

    load_start = [round(x, 2) for x in os.getloadavg()]
    rows = run(args)
    report = {
        "meta": {
            "command": shlex.join(
                [f"OMP_NUM_THREADS={args.threads}", "python", "-m", "benchmarks.peer", *argv]
            ),
            "smoke": bool(args.smoke),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "threads": args.threads,
            "dtype": args.dtype,
            "runs": args.runs,
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "peer_batch_timeout_ms": args.peer_batch_timeout_ms,
            "litserve": litserve_version,
        },
        "comparison": compare(rows),
        "rows": rows,
    }
    md = render(report)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(
            json.dumps(sl._finite(report), indent=1, default=sl._jsonable) + "\n"
        )
        args.out.with_suffix(".md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

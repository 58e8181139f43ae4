"""Where one POST /respond spends its time on the service's event loop: cProfile over N requests.

Two modes:

* ``uvicorn`` (default): the real app under uvicorn (``--loop``, ``--http`` as ``python -m
  service`` would pick them) in this process's main thread, driven by a client in a child process
  (``--concurrency`` closed-loop workers, httpx, keep-alive), so the client's own work stays out
  of the profile. Only the event-loop thread is profiled (cProfile is per thread): the model call
  runs in the backend's worker thread and shows up here as the loop waiting (``select`` /
  ``run_once``). The warm-up requests run before the profiler starts.
* ``asgi``: the app in-process through ``httpx.ASGITransport`` (no sockets, no uvicorn, the
  client in the profile too): the FastAPI + middleware + engine part alone.

Prints the top entries by cumulative and by own time (per request: microseconds per request,
so runs of different N compare) and writes ``<out>.json``; ``--render A.json B.json --md
reports/http_profile.md`` puts several runs (e.g. before and after a change) in one report.

    .venv/bin/python -m benchmarks.profile_http --models-dir artifacts --requests 2000 \\
        --label after --out reports/http_profile_after
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.config import DAILYDIALOG
from training.eval.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
TOP = 25


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models-dir", type=Path, default=ROOT / "artifacts")
    p.add_argument("--backend", choices=("retrieval", "generative"), default="retrieval")
    p.add_argument("--mode", choices=("uvicorn", "asgi"), default="uvicorn")
    p.add_argument("--requests", type=int, default=2000, help="profiled requests")
    p.add_argument("--warmup", type=int, default=100, help="requests before the profiler starts")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    p.add_argument("--http", choices=("auto", "httptools", "h11"), default="auto")
    p.add_argument("--max-batch", type=int, default=16, help="DIALOGUE_MAX_BATCH")
    p.add_argument("--safety-filter", default="off", help="DIALOGUE_SAFETY_FILTER")
    p.add_argument("--log-level", default="warning", help="DIALOGUE_LOG_LEVEL")
    p.add_argument(
        "--data",
        type=Path,
        default=DAILYDIALOG,
        help="DailyDialog (test contexts); absent: a few fixed contexts",
    )
    p.add_argument("--top", type=int, default=TOP)
    p.add_argument("--label", default="run", help="the run's name in the report")
    p.add_argument("--out", type=Path, help="write <out>.json (and <out>.md)")
    p.add_argument("--render", type=Path, nargs="+", help="JSON files of earlier runs to report")
    p.add_argument("--md", type=Path, help="with --render: the markdown report to write")
    p.add_argument("--preface", type=Path, help="with --render: markdown put before the tables")
    p.add_argument(
        "--detail",
        type=int,
        nargs="+",
        help="with --render: the runs (1-based) whose top entries are listed (default: all)",
    )
    # internal: the child process that sends the requests
    p.add_argument("--drive", help=argparse.SUPPRESS)
    return p


FALLBACK_CONTEXTS = [
    ["hello , how are you ?"],
    ["what time is it ?", "it is ten o'clock ."],
    ["good morning !"],
    ["where are you going this weekend ?"],
]


def contexts_for(data: Path, count: int = 256) -> list[list[str]]:
    if (data / "test").is_dir():
        from benchmarks.service_load import load_contexts

        return load_contexts(data, count, 3, 0)
    return FALLBACK_CONTEXTS


def settings_for(args: argparse.Namespace) -> Any:
    from service.settings import Settings

    other = "generative" if args.backend == "retrieval" else "retrieval"
    values: dict[str, Any] = {
        "models_dir": Path(args.models_dir).resolve(),
        f"{other}_bundle": "off",
        "device": "cpu",
        "max_batch": args.max_batch,
        "max_queue": 4096,
        "request_timeout_s": 300.0,
        "fallback": False,
        "safety_filter": args.safety_filter,
        "log_level": args.log_level,
        "ab_weights": {args.backend: 1.0},
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def loop_and_http(loop: str, http: str) -> tuple[str, str]:
    """What ``auto`` means here (uvicorn's own rule: uvloop / httptools when installed)."""
    if loop != "auto" and http != "auto":
        return loop, http
    from service.__main__ import server_impl

    auto_loop, auto_http = server_impl()
    return (auto_loop if loop == "auto" else loop, auto_http if http == "auto" else http)


# --- the profile ---------------------------------------------------------------------------------


def top_entries(profile: cProfile.Profile, key: str, n: int, requests: int) -> list[dict[str, Any]]:
    """The ``n`` entries with the largest ``key`` ('cumulative' or 'tottime')."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": _name(file, line, func),
                "ncalls": nc,
                "primitive_calls": cc,
                "tottime_s": tt,
                "cumtime_s": ct,
                "tottime_us_per_request": tt / requests * 1e6,
                "cumtime_us_per_request": ct / requests * 1e6,
            }
        )
    field = "cumtime_s" if key == "cumulative" else "tottime_s"
    rows.sort(key=lambda r: r[field], reverse=True)
    return rows[:n]


# Own time summed by where the code lives, so runs compare as a whole; the first match wins.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle: waiting for events (epoll/kqueue/select)", ("select.epoll", "select.kqueue")),
    ("pydantic validation", ("validate_python", "validate_json", "validate_strings")),
    ("pydantic serialization", ("SchemaSerializer",)),
    ("orjson", ("orjson",)),
    ("json (stdlib)", ("/json/", "_json.")),
    ("prometheus_client (metrics)", ("prometheus_client/",)),
    ("logging", ("/logging/",)),
    ("email (Content-Type parsing)", ("/email/",)),
    ("thread handoff (executor, queues)", ("concurrent/futures", "SimpleQueue", "threading.py")),
    ("HTTP protocol (uvicorn, h11, httptools)", ("uvicorn/", "h11/", "httptools")),
    ("event loop (asyncio/uvloop, sockets)", ("asyncio/", "selectors.py", "uvloop", "socket")),
    ("starlette + fastapi", ("starlette/", "fastapi/")),
    ("service/ (this project)", ("service/",)),
    ("models/ (this project)", ("models/",)),
)


def grouped(profile: cProfile.Profile, requests: int) -> list[dict[str, Any]]:
    """Own time and calls per request in each of GROUPS (and "other"), over every entry."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    totals: dict[str, list[float]] = {name: [0.0, 0.0] for name, _ in GROUPS}
    totals["other"] = [0.0, 0.0]
    for (file, _line, func), (_cc, nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = f"{file}:{func}"
        group = next((g for g, keys in GROUPS if any(k in name for k in keys)), "other")
        totals[group][0] += tt
        totals[group][1] += nc
    return [
        {
            "group": g,
            "own_us_per_request": t / requests * 1e6,
            "calls_per_request": n / requests,
        }
        for g, (t, n) in totals.items()
    ]


def _name(file: str, line: int, func: str) -> str:
    if file == "~":  # a builtin
        return func
    path = file
    for marker in ("site-packages/", str(ROOT) + "/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{line}({func})"


async def _drive_child(url: str, args: argparse.Namespace) -> None:
    """The client process: warm up, say so, wait for 'go', send the profiled requests."""
    from benchmarks.service_load import make_client, run_cell

    contexts = contexts_for(args.data)
    async with make_client(url, args.concurrency) as client:
        for _ in range(600):
            with contextlib.suppress(Exception):
                if (await client.get("/readyz")).status_code == 200:
                    break
            await asyncio.sleep(0.1)
        await run_cell(
            client,
            args.backend,
            contexts,
            concurrency=args.concurrency,
            requests=args.warmup,
            warmup=0,
        )
        print("warm", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        cell = await run_cell(
            client,
            args.backend,
            contexts,
            concurrency=args.concurrency,
            requests=args.requests,
            warmup=0,
        )
        print(json.dumps(cell.summary()), flush=True)


def profile_uvicorn(args: argparse.Namespace) -> tuple[cProfile.Profile, dict[str, Any], float]:
    import uvicorn

    from benchmarks.service_load import free_port
    from service.app import create_app

    loop, http = loop_and_http(args.loop, args.http)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings_for(args)),
        host="127.0.0.1",
        port=port,
        http=http,
        loop="none",  # the loop is the one this function runs in (below)
        log_level=args.log_level,
    )
    server = uvicorn.Server(config)
    profile = cProfile.Profile()
    result: dict[str, Any] = {}
    wall = 0.0

    async def main() -> None:
        nonlocal wall
        serving = asyncio.create_task(server.serve())
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.profile_http",
            *_child_argv(args),
            "--drive",
            f"http://127.0.0.1:{port}",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        line = await child.stdout.readline()
        if line.strip() != b"warm":
            raise RuntimeError(f"the client process said {line!r}")
        started = time.perf_counter()
        profile.enable()
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        summary = await child.stdout.readline()
        profile.disable()
        wall = time.perf_counter() - started
        await child.wait()
        result.update(json.loads(summary))
        server.should_exit = True
        await serving

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    result["loop"], result["http"] = loop, http
    return profile, result, wall


def _child_argv(args: argparse.Namespace) -> list[str]:
    return [
        "--backend",
        args.backend,
        "--requests",
        str(args.requests),
        "--warmup",
        str(args.warmup),
        "--concurrency",
        str(args.concurrency),
        "--data",
        str(args.data),
    ]


def profile_asgi(args: argparse.Namespace) -> tuple[cProfile.Profile, dict[str, Any], float]:
    import httpx

    from benchmarks.service_load import make_client, run_cell
    from service.app import create_app

    app = create_app(settings_for(args))
    contexts = contexts_for(args.data)
    profile = cProfile.Profile()
    result: dict[str, Any] = {}
    wall = 0.0

    async def main() -> None:
        nonlocal wall
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with make_client("http://test", args.concurrency, transport=transport) as c:
                kw = {"concurrency": args.concurrency, "warmup": 0}
                await run_cell(c, args.backend, contexts, requests=args.warmup, **kw)
                started = time.perf_counter()
                profile.enable()
                cell = await run_cell(c, args.backend, contexts, requests=args.requests, **kw)
                profile.disable()
                wall = time.perf_counter() - started
        result.update(cell.summary())

    asyncio.run(main())
    result["loop"], result["http"] = "asyncio", "asgi (in-process)"
    return profile, result, wall


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    load = [round(x, 2) for x in os.getloadavg()]
    if args.mode == "uvicorn":
        profile, cell, wall = profile_uvicorn(args)
    else:
        profile, cell, wall = profile_asgi(args)
    n = args.requests
    return {
        "label": args.label,
        "command": " ".join(["python -m benchmarks.profile_http", *argv]),
        "mode": args.mode,
        "backend": args.backend,
        "requests": n,
        "concurrency": args.concurrency,
        "loop": cell.get("loop"),
        "http": cell.get("http"),
        "wall_s": round(wall, 3),
        "client": {k: cell.get(k) for k in ("p50_ms", "p99_ms", "throughput_rps", "errors")},
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": load,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "groups": grouped(profile, n),
        "cumulative": top_entries(profile, "cumulative", args.top, n),
        "tottime": top_entries(profile, "tottime", args.top, n),
    }


# --- report --------------------------------------------------------------------------------------


def _table(rows: Sequence[dict[str, Any]], key: str) -> list[str]:
    col = "cumtime_us_per_request" if key == "cumulative" else "tottime_us_per_request"
    other = "tottime_us_per_request" if key == "cumulative" else "cumtime_us_per_request"
    body = [
        [
            str(i + 1),
            f"{r[col]:.1f}",
            f"{r[other]:.1f}",
            f"{r['ncalls'] / max(1, 1):.0f}",
            f"`{r['function']}`",
        ]
        for i, r in enumerate(rows)
    ]
    first = "cum us/req" if key == "cumulative" else "own us/req"
    second = "own us/req" if key == "cumulative" else "cum us/req"
    return markdown_table(["#", first, second, "calls", "function"], body, align="rrrrl").split(
        "\n"
    )


def render_run(run: dict[str, Any]) -> list[str]:
    m = run["machine"]
    c = run["client"]
    lines = [
        f"## {run['label']}",
        "",
        f"Command: `{run['command']}`",
        "",
        f"{run['requests']} profiled POST /respond ({run['backend']}), concurrency "
        f"{run['concurrency']}, mode {run['mode']}, loop {run['loop']}, http {run['http']}; "
        f"load average {m['load_average_at_start']} at start, {m['load_average_at_end']} at end "
        f"({m['cpu_count']} CPUs). Client under the profiler: p50 {_ms(c['p50_ms'])} ms, p99 "
        f"{_ms(c['p99_ms'])} ms, {_ms(c['throughput_rps'])} req/s, errors {c['errors']} "
        "(cProfile slows what it traces: compare entries, not these latencies).",
        "",
        f"### Top {len(run['cumulative'])} by cumulative time (per request)",
        "",
        *_table(run["cumulative"], "cumulative"),
        "",
        f"### Top {len(run['tottime'])} by own time (per request)",
        "",
        *_table(run["tottime"], "tottime"),
        "",
    ]
    return lines


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def render_groups(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Own time per request by group (GROUPS), one column per run: "us (calls)"."""
    names = [g["group"] for g in runs[0]["groups"]]
    body = []
    for name in names:
        row = [name]
        for r in runs:
            g = next((x for x in r.get("groups", []) if x["group"] == name), None)
            row.append(
                "-"
                if g is None
                else f"{g['own_us_per_request']:.0f} ({g['calls_per_request']:.1f})"
            )
        body.append(row)
    busy = ["Python-visible busy time (all but idle)"]
    for r in runs:
        total = sum(
            g["own_us_per_request"]
            for g in r.get("groups", [])
            if not g["group"].startswith("idle")
        )
        busy.append(f"**{total:.0f}**")
    body.append(busy)
    heads = ["own us per request (calls per request)"] + [f"run {i + 1}" for i in range(len(runs))]
    legend = [f"run {i + 1}: {r['label']}" for i, r in enumerate(runs)]
    table = markdown_table(heads, body, align="l" + "r" * len(runs)).split("\n")
    return [*(f"- {x}" for x in legend), "", *table, ""]


def render(
    runs: Sequence[dict[str, Any]], preface: str = "", detail: Sequence[int] | None = None
) -> str:
    lines = ["# The HTTP path under cProfile", ""]
    if preface:
        lines += [preface.strip(), ""]
    if all("groups" in r for r in runs):
        lines += ["## Where the event loop's time goes, by group", "", *render_groups(runs)]
    for i, r in enumerate(runs):
        if detail is None or i in detail:
            lines += render_run(r)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.drive:
        asyncio.run(_drive_child(args.drive, args))
        return 0
    if args.render:
        runs = [json.loads(Path(p).read_text()) for p in args.render]
        preface = args.preface.read_text() if args.preface else ""
        detail = [i - 1 for i in args.detail] if args.detail else None
        md = render(runs, preface, detail)
        if args.md:
            args.md.write_text(md)
        print(md)
        return 0
    report = run(args, argv)
    print("\n".join(render_run(report)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

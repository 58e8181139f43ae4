"""The report of ``benchmarks/service_load.py``: batching on/off ratios, the threads x workers sweep,
the HTTP overhead against the in-process baseline, the issue's targets and the markdown page."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from benchmarks.service_process import BACKEND_NAMES
from training.eval.tables import markdown_table as table

TARGET_RETRIEVAL_P50_MS = 15.0
TARGET_GENERATIVE_SPEEDUP = 3.0
TARGET_OVERHEAD_P50_MS = 2.0


# --- report ---------------------------------------------------------------------------------------


def _cell(cells: Sequence[dict[str, Any]], backend: str, batching: str, conc: int) -> Any:
    for c in cells:
        if (c["backend"], c["batching"], c["concurrency"]) == (backend, batching, conc):
            return c
    return None


def ratios(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batching on/off throughput and p50 ratios for every backend x concurrency with both."""
    out = []
    for backend in BACKEND_NAMES:
        concs = sorted({c["concurrency"] for c in cells if c["backend"] == backend})
        for conc in concs:
            on, off = _cell(cells, backend, "on", conc), _cell(cells, backend, "off", conc)
            if on is None or off is None:
                continue
            out.append(
                {
                    "backend": backend,
                    "concurrency": conc,
                    "throughput_on_rps": on["throughput_rps"],
                    "throughput_off_rps": off["throughput_rps"],
                    "throughput_ratio_on_off": on["throughput_rps"] / off["throughput_rps"],
                    "p50_ratio_on_off": on["p50_ms"] / off["p50_ms"],
                }
            )
    return out


def sweep(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every workers x threads combination against the first one measured, cell by cell
    (backend, batching, concurrency): throughput and p50 ratios. Empty for one combination."""
    configs = list(dict.fromkeys((c.get("workers", 1), c.get("threads", 1)) for c in cells))
    if len(configs) < 2:
        return []
    base_config = configs[0]
    by_key = {
        (c["backend"], c["batching"], c["concurrency"], c.get("workers", 1), c.get("threads", 1)): c
        for c in cells
    }
    out = []
    for c in cells:
        config = (c.get("workers", 1), c.get("threads", 1))
        base = by_key.get((c["backend"], c["batching"], c["concurrency"], *base_config))
        if base is None:
            continue
        out.append(
            {
                "backend": c["backend"],
                "batching": c["batching"],
                "concurrency": c["concurrency"],
                "workers": config[0],
                "threads": config[1],
                "throughput_rps": c["throughput_rps"],
                "p50_ms": c["p50_ms"],
                "throughput_vs_first": c["throughput_rps"] / base["throughput_rps"]
                if base["throughput_rps"]
                else float("nan"),
                "p50_vs_first": c["p50_ms"] / base["p50_ms"] if base["p50_ms"] else float("nan"),
            }
        )
    out.sort(
        key=lambda r: (r["backend"], r["batching"], r["concurrency"], r["workers"], r["threads"])
    )
    return out


def overheads(
    cells: Sequence[dict[str, Any]], inprocess: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """HTTP p50 (concurrency 1, batching off) against the in-process p50, per backend."""
    out = []
    for backend, base in inprocess.items():
        http = _cell(cells, backend, "off", 1)
        if http is None:
            continue
        out.append(
            {
                "backend": backend,
                "http_p50_ms": http["p50_ms"],
                "server_p50_ms": http["server_p50_ms"],
                "inprocess_p50_ms": base["p50_ms"],
                "overhead_p50_ms": http["p50_ms"] - base["p50_ms"],
                "http_over_inprocess": http["p50_ms"] / base["p50_ms"],
            }
        )
    return out


def targets(
    cells: Sequence[dict[str, Any]],
    ratio_rows: Sequence[dict[str, Any]],
    overhead_rows: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The issue's three goals, each met / not met / not measured, with the measured number."""

    def row(goal: str, value: float | None, limit: float, higher_is_better: bool) -> dict[str, Any]:
        if value is None or math.isnan(value):
            status = "not measured"
        elif higher_is_better:
            status = "met" if value >= limit else "not met"
        else:
            status = "met" if value <= limit else "not met"
        return {"goal": goal, "target": limit, "measured": value, "status": status}

    out = []
    on = _cell(cells, "retrieval", "on", 1)
    out.append(
        row(
            "retrieval p50 over HTTP, ms (concurrency 1, batching on = service defaults)",
            on["p50_ms"] if on else None,
            TARGET_RETRIEVAL_P50_MS,
            higher_is_better=False,
        )
    )
    off = _cell(cells, "retrieval", "off", 1)
    out.append(
        row(
            "retrieval p50 over HTTP, ms (concurrency 1, batching off)",
            off["p50_ms"] if off else None,
            TARGET_RETRIEVAL_P50_MS,
            higher_is_better=False,
        )
    )
    speedup = next(
        (
            r["throughput_ratio_on_off"]
            for r in ratio_rows
            if r["backend"] == "generative" and r["concurrency"] == 32
        ),
        None,
    )
    out.append(
        row(
            "generative throughput at concurrency 32, batching on / off",
            speedup,
            TARGET_GENERATIVE_SPEEDUP,
            higher_is_better=True,
        )
    )
    for backend in BACKEND_NAMES:
        o = next((r for r in overhead_rows if r["backend"] == backend), None)
        out.append(
            row(
                f"{backend}: HTTP + metrics overhead, p50 ms (HTTP c=1 off - in-process)",
                o["overhead_p50_ms"] if o else None,
                TARGET_OVERHEAD_P50_MS,
                higher_is_better=False,
            )
        )
    return out


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return table(headers, [[_f(v) for v in r] for r in rows], align="l" * len(headers)).split("\n")


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "# Service load: latency and throughput over HTTP",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs, "
        f"{meta['threads']} torch/OpenMP thread(s) in the server and in-process (swept: "
        f"threads {meta.get('threads_swept', [meta['threads']])}, uvicorn workers "
        f"{meta.get('workers_swept', [1])}), load average "
        f"at start {meta['machine']['load_average_at_start']}, Python "
        f"{meta['machine']['python']}, torch {meta['machine']['torch']}; whole run "
        f"{meta.get('total_wall_s', '-')} s.",
        "",
        f"Server: `python -m service` on 127.0.0.1, device {meta['device']}, bundles "
        f"`{meta['generative_bundle']}` and `{meta['retrieval_bundle']}`; micro-batching on = "
        f"MAX_BATCH={meta['max_batch']}, off = MAX_BATCH=1; MAX_WAIT_MS={meta['max_wait_ms']}, "
        f"CONTINUOUS_BATCHING={meta.get('continuous_batching', 'auto')}, "
        f"GENERATIVE_RERANK={_or_default(meta.get('generative_rerank'))}, "
        f"GENERATIVE_RERANK_BELOW={_or_default(meta.get('generative_rerank_below'))}, "
        f"MAX_QUEUE={meta['max_queue']}, REQUEST_TIMEOUT_S={meta['request_timeout_s']}, "
        f"FALLBACK=off, LOG_LEVEL={meta['server_log_level']}, OMP_WAIT_POLICY "
        f"{meta.get('server_omp_wait_policy', 'unset')}.",
        "",
        f"Load: closed loop, N workers each with its own keep-alive connection (httpx), "
        f"{meta['warmup']} untimed warm-up requests per cell (at least one per worker), then "
        f"{meta['requests']} timed requests per cell; {meta['contexts']} DailyDialog test "
        f"contexts of up to {meta['context_turns']} turns, cycled. Latency is the client's "
        "(request sent to JSON parsed); throughput is successful requests per wall second. "
        "**The load generator shares the CPU cores with the server**, so the numbers include its "
        "cost and contention (more so at high concurrency); p99 over a few dozen requests is "
        "close to the maximum.",
        "",
        "## Cells",
        "",
    ]
    lines += _table(
        [
            "backend",
            "batching",
            "workers",
            "threads",
            "concurrency",
            "requests",
            "errors",
            "p50 ms",
            "p99 ms",
            "mean ms",
            "server p50 ms",
            "req/s",
            "max ms (all)",
            "statuses",
        ],
        [
            [
                c["backend"],
                c["batching"],
                c.get("workers", 1),
                c.get("threads", 1),
                c["concurrency"],
                int(c["n"]),
                int(c["errors"]),
                c["p50_ms"],
                c["p99_ms"],
                c["mean_ms"],
                c["server_p50_ms"],
                c["throughput_rps"],
                c.get("max_all_ms"),
                " ".join(f"{k}:{v}" for k, v in c.get("statuses", {}).items()) or "-",
            ]
            for c in report["cells"]
        ],
    )
    lines += [
        "",
        "server p50 = the service's own `latency_ms` (queue + model call, no HTTP). max ms (all) "
        "= the slowest response of the cell, errors (429, 504) included.",
        "",
        "## Micro-batching on vs off",
        "",
    ]
    lines += _table(
        ["backend", "concurrency", "req/s on", "req/s off", "throughput on/off", "p50 on/off"],
        [
            [
                r["backend"],
                r["concurrency"],
                r["throughput_on_rps"],
                r["throughput_off_rps"],
                r["throughput_ratio_on_off"],
                r["p50_ratio_on_off"],
            ]
            for r in report["ratios"]
        ],
    )
    if report.get("sweep"):
        lines += [
            "",
            "## Threads and workers",
            "",
            "Each workers x threads combination against the first one (the on/off ratios, "
            "overhead and targets below are the first's); choose the one with the best "
            "throughput at an unchanged p50.",
            "",
        ]
        lines += _table(
            [
                "backend",
                "batching",
                "concurrency",
                "workers",
                "threads",
                "req/s",
                "p50 ms",
                "throughput / first",
                "p50 / first",
            ],
            [
                [
                    r["backend"],
                    r["batching"],
                    r["concurrency"],
                    r["workers"],
                    r["threads"],
                    r["throughput_rps"],
                    r["p50_ms"],
                    r["throughput_vs_first"],
                    r["p50_vs_first"],
                ]
                for r in report["sweep"]
            ],
        )
    lines += [
        "",
        "## HTTP + metrics overhead vs in-process",
        "",
        "In-process = the worker thread's batch-1 call (`backend.infer`: the model and the output "
        "safety filter, loaded as the service loads them); overhead = HTTP p50 - in-process p50 "
        "(queue hand-off, validation, routing, metrics, the HTTP exchange and the client).",
        "",
    ]
    lines += _table(
        ["backend", "in-process p50 ms", "in-process p99 ms", "n"],
        [[b, s["p50_ms"], s["p99_ms"], int(s["n"])] for b, s in report["inprocess"].items()],
    )
    lines += [""]
    lines += _table(
        [
            "backend",
            "HTTP p50 ms (c=1, off)",
            "server p50 ms",
            "in-process p50 ms",
            "overhead ms",
            "HTTP / in-process",
        ],
        [
            [
                r["backend"],
                r["http_p50_ms"],
                r["server_p50_ms"],
                r["inprocess_p50_ms"],
                r["overhead_p50_ms"],
                r["http_over_inprocess"],
            ]
            for r in report["overhead"]
        ],
    )
    lines += ["", "## Targets", ""]
    lines += _table(
        ["goal", "target", "measured", "status"],
        [[t["goal"], t["target"], t["measured"], t["status"]] for t in report["targets"]],
    )
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def _or_default(value: object) -> str:
    """A setting the run left to the service (None) reads "default"."""
    return "default" if value is None else str(value)

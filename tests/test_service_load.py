"""benchmarks/service_load.py: its statistics, arguments, report, and a tiny in-process load run."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from service_fixtures import CONTEXTS, build_tiny_bundles, make_settings

from benchmarks import service_load as sl
from service.app import create_app


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


# --- statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = list(np.random.default_rng(0).exponential(size=37))
    assert sl.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert sl.percentile([3.0], 99) == 3.0
    assert sl.percentile([4.0, 1.0, 2.0, 3.0], 50) == 2.5  # unsorted input
    with pytest.raises(ValueError):
        sl.percentile([], 50)
    with pytest.raises(ValueError):
        sl.percentile([1.0], 101)


def test_summarize_math() -> None:
    s = sl.summarize([0.001, 0.002, 0.003, 0.004], wall_s=0.5, errors=1)
    assert s["n"] == 4 and s["errors"] == 1
    assert s["p50_ms"] == pytest.approx(2.5)
    assert s["mean_ms"] == pytest.approx(2.5)
    assert s["p99_ms"] == pytest.approx(3.97)
    assert s["throughput_rps"] == pytest.approx(8.0)  # successful requests only
    empty = sl.summarize([], wall_s=1.0, errors=3)
    assert math.isnan(empty["p50_ms"]) and empty["throughput_rps"] == 0.0


# --- arguments -------------------------------------------------------------------------------


def test_parse_args_defaults_and_overrides() -> None:
    args = sl.parse_args([])
    assert args.concurrency == [1, 8, 32]
    assert args.batching == ["on", "off"] and args.backends == ["retrieval", "generative"]
    assert sl.requests_for(args, "retrieval") == 1000
    assert sl.requests_for(args, "generative") == 384
    args = sl.parse_args(
        ["--requests-per-cell", "8", "--concurrency", "1,2", "--batching", "off", "--threads", "2"]
    )
    assert args.concurrency == [1, 2] and args.batching == ["off"] and args.threads == [2]
    assert args.workers == [1]
    assert sl.requests_for(args, "retrieval") == sl.requests_for(args, "generative") == 8


@pytest.mark.parametrize(
    "argv",
    [
        ["--concurrency", "1,x"],
        ["--concurrency", "0"],
        ["--concurrency", "2,2"],
        ["--batching", "maybe"],
        ["--backends", "retrieval,nope"],
        ["--requests-per-cell", "0"],
        ["--max-batch", "1"],
    ],
)
def test_parse_args_rejects(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        sl.parse_args(argv)


def test_server_env_sets_batching_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIALOGUE_ADMIN_TOKEN", "secret")
    args = sl.parse_args(["--threads", "2", "--max-batch", "8"])
    env = sl.server_env(args, 12345, max_batch=1)
    assert "DIALOGUE_ADMIN_TOKEN" not in env
    assert env["DIALOGUE_MAX_BATCH"] == "1" and env["DIALOGUE_PORT"] == "12345"
    assert env["OMP_NUM_THREADS"] == "2" and env["DIALOGUE_FALLBACK"] == "off"
    assert env["DIALOGUE_TORCH_THREADS"] == "2" and env["DIALOGUE_WORKERS"] == "1"
    assert env["DIALOGUE_LOG_LEVEL"] == "warning"


def test_threads_and_workers_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    args = sl.parse_args(["--threads", "1,2", "--workers", "1,2"])
    assert args.threads == [1, 2] and args.workers == [1, 2]
    env = sl.server_env(args, 1, max_batch=16, threads=2, workers=2)
    assert env["DIALOGUE_TORCH_THREADS"] == env["OMP_NUM_THREADS"] == "2"
    assert env["DIALOGUE_WORKERS"] == "2"
    # readiness of several workers is read from their "ready:" lines, logged at info
    assert env["DIALOGUE_LOG_LEVEL"] == "info"
    cells = [
        {**_cell("retrieval", "on", 8, 10.0, 100.0), "workers": 1, "threads": 1},
        {**_cell("retrieval", "on", 8, 12.0, 150.0), "workers": 2, "threads": 1},
        {**_cell("retrieval", "on", 8, 9.0, 90.0), "workers": 1, "threads": 2},
    ]
    rows = {(r["workers"], r["threads"]): r for r in sl.sweep(cells)}
    assert rows[(2, 1)]["throughput_vs_first"] == pytest.approx(1.5)
    assert rows[(2, 1)]["p50_vs_first"] == pytest.approx(1.2)
    assert rows[(1, 1)]["throughput_vs_first"] == pytest.approx(1.0)
    assert sl.sweep(cells[:1]) == []


def test_server_env_sets_or_clears_the_omp_wait_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # e.g. set by benchmarks/__init__.py
    env = sl.server_env(sl.parse_args([]), 1, max_batch=1)
    assert "OMP_WAIT_POLICY" not in env  # unset: as the service runs by default
    args = sl.parse_args(["--server-omp-wait-policy", "active"])
    assert sl.server_env(args, 1, max_batch=1)["OMP_WAIT_POLICY"] == "ACTIVE"


# --- report ----------------------------------------------------------------------------------


def _cell(backend: str, batching: str, conc: int, p50: float, rps: float) -> dict[str, Any]:
    return {
        "backend": backend,
        "batching": batching,
        "concurrency": conc,
        "n": 10.0,
        "errors": 0.0,
        "p50_ms": p50,
        "p99_ms": p50 * 2,
        "mean_ms": p50,
        "server_p50_ms": p50 - 1,
        "throughput_rps": rps,
        "models": ["m"],
    }


def test_ratios_overheads_targets_and_markdown() -> None:
    cells = [
        _cell("retrieval", "on", 1, 12.0, 80.0),
        _cell("retrieval", "off", 1, 7.0, 140.0),
        _cell("generative", "on", 32, 400.0, 60.0),
        _cell("generative", "off", 32, 1000.0, 15.0),
        _cell("generative", "off", 1, 40.0, 25.0),
    ]
    inproc = {
        "retrieval": {"p50_ms": 5.5, "p99_ms": 6.0, "n": 10.0},
        "generative": {"p50_ms": 37.0, "p99_ms": 50.0, "n": 10.0},
    }
    r = sl.ratios(cells)
    gen32 = next(x for x in r if x["backend"] == "generative" and x["concurrency"] == 32)
    assert gen32["throughput_ratio_on_off"] == pytest.approx(4.0)
    o = {x["backend"]: x for x in sl.overheads(cells, inproc)}
    assert o["retrieval"]["overhead_p50_ms"] == pytest.approx(1.5)
    assert o["generative"]["overhead_p50_ms"] == pytest.approx(3.0)
    t = sl.targets(cells, r, list(o.values()))
    assert [x["status"] for x in t] == ["met", "met", "met", "met", "not met"]
    report = {
        "meta": {
            "command": "python -m benchmarks.service_load",
            "machine": {
                "platform": "Linux",
                "cpu_count": 2,
                "load_average_at_start": [0.1],
                "python": "3.11",
                "torch": "2",
            },
            **{
                k: 1
                for k in (
                    "threads",
                    "device",
                    "generative_bundle",
                    "retrieval_bundle",
                    "max_batch",
                    "max_wait_ms",
                    "max_queue",
                    "request_timeout_s",
                    "server_log_level",
                    "warmup",
                    "requests",
                    "contexts",
                    "context_turns",
                )
            },
        },
        "cells": cells,
        "inprocess": inproc,
        "ratios": r,
        "overhead": list(o.values()),
        "targets": t,
    }
    report["sweep"] = sl.sweep(
        [{**cells[0], "workers": 1, "threads": 1}, {**cells[0], "workers": 2, "threads": 1}]
    )
    md = sl.render_markdown(report)
    assert "## Threads and workers" in md
    assert "| generative | 32 | 60.00 | 15.00 | 4.00 | 0.40 |" in md
    assert "shares the CPU cores" in md and "not met" in md
    assert sl._finite({"a": [float("nan"), 1.0]}) == {"a": [None, 1.0]}


def test_targets_not_measured_when_cells_missing() -> None:
    t = sl.targets([], [], [])
    assert {x["status"] for x in t} == {"not measured"}


# --- a tiny end-to-end run against an in-process app ---------------------------------------------


def test_load_run_against_in_process_app(models_dir: Path) -> None:
    app = create_app(make_settings(models_dir, max_batch=4, max_queue=256))
    contexts = [[c] for c in CONTEXTS]

    async def go() -> list[sl.CellResult]:
        results = []
        async with app.router.lifespan_context(app):
            for backend in ("retrieval", "generative"):
                for conc in (1, 3):
                    transport = httpx.ASGITransport(app=app)
                    async with sl.make_client("http://test", conc, transport=transport) as client:
                        results.append(
                            await sl.run_cell(
                                client, backend, contexts, concurrency=conc, requests=6, warmup=2
                            )
                        )
        return results

    for cell in asyncio.run(go()):
        s = cell.summary()
        assert s["errors"] == 0, s
        assert s["statuses"] == {"200": 6} and s["max_all_ms"] >= s["p99_ms"]
        assert s["n"] == 6 and s["throughput_rps"] > 0 and s["p99_ms"] >= s["p50_ms"] > 0
        assert len(s["models"]) == 1 and s["server_p50_ms"] > 0


def test_errors_are_counted_not_timed(models_dir: Path) -> None:
    app = create_app(make_settings(models_dir))

    async def go() -> sl.CellResult:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with sl.make_client("http://test", 2, transport=transport) as client:
                # an empty turn is a 422
                return await sl.run_cell(
                    client, "retrieval", [[""]], concurrency=2, requests=4, warmup=0
                )

    cell = asyncio.run(go())
    assert cell.errors == 4 and not cell.latencies_s
    assert cell.error_samples[0].startswith("HTTP 422")
    assert cell.statuses == {"422": 4} and len(cell.all_latencies_s) == 4


def test_inprocess_baseline_on_tiny_bundles(models_dir: Path) -> None:
    contexts = [[c] for c in CONTEXTS]
    for backend, name in (("retrieval", "retriever-g2r"), ("generative", "generator-nd")):
        times, model_id = sl.inprocess_latencies(backend, models_dir, name, contexts, 5, 1)
        assert len(times) == 5 and all(t > 0 for t in times)
        assert model_id.startswith(name)

"""The HTTP hot path (issue 17, items 3-5): JSON bodies, uvicorn's loop and parser, workers,
the profiling harness and the LitServe peer (its server itself: a slow test)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from service_fixtures import CONTEXTS, build_tiny_bundles, make_settings
from starlette.responses import JSONResponse

from benchmarks import peer, profile_http
from benchmarks import service_load as sl
from service import __main__ as service_main
from service.app import create_app
from service.json_response import FastJSONResponse, dumps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


# --- JSON bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        {"error": {"type": "validation_error", "message": 'body.context: é \u2028 😀 "q" \\'}},
        {"a": [1, 2.5, None, True, False], "b": {"c": ""}, "n": -0.125, "big": 2**53},
        [],
    ],
)
def test_orjson_bodies_parse_to_the_same_json(content: Any) -> None:
    ours = FastJSONResponse(content).body
    theirs = JSONResponse(content).body
    assert json.loads(ours) == json.loads(theirs) == content
    assert dumps(content) == ours


def test_respond_body_is_the_models_json(models_dir: Path) -> None:
    """POST /respond serializes the engine's reply once: no null fields, the declared keys, the
    same JSON as FastAPI's response_model path; errors stay {"error": {...}}."""
    app = create_app(make_settings(models_dir))

    async def go() -> tuple[httpx.Response, httpx.Response, dict[str, Any]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                ok = await c.post(
                    "/respond", json={"context": [CONTEXTS[0]], "backend": "retrieval"}
                )
                bad = await c.post("/respond", json={"context": []})
                schema = (await c.get("/openapi.json")).json()
        return ok, bad, schema

    ok, bad, schema = asyncio.run(go())
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/json"
    body = json.loads(ok.content)
    assert None not in body.values() and "filtered" not in body
    assert set(body) <= {
        "response",
        "request_id",
        "backend",
        "arm",
        "model",
        "latency_ms",
        "candidates",
        "filtered",
    }
    assert body["request_id"] == ok.headers["x-request-id"] and body["backend"] == "retrieval"
    assert bad.status_code == 422 and set(bad.json()["error"]) == {"type", "message"}
    # the response model still documents the route
    respond = schema["paths"]["/respond"]["post"]["responses"]["200"]
    assert respond["content"]["application/json"]["schema"]["$ref"].endswith("RespondResponse")


# --- uvicorn's loop and parser, workers ------------------------------------------------------------


def test_server_impl_falls_back_without_uvloop_and_httptools(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert service_main.server_impl() == ("asyncio", "h11")


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@contextlib.contextmanager
def _uvicorn(app: Any, loop: str, http: str) -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, loop=loop, http=http, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.mark.parametrize(
    ("loop", "http"),
    [
        ("asyncio", "h11"),
        pytest.param(
            "uvloop",
            "httptools",
            marks=pytest.mark.skipif(
                not (_installed("uvloop") and _installed("httptools")),
                reason="uvloop/httptools not installed",
            ),
        ),
    ],
)
def test_app_answers_under_each_loop_and_parser(models_dir: Path, loop: str, http: str) -> None:
    app = create_app(make_settings(models_dir))
    with (
        _uvicorn(app, loop, http) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
    ):
        r = client.post("/respond", json={"context": [CONTEXTS[1]], "backend": "generative"})
        assert r.status_code == 200, r.text
        assert r.json()["backend"] == "generative"
        assert client.get("/readyz").json()["status"] == "ready"


def test_main_starts_workers_from_an_import_string(
    monkeypatch: pytest.MonkeyPatch, models_dir: Path
) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(service_main.uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setenv("DIALOGUE_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("DIALOGUE_WORKERS", "3")
    service_main.main()
    app, kw = calls[-1]
    assert app == "service.__main__:worker_app" and kw["factory"] is True and kw["workers"] == 3
    assert (kw["loop"], kw["http"]) == service_main.server_impl()
    assert kw["access_log"] is False
    # each worker builds its app from the same environment
    assert service_main.worker_app().state.settings.models_dir == models_dir
    monkeypatch.setenv("DIALOGUE_WORKERS", "1")
    service_main.main()
    assert not isinstance(calls[-1][0], str) and "workers" not in calls[-1][1]


# --- the profiling harness -----------------------------------------------------------------------


def test_profile_harness_in_process(models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "profile"
    argv = [
        "--mode", "asgi", "--models-dir", str(models_dir), "--requests", "6", "--warmup", "2",
        "--data", str(tmp_path / "none"), "--top", "5", "--label", "t", "--out", str(out),
    ]  # fmt: skip
    assert profile_http.main(argv) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["client"]["errors"] == 0 and len(report["cumulative"]) == 5
    assert report["tottime"][0]["tottime_s"] >= report["tottime"][-1]["tottime_s"]
    md = tmp_path / "p.md"
    assert profile_http.main(["--render", str(out.with_suffix(".json")), "--md", str(md)]) == 0
    assert "## t" in md.read_text() and "by own time" in md.read_text()


# --- the peer ------------------------------------------------------------------------------------


def test_peer_shares_the_load_arguments_and_runs_generation_first() -> None:
    args = peer.parse_args(["--concurrency", "1,4", "--requests-per-cell", "7"])
    assert args.backends == ["generative", "retrieval"] and args.concurrency == [1, 4]
    assert args.requests_per_cell == 7 and args.warmup == 16 and args.runs == 3
    assert sl.parse_args([]).backends == list(sl.BACKEND_NAMES)


def test_peer_comparison_math_and_report() -> None:
    assert peer.order_of(1) == ("ours", "litserve") and peer.order_of(2) == ("litserve", "ours")

    def row(server: str, run: int, rps: float, p50: float) -> dict[str, Any]:
        return {
            "server": server, "run": run, "backend": "retrieval", "batching": "on",
            "concurrency": 8, "throughput_rps": rps, "p50_ms": p50, "p99_ms": 2 * p50,
            "errors": 0.0,
        }  # fmt: skip

    rows = [
        row("ours", 1, 100.0, 10.0), row("ours", 2, 300.0, 30.0), row("ours", 3, 200.0, 20.0),
        row("litserve", 1, 100.0, 10.0), row("litserve", 2, 100.0, 40.0),
        row("litserve", 3, 100.0, 10.0),
    ]  # fmt: skip
    (c,) = peer.compare(rows)
    assert c["throughput_ratio"] == pytest.approx(2.0)  # medians 200 / 100
    assert c["p50_ratio"] == pytest.approx(2.0) and c["p99_ratio"] == pytest.approx(2.0)
    assert math.isnan(peer._ratio(1.0, float("nan")))
    meta = {
        "command": "x", "smoke": True, "platform": "p", "cpu_count": 2,
        "load_average_at_start": [1], "load_average_at_end": [1], "threads": 1, "runs": 3,
        "max_batch": 16, "max_wait_ms": 5, "peer_batch_timeout_ms": 5, "litserve": "0",
    }  # fmt: skip
    md = peer.render({"meta": meta, "comparison": [c]})
    assert "SMOKE TEST" in md and "| retrieval | on | 8 | 200.0 / 100.0 | 2.00 |" in md


def test_peer_api_answers_like_the_service(models_dir: Path) -> None:
    pytest.importorskip("litserve")
    from benchmarks.peer_litserve import ResponderAPI

    for backend, bundle in (("retrieval", "retriever-g2r"), ("generative", "generator-nd")):
        for max_batch in (1, 4):
            api = ResponderAPI(backend, models_dir / bundle, max_batch_size=max_batch)
            api.setup("cpu")
            decoded = api.decode_request({"context": ["  " + CONTEXTS[0]], "backend": backend})
            assert decoded == [CONTEXTS[0]]
            out = api.predict([decoded, decoded] if max_batch > 1 else decoded)
            texts = out if max_batch > 1 else [out]
            assert all(isinstance(t, str) for t in texts) and len(texts) == (
                2 if max_batch > 1 else 1
            )
            body = api.encode_response(texts[0])
            assert body["backend"] == backend and body["model"].startswith(bundle)


@pytest.mark.slow
def test_peer_server_answers_one_request(models_dir: Path) -> None:
    pytest.importorskip("litserve")
    args = peer.parse_args(["--models-dir", str(models_dir), "--startup-timeout-s", "120"])
    bundle = models_dir / "retriever-g2r"
    with (
        peer.serve_litserve(args, "retrieval", "on", bundle) as url,
        httpx.Client(base_url=url, trust_env=False) as client,
    ):
        r = client.post("/respond", json={"context": [CONTEXTS[0]], "backend": "retrieval"})
    assert r.status_code == 200 and r.json()["backend"] == "retrieval"


def test_peer_target_ratios_come_from_the_on_and_off_cells() -> None:
    def cell(backend: str, batching: str, ours: float, theirs: float, p50: float) -> Any:
        return {
            "backend": backend,
            "batching": batching,
            "concurrency": 32,
            "ours": {"throughput_rps": ours, "p50_ms": p50},
            "litserve": {"throughput_rps": theirs, "p50_ms": 1.0},
        }

    comparison = [
        cell("generative", "on", 200.0, 180.0, 100.0),
        cell("generative", "off", 80.0, 190.0, 400.0),
        cell("retrieval", "on", 300.0, 250.0, 10.0),  # no "off" cell: no row
    ]
    # on/off throughput 2.5, p50 0.25, and against LitServe's better mode (190, batching off)
    assert peer.target_rows(comparison) == [["generative", "32", "2.50", "0.25", "1.05"]]

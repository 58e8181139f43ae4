"""The generative backend's continuous batching (service/continuous.py) behind the HTTP API:
which requests take it, and that concurrent requests get the replies they get alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from service_fixtures import build_tiny_bundles, make_settings, parse_metrics, sample

from service.app import create_app
from service.backends import GenerativeBackend
from service.schemas import ResponseOptions


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


def _serve(models_dir: Path, **overrides: Any) -> tuple[FastAPI, TestClient]:
    app = create_app(make_settings(models_dir, **overrides))
    return app, TestClient(app)


def _generative(app: FastAPI) -> GenerativeBackend:
    backend = app.state.engine.backends["generative"]
    assert isinstance(backend, GenerativeBackend)
    return backend


@pytest.mark.parametrize(
    ("setting", "max_batch", "on"),
    [("auto", 16, True), ("auto", 1, False), ("off", 16, False), ("on", 1, True)],
)
def test_the_setting_turns_it_on_and_off(
    models_dir: Path, setting: str, max_batch: int, on: bool
) -> None:
    app, client = _serve(models_dir, continuous_batching=setting, max_batch=max_batch)
    with client:
        assert (_generative(app).continuous is not None) is on


def test_concurrent_requests_get_the_replies_they_get_alone(models_dir: Path) -> None:
    # ranking off: with it, how a request decodes depends on how busy the backend is when it
    # arrives (GENERATIVE_RERANK_BELOW), and "alone" would not be the same request
    app, client = _serve(
        models_dir,
        continuous_batching="on",
        max_batch=4,
        request_timeout_s=30,
        generative_rerank=0,
    )
    options: list[dict[str, Any]] = [
        {},
        {"max_length": 3},
        {"strategy": "beam", "beam_size": 2},  # request-level: through the micro-batcher
        {"max_length": 7, "no_repeat_ngram_size": 2},
        {"strategy": "sample", "top_k": 1},  # top-1 sampling is greedy
        {},
    ]
    contexts = [["hello , how are you ?"], ["what time is it ?"], ["good morning !"]] * 2
    bodies = [
        {"context": c, "backend": "generative", "options": o}
        for c, o in zip(contexts, options, strict=True)
    ]
    with client:
        backend = _generative(app)
        alone = [
            backend.infer([c], [backend.prepare(ResponseOptions(**o))])[0].text
            for c, o in zip(contexts, options, strict=True)
        ]
        with ThreadPoolExecutor(len(bodies)) as pool:
            replies = list(pool.map(lambda b: client.post("/respond", json=b), bodies))
        m = parse_metrics(client.get("/metrics").text)
    assert [r.status_code for r in replies] == [200] * len(bodies)
    assert [r.json()["response"] for r in replies] == alone
    # every request observed its queue wait (5 in the decoder, the beam one in the micro-batcher)
    assert sample(m, "dialogue_stage_duration_seconds_count", stage="queue") == 6
    assert sample(m, "dialogue_generated_tokens_total") > 0


def test_a_failing_decoder_step_runs_each_request_alone(models_dir: Path) -> None:
    app, client = _serve(models_dir, continuous_batching="on", fallback=False)
    with client:
        backend = _generative(app)
        assert backend.continuous is not None
        runner: Any = backend.continuous.runner
        step = runner.step
        calls = {"n": 0}

        def fails_once() -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("CUDA error: device-side assert triggered")
            return step()

        runner.step = fails_once
        reply = client.post("/respond", json={"context": ["hi"], "backend": "generative"})
        expected = backend.infer([["hi"]], [backend.prepare(None)])[0].text
    assert reply.status_code == 200 and reply.json()["response"] == expected


@pytest.mark.parametrize(("max_batch", "in_decoder"), [(8, True), (2, False)])
def test_a_blocked_reply_is_resampled_as_rows_of_the_running_batch(
    models_dir: Path, tmp_path: Path, max_batch: int, in_decoder: bool
) -> None:
    """Its SAFETY_CANDIDATES (4) alternatives join the decoder when they fit max_batch rows;
    otherwise they are a request-level batch of their own, as without continuous batching."""
    body = {"context": ["hello , how are you ?"], "backend": "generative"}
    # ranking off: a ranked request is a beam search, micro-batched, never in the decoder
    app, client = _serve(
        models_dir, safety_filter="off", continuous_batching="on", generative_rerank=0
    )
    with client:
        greedy = client.post("/respond", json=body).json()["response"]
    if not greedy.strip():
        pytest.skip("the random tiny generator produced an empty greedy reply")
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(greedy + "\n")
    app, client = _serve(
        models_dir,
        safety_filter="blocklist",
        safety_blocklist=blocklist,
        continuous_batching="on",
        max_batch=max_batch,
        generative_rerank=0,
    )
    with client:
        backend = _generative(app)
        assert backend.continuous is not None
        runner: Any = backend.continuous.runner
        request_level = runner.generate
        calls: list[int] = []

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return request_level(*args, **kwargs)

        runner.generate = counted
        reply = client.post("/respond", json=body)
        m = parse_metrics(client.get("/metrics").text)
    assert reply.status_code == 200
    out = reply.json()
    assert out["filtered"] in ("reranked", "replaced") and out["response"] != greedy
    assert (not calls) is in_decoder
    labels = {"backend": "generative", "reason": "blocklist", "action": out["filtered"]}
    assert m[("dialogue_safety_blocked_total", frozenset(labels.items()))] == 1.0
    assert not runner._requests and runner.decoder.idle  # nothing left behind

"""The generative backend's decoder in a process of its own (service/decoder_process.py,
DECODER_PROCESS): the same replies as in one process, the child's metrics in the service's
/metrics, and a dead child replaced."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import build_tiny_bundles, make_settings, parse_metrics, sample

from service.app import create_app
from service.backends import GenerativeBackend
from service.decoder_process import MetricsRelay, ProcessBatcher, replay
from service.metrics import ServiceMetrics
from service.schemas import ResponseOptions


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


def test_the_relay_records_observations_for_the_parent_to_replay() -> None:
    relay = MetricsRelay()
    relay.observe_stage("tokenize", 0.002)
    relay.add_generated_tokens(7)
    with pytest.raises(AttributeError):
        relay.exposition()  # only observations travel
    events = relay.drain()
    assert [name for name, _, _ in events] == ["observe_stage", "add_generated_tokens"]
    assert relay.drain() == []
    metrics = ServiceMetrics()
    replay(metrics, events)
    m = parse_metrics(metrics.exposition().decode())
    assert sample(m, "dialogue_generated_tokens_total") == 7


def _generative(client: TestClient) -> GenerativeBackend:
    backend = client.app.state.engine.backends["generative"]  # type: ignore[attr-defined]
    assert isinstance(backend, GenerativeBackend)
    return backend


def test_replies_and_metrics_match_one_process(models_dir: Path) -> None:
    settings = make_settings(
        models_dir, continuous_batching="on", decoder_process=True, max_batch=4, fallback=False
    )
    contexts = [["hello , how are you ?"], ["what time is it ?"], ["good morning !"]] * 2
    options: list[dict[str, Any]] = [{}, {"max_length": 3}, {"strategy": "beam"}] * 2
    bodies = [
        {"context": c, "backend": "generative", "options": o}
        for c, o in zip(contexts, options, strict=True)
    ]
    with TestClient(create_app(settings)) as client:
        backend = _generative(client)
        assert isinstance(backend.continuous, ProcessBatcher)
        alone = [
            backend.infer([c], [backend.prepare(ResponseOptions(**o))])[0].text
            for c, o in zip(contexts, options, strict=True)
        ]
        with ThreadPoolExecutor(len(bodies)) as pool:
            replies = list(pool.map(lambda b: client.post("/respond", json=b), bodies))
        m = parse_metrics(client.get("/metrics").text)
    assert [r.status_code for r in replies] == [200] * len(bodies)
    assert [r.json()["response"] for r in replies] == alone
    # observed in the child (4 continuous requests) and here (2 beam ones, micro-batched)
    assert sample(m, "dialogue_stage_duration_seconds_count", stage="queue") == 6
    assert sample(m, "dialogue_generated_tokens_total") > 0


def test_a_dead_decoder_process_fails_its_requests_and_is_replaced(models_dir: Path) -> None:
    settings = make_settings(
        models_dir, continuous_batching="on", decoder_process=True, fallback=False
    )
    body = {"context": ["hello , how are you ?"], "backend": "generative"}
    with TestClient(create_app(settings)) as client:
        batcher = _generative(client).continuous
        assert isinstance(batcher, ProcessBatcher) and batcher._process is not None
        first = batcher._process.pid
        assert client.post("/respond", json=body).status_code == 200
        os.kill(first, signal.SIGKILL)
        statuses = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reply = client.post("/respond", json=body)
            statuses.append(reply.status_code)
            if reply.status_code == 200:
                break
            assert reply.status_code == 503 and "Traceback" not in reply.text
            time.sleep(0.2)
        assert statuses[-1] == 200  # a new child answers
        assert batcher._process is not None and batcher._process.pid != first

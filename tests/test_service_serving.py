"""Serving behaviour: exact metric counts, fallback, deadlines, overload and micro-batching."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from service_fixtures import build_tiny_bundles, make_settings, parse_metrics, sample

from service.app import create_app
from service.backends import Answer, Backend
from service.schemas import ResponseOptions


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


def _serve(models_dir: Path, **overrides: Any) -> tuple[FastAPI, TestClient]:
    app = create_app(make_settings(models_dir, **overrides))
    return app, TestClient(app)


def _backend(app: FastAPI, name: str) -> Backend:
    backend: Backend = app.state.engine.backends[name]
    return backend


def _metrics(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return parse_metrics(resp.text)


def _slow(backend: Backend, seconds: float) -> None:
    """Make the backend's model call take at least ``seconds`` (an instance attribute override)."""
    infer = backend.infer

    def slow_infer(
        contexts: list[list[str]], params: list[Hashable], deadline: float | None = None
    ) -> list[Answer]:
        time.sleep(seconds)
        return infer(contexts, params, deadline)

    backend.infer = slow_infer  # type: ignore[method-assign]


def _broken(backend: Backend) -> None:
    def broken_infer(
        contexts: list[list[str]], params: list[Hashable], deadline: float | None = None
    ) -> list[Answer]:
        raise RuntimeError("CUDA error: device-side assert triggered")

    backend.infer = broken_infer  # type: ignore[method-assign]


@pytest.fixture
def served(models_dir: Path) -> Iterator[tuple[FastAPI, TestClient]]:
    app, client = _serve(models_dir)
    with client:
        yield app, client


def test_metrics_count_every_request_exactly(served: tuple[FastAPI, TestClient]) -> None:
    _, client = served
    for _ in range(5):
        assert (
            client.post("/respond", json={"context": ["hi"], "backend": "retrieval"}).status_code
            == 200
        )
    for _ in range(3):
        assert (
            client.post("/respond", json={"context": ["hi"], "backend": "generative"}).status_code
            == 200
        )
    assert client.post("/respond", json={"context": []}).status_code == 422
    assert (
        client.post("/respond", json={"context": ["hi"] * 17, "backend": "retrieval"}).status_code
        == 422
    )

    m = _metrics(client)
    requests = "dialogue_requests_total"
    assert sample(m, requests, backend="retrieval", arm="override", outcome="ok") == 5
    assert sample(m, requests, backend="generative", arm="override", outcome="ok") == 3
    # Both refused by the schema (17 turns > MAX_TURNS), before any backend is chosen.
    assert sample(m, requests, backend="none", arm="none", outcome="invalid") == 2
    assert sample(m, requests, backend="retrieval", arm="override", outcome="invalid") == 0
    duration = "dialogue_request_duration_seconds"
    assert sample(m, duration + "_count", backend="retrieval", arm="override") == 5
    assert sample(m, duration + "_count", backend="generative", arm="override") == 3
    assert sample(m, duration + "_bucket", backend="retrieval", arm="override", le="+Inf") == 5
    assert any(
        labels == frozenset({("backend", "retrieval"), ("arm", "override"), ("le", "0.001")})
        for name, labels in m
        if name == duration + "_bucket"
    )
    # Sequential requests: one batch each.
    assert sample(m, "dialogue_batch_size_count", backend="retrieval") == 5
    assert sample(m, "dialogue_batch_size_sum", backend="retrieval") == 5
    assert sample(m, "dialogue_batch_size_count", backend="generative") == 3
    stage = "dialogue_stage_duration_seconds_count"
    assert sample(m, stage, stage="queue") == 8
    assert sample(m, stage, stage="tokenize") == 8
    assert sample(m, stage, stage="encode") == 5
    assert sample(m, stage, stage="search") == 5
    assert sample(m, stage, stage="generate") == 3
    assert sample(m, "dialogue_fallbacks_total", backend="generative", outcome="error") == 0
    models = {m["backend"]: m["model"] for m in client.get("/v1/models").json()["models"]}
    for backend, model in models.items():
        assert sample(m, "dialogue_model_info", backend=backend, model=model) == 1
    # The retrieval replies were all for the same context, so one response fills the window.
    assert sample(m, "dialogue_response_max_ratio", backend="retrieval") == 1.0
    assert sample(m, "dialogue_response_distinct_2", backend="retrieval") > 0
    assert sample(m, "dialogue_generated_tokens_total") >= 3


def test_respond_falls_back_when_the_backend_raises(served: tuple[FastAPI, TestClient]) -> None:
    app, client = served
    _broken(_backend(app, "generative"))
    for _ in range(2):
        resp = client.post("/respond", json={"context": ["hi"], "backend": "generative"})
        assert resp.status_code == 200
        assert (resp.json()["backend"], resp.json()["arm"]) == ("retrieval", "override")
        assert resp.json()["model"].startswith("retriever-g2r@")
    m = _metrics(client)
    assert sample(m, "dialogue_fallbacks_total", backend="generative", outcome="error") == 2
    assert (
        sample(m, "dialogue_requests_total", backend="retrieval", arm="override", outcome="ok") == 2
    )
    assert (
        sample(m, "dialogue_requests_total", backend="generative", arm="override", outcome="ok")
        == 0
    )


def test_respond_without_fallback_returns_503_when_the_backend_raises(models_dir: Path) -> None:
    app, client = _serve(models_dir, fallback=False)
    with client:
        _broken(_backend(app, "generative"))
        resp = client.post("/respond", json={"context": ["hi"], "backend": "generative"})
        assert resp.status_code == 503
        assert resp.json() == {
            "error": {"type": "backend_error", "message": "the generative backend failed"}
        }
        m = _metrics(client)
    assert (
        sample(m, "dialogue_requests_total", backend="generative", arm="override", outcome="error")
        == 1
    )
    assert sample(m, "dialogue_fallbacks_total", backend="generative", outcome="error") == 0


def test_respond_past_the_deadline_returns_504(models_dir: Path) -> None:
    app, client = _serve(models_dir, fallback=False, request_timeout_s=0.1)
    with client:
        _slow(_backend(app, "retrieval"), 0.4)
        resp = client.post("/respond", json={"context": ["hi"], "backend": "retrieval"})
        assert resp.status_code == 504
        assert resp.json() == {
            "error": {
                "type": "deadline_exceeded",
                "message": "the retrieval backend did not answer within the request deadline",
            }
        }
        m = _metrics(client)
    assert (
        sample(m, "dialogue_requests_total", backend="retrieval", arm="override", outcome="timeout")
        == 1
    )


def test_respond_past_the_deadline_falls_back_within_the_same_deadline(models_dir: Path) -> None:
    # The primary must answer by 0.8 s (FALLBACK_RESERVE 0.2 of 1 s); the fallback has the rest.
    app, client = _serve(models_dir, fallback=True, request_timeout_s=1.0, fallback_reserve=0.2)
    with client:
        _slow(_backend(app, "generative"), 2.0)
        started = time.perf_counter()
        resp = client.post("/respond", json={"context": ["hi"], "backend": "generative"})
        elapsed = time.perf_counter() - started
        assert resp.status_code == 200
        assert resp.json()["backend"] == "retrieval"
        m = _metrics(client)
    assert 0.8 <= elapsed < 1.0
    assert sample(m, "dialogue_fallbacks_total", backend="generative", outcome="timeout") == 1


def test_a_fallback_never_gets_a_fresh_deadline(models_dir: Path) -> None:
    # Both backends slower than the deadline: one 504 at the request's deadline, not after two.
    app, client = _serve(models_dir, fallback=True, request_timeout_s=1.0)
    with client:
        for name in ("generative", "retrieval"):
            _slow(_backend(app, name), 3.0)
        started = time.perf_counter()
        resp = client.post("/respond", json={"context": ["hi"], "backend": "generative"})
        elapsed = time.perf_counter() - started
        m = _metrics(client)
    assert resp.status_code == 504
    assert resp.json()["error"]["message"] == (
        "the retrieval backend did not answer within the request deadline"
    )
    assert 1.0 <= elapsed < 1.3
    assert sample(m, "dialogue_fallbacks_total", backend="generative", outcome="timeout") == 1
    timeouts = sample(
        m, "dialogue_requests_total", backend="retrieval", arm="override", outcome="timeout"
    )
    assert timeouts == 1


def test_requests_whose_deadline_passed_in_the_queue_never_reach_the_model(
    models_dir: Path,
) -> None:
    # One request computes for 0.6 s (MAX_BATCH=1); the four queued behind it expire at 0.3 s
    # and are dropped when the worker comes back: the model sees the first one only.
    app, client = _serve(
        models_dir, fallback=False, max_batch=1, max_queue=8, request_timeout_s=0.3
    )
    calls: list[int] = []
    with client:
        backend = _backend(app, "retrieval")
        infer = backend.infer

        def counted(
            contexts: list[list[str]], params: list[Hashable], deadline: float | None = None
        ) -> list[Answer]:
            calls.append(len(contexts))
            time.sleep(0.6)
            return infer(contexts, params, deadline)

        backend.infer = counted  # type: ignore[method-assign]
        replies = _post_concurrently(client, [{"context": ["hi"], "backend": "retrieval"}] * 5)
        time.sleep(0.5)  # the worker is back and has dropped the expired ones
        after = client.post("/respond", json={"context": ["hi"], "backend": "retrieval"})
        m = _metrics(client)
    assert [r.status_code for r in replies] == [504] * 5
    assert after.status_code == 504  # still 0.6 s per call against a 0.3 s deadline
    assert calls == [1, 1]  # the first of the five, then `after`: no expired one was computed
    assert sample(m, "dialogue_batch_size_count", backend="retrieval") == 2


def test_expired_requests_give_their_queue_slots_back(models_dir: Path) -> None:
    # MAX_QUEUE=2, MAX_BATCH=1, the model busy for 1 s: two requests queue and expire at 0.2 s;
    # the next request must get their slots (a 504 at its own deadline), not a 429.
    app, client = _serve(
        models_dir, fallback=False, max_batch=1, max_queue=2, request_timeout_s=0.2
    )
    body = {"context": ["hi"], "backend": "retrieval"}
    with client, ThreadPoolExecutor(3) as pool:
        _slow(_backend(app, "retrieval"), 1.0)
        computing = pool.submit(client.post, "/respond", json=body)
        time.sleep(0.1)  # the worker has taken it: the model is busy until t = 1.0 s
        queued = _post_concurrently(client, [body, body])  # fill the queue, expire at 0.3 s
        later = client.post("/respond", json=body)  # t ~ 0.3 s: the queue still holds both
        assert computing.result().status_code == 504
    assert [r.status_code for r in queued] == [504, 504]
    assert later.status_code == 504, later.json()


def test_no_request_is_answered_later_than_the_deadline_plus_one_batch(models_dir: Path) -> None:
    """128 concurrent clients against model calls of 0.25 s, both backends, fallback on, a 1 s
    deadline. The bound: every request is answered (200 or 504) within REQUEST_TIMEOUT_S plus
    the longest single model call (one micro-batch) of the service starting on it; the
    service's own latency_ms and the client's clock both hold to it."""
    timeout_s, call_s, clients, rounds = 1.0, 0.25, 128, 3
    app = create_app(
        make_settings(
            models_dir,
            fallback=True,
            request_timeout_s=timeout_s,
            max_batch=4,
            max_queue=1024,
            max_wait_ms=5,
        )
    )
    durations: list[float] = []

    def timed(backend: Backend) -> None:
        infer = backend.infer

        def slow_infer(
            contexts: list[list[str]], params: list[Hashable], deadline: float | None = None
        ) -> list[Answer]:
            started = time.perf_counter()
            time.sleep(call_s)
            answers = infer(contexts, params, deadline)
            durations.append(time.perf_counter() - started)
            return answers

        backend.infer = slow_infer  # type: ignore[method-assign]

    async def scenario() -> list[tuple[int, float]]:
        async with app.router.lifespan_context(app):
            for backend in app.state.engine.backends.values():
                timed(backend)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:

                async def client(i: int) -> list[tuple[int, float]]:
                    out = []
                    for r in range(rounds):
                        body = {"context": [f"hello {i} {r}"], "session_id": f"s{i}"}
                        started = time.perf_counter()
                        resp = await http.post("/respond", json=body)
                        out.append((resp.status_code, time.perf_counter() - started))
                    return out

                results = await asyncio.gather(*(client(i) for i in range(clients)))
        return [x for per_client in results for x in per_client]

    results = asyncio.run(scenario())
    statuses = Counter(status for status, _ in results)
    assert set(statuses) <= {200, 504}, statuses
    assert statuses[200] > 0 and statuses[504] > 0, statuses  # overloaded on purpose: both outcomes
    bound = timeout_s + max(durations)
    worst = max(elapsed for _, elapsed in results)
    assert worst <= bound, f"latency {worst:.3f} s > deadline + one batch = {bound:.3f} s"


def _post_concurrently(client: TestClient, bodies: list[dict[str, Any]]) -> list[Any]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: client.post("/respond", json=b), bodies))


def test_respond_over_the_queue_bound_returns_429(models_dir: Path) -> None:
    # One request computing, one queued (MAX_QUEUE=1): the rest are turned away at once.
    app, client = _serve(models_dir, fallback=False, max_queue=1, max_batch=1, request_timeout_s=10)
    with client:
        _slow(_backend(app, "retrieval"), 0.5)
        replies = _post_concurrently(client, [{"context": ["hi"], "backend": "retrieval"}] * 5)
        m = _metrics(client)
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200, 200, 429, 429, 429]
    refused = next(r for r in replies if r.status_code == 429)
    assert refused.json() == {
        "error": {
            "type": "overloaded",
            "message": "the retrieval backend has 1 requests queued; retry later",
        }
    }
    assert refused.headers["retry-after"] == "1"
    assert (
        sample(
            m, "dialogue_requests_total", backend="retrieval", arm="override", outcome="overloaded"
        )
        == 3
    )
    assert (
        sample(m, "dialogue_requests_total", backend="retrieval", arm="override", outcome="ok") == 2
    )


def test_overload_sheds_with_429_even_with_fallback_on(models_dir: Path) -> None:
    # FALLBACK=on: a full queue is still a 429 with Retry-After, not a fallback to the other
    # backend; a failing backend still falls back.
    app, client = _serve(models_dir, fallback=True, max_queue=1, max_batch=1, request_timeout_s=10)
    with client:
        _slow(_backend(app, "retrieval"), 0.5)
        replies = _post_concurrently(client, [{"context": ["hi"], "backend": "retrieval"}] * 5)
        _broken(_backend(app, "generative"))
        rescued = client.post("/respond", json={"context": ["hi"], "backend": "generative"})
        m = _metrics(client)
    assert sorted(r.status_code for r in replies) == [200, 200, 429, 429, 429]
    assert all(r.json()["backend"] == "retrieval" for r in replies if r.status_code == 200)
    for refused in (r for r in replies if r.status_code == 429):
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "overloaded"
    assert rescued.status_code == 200 and rescued.json()["backend"] == "retrieval"
    requests, fallbacks = "dialogue_requests_total", "dialogue_fallbacks_total"
    assert sample(m, requests, backend="retrieval", arm="override", outcome="overloaded") == 3
    assert sample(m, requests, backend="retrieval", arm="override", outcome="ok") == 3
    assert sample(m, requests, backend="generative", arm="override", outcome="ok") == 0
    assert sample(m, fallbacks, backend="retrieval", outcome="overloaded") == 0
    assert sample(m, fallbacks, backend="generative", outcome="error") == 1


def test_concurrent_requests_are_micro_batched(models_dir: Path) -> None:
    # A slow first batch lets the other requests pile up; they then go in one model call.
    app, client = _serve(models_dir, max_batch=16, max_wait_ms=50, request_timeout_s=10)
    with client:
        _slow(_backend(app, "retrieval"), 0.3)
        replies = _post_concurrently(
            client, [{"context": [f"hello {i}"], "backend": "retrieval"} for i in range(8)]
        )
        m = _metrics(client)
    assert [r.status_code for r in replies] == [200] * 8
    batches = sample(m, "dialogue_batch_size_count", backend="retrieval")
    assert sample(m, "dialogue_batch_size_sum", backend="retrieval") == 8
    assert batches < 8  # at least one batch held more than one request
    assert sample(m, "dialogue_batch_size_bucket", backend="retrieval", le="1.0") < batches
    assert sample(m, "dialogue_stage_duration_seconds_count", stage="queue") == 8
    assert sample(m, "dialogue_stage_duration_seconds_count", stage="search") == batches


def test_generative_batch_decodes_each_request_with_its_own_options(
    served: tuple[FastAPI, TestClient],
) -> None:
    app, _ = served
    backend = _backend(app, "generative")
    short = backend.prepare(ResponseOptions(max_length=1))
    full = backend.prepare(None)
    contexts = [["hi"], ["what time is it ?"], ["good morning !"]]
    batched = backend.infer(contexts, [short, full, short])
    alone = [
        backend.infer([c], [p])[0] for c, p in zip(contexts, [short, full, short], strict=True)
    ]
    assert [a.text for a in batched] == [a.text for a in alone]  # greedy: deterministic
    assert batched[0].generated_tokens <= 1 and batched[2].generated_tokens <= 1
    assert batched[1].generated_tokens == alone[1].generated_tokens


def test_retrieval_batch_returns_each_requests_number_of_candidates(
    served: tuple[FastAPI, TestClient],
) -> None:
    app, _ = served
    backend = _backend(app, "retrieval")
    answers = backend.infer([["hi"], ["hi"]], [1, 4])
    assert [len(a.candidates or []) for a in answers] == [1, 4]
    assert answers[0].candidates == (answers[1].candidates or [])[:1]


def _poisoned(backend: Backend, marker: str, seen: list[int]) -> None:
    """Make the responder raise on any model call whose batch holds a context with ``marker``
    (as a lone surrogate made the tokenizer raise); ``seen`` records each call's batch size."""
    responder = backend.responder
    encode = responder.encode_contexts

    def poisoned_encode(contexts: list[list[str]], **kwargs: Any) -> Any:
        seen.append(len(contexts))
        if any(marker in turn for context in contexts for turn in context):
            raise UnicodeEncodeError("utf-8", marker, 0, 1, "surrogates not allowed")
        return encode(contexts, **kwargs)

    responder.encode_contexts = poisoned_encode


def _gated(backend: Backend, marker: str, queued: int) -> None:
    """A model call whose batch holds a context with ``marker`` returns only once ``queued``
    requests wait in the backend's queue (or after 10 s)."""
    infer = backend.infer

    def gated_infer(
        contexts: list[list[str]], params: list[Hashable], deadline: float | None = None
    ) -> list[Answer]:
        if any(marker in turn for context in contexts for turn in context):
            give_up = time.monotonic() + 10
            while len(backend.batcher._queue or ()) < queued and time.monotonic() < give_up:
                time.sleep(0.01)
        return infer(contexts, params, deadline)

    backend.infer = gated_infer  # type: ignore[method-assign]


@pytest.mark.parametrize("name", ["retrieval", "generative"])
def test_poison_request_fails_alone_and_its_batch_mates_get_200(
    models_dir: Path, name: str
) -> None:
    # A first request holds the model until the 8 others are queued (adaptive batching runs a
    # request at once when the model is idle): they then go in one full batch (MAX_BATCH=8).
    app, client = _serve(
        models_dir,
        fallback=False,
        max_batch=8,
        max_wait_ms=2000,
        request_timeout_s=30,
        continuous_batching="off",
        # ranking off: the queued requests would otherwise decode unranked (a busy backend)
        # and the gate ranked, and requests of different decodings are not one batch
        generative_rerank=0,
    )
    seen: list[int] = []
    bodies = [{"context": [f"hello {i}"], "backend": name} for i in range(8)]
    bodies[3] = {"context": ["hello poison"], "backend": name}
    with client, ThreadPoolExecutor(1) as pool:
        backend = _backend(app, name)
        _poisoned(backend, "poison", seen)
        _gated(backend, "gate", queued=8)
        gate = pool.submit(client.post, "/respond", json={"context": ["gate"], "backend": name})
        time.sleep(0.2)  # the gate request is computing
        replies = _post_concurrently(client, bodies)
        assert gate.result().status_code == 200
        m = _metrics(client)
    assert seen[:2] == [1, 8]  # the gate alone, then the poison batched with all the others
    statuses = [r.status_code for r in replies]
    assert statuses == [200, 200, 200, 503, 200, 200, 200, 200]
    assert replies[3].json() == {
        "error": {"type": "backend_error", "message": f"the {name} backend failed"}
    }
    assert sample(m, "dialogue_requests_total", backend=name, arm="override", outcome="ok") == 8
    assert sample(m, "dialogue_requests_total", backend=name, arm="override", outcome="error") == 1
    # the gate, the failed batch of 8, then each of its requests alone
    assert sample(m, "dialogue_batch_size_count", backend=name) == 10
    assert sample(m, "dialogue_batch_size_sum", backend=name) == 17


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"temperature": 1e-39}, "temperature"),
        ({"temperature": 0.01}, "temperature"),
        ({"temperature": 5.5}, "temperature"),
        ({"top_p": 1e-300}, "top_p"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 1001}, "top_k"),
        ({"max_length": 10**6}, "max_length"),
        ({"min_length": 10**6}, "min_length"),
        ({"num_candidates": 10**6}, "num_candidates"),
        ({"beam_size": 9}, "beam_size"),
        ({"no_repeat_ngram_size": 9}, "no_repeat_ngram_size"),
        ({"anti_lm": 0.96}, "anti_lm"),
        ({"anti_lm": -0.1}, "anti_lm"),
        ({"anti_lm_steps": 2000}, "anti_lm_steps"),
        ({"anti_lm_plausibility": 1.0}, "anti_lm_plausibility"),
        ({"anti_lm_plausibility": -0.1}, "anti_lm_plausibility"),
        ({"block_adjacent_repeats": 1}, "block_adjacent_repeats"),
        ({"block_adjacent_repeats": "true"}, "block_adjacent_repeats"),
    ],
)
def test_numeric_options_out_of_the_decodable_range_are_refused(
    served: tuple[FastAPI, TestClient], options: dict[str, float], field: str
) -> None:
    _, client = served
    resp = client.post("/respond", json={"context": ["hi"], "options": options})
    assert resp.status_code == 422
    assert resp.json()["error"]["message"].startswith(f"body.options.{field}: ")


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_extreme_but_valid_options_decode(
    served: tuple[FastAPI, TestClient], strategy: str
) -> None:
    # The bounds themselves decode, for every strategy (the safety re-sample uses them too).
    app, _ = served
    backend = _backend(app, "generative")
    for options in (
        ResponseOptions(strategy=strategy, temperature=0.05, top_p=0.001, top_k=1000),  # type: ignore[arg-type]
        ResponseOptions(strategy=strategy, temperature=5.0, top_p=1.0, top_k=0, min_length=8),  # type: ignore[arg-type]
        ResponseOptions(strategy=strategy, anti_lm=0.95, anti_lm_steps=1024),  # type: ignore[arg-type]
        ResponseOptions(strategy=strategy, anti_lm=0.5, anti_lm_plausibility=0.999),  # type: ignore[arg-type]
        ResponseOptions(strategy=strategy, block_adjacent_repeats=True, min_length=8),  # type: ignore[arg-type]
    ):
        config = backend.prepare(options)
        for _ in range(5):
            assert len(backend.infer([["hi"], ["what time is it ?"]], [config, config])) == 2


def test_serving_dtype_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from service import device as service_device

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(service_device, "native_bf16", lambda d, n=native: n)
        # auto: bf16 generators only where the CPU multiplies bf16 natively; retrievers float32
        assert service_device.serving_dtype(cpu, "auto", "generative") is expected
        assert service_device.serving_dtype(cpu, "auto", "retrieval") is torch.float32
        assert service_device.serving_dtype(gpu, "auto", "retrieval") is torch.float16
    assert service_device.serving_dtype(cpu, "float32", "generative") is torch.float32
    assert service_device.serving_dtype(cpu, "bfloat16", "retrieval") is torch.bfloat16
    assert service_device.serving_dtype(gpu, "float16", "generative") is torch.float16
    for name in ("float16", "int8"):
        with pytest.raises(ValueError, match="DIALOGUE_DTYPE"):
            service_device.serving_dtype(cpu, name, "generative")


def test_the_dtype_setting_decides_what_the_models_run_in(models_dir: Path) -> None:
    import torch

    for setting, generator_dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        app, client = _serve(models_dir, dtype=setting)
        with client:
            gen = _backend(app, "generative").responder
            ret = _backend(app, "retrieval").responder
            assert next(gen.model.parameters()).dtype == generator_dtype
            assert next(ret.model.parameters()).dtype == generator_dtype
            for backend in ("generative", "retrieval"):
                resp = client.post(
                    "/respond", json={"context": ["hello there"], "backend": backend}
                )
                assert resp.status_code == 200, resp.text
                assert resp.json()["response"].strip()


def test_the_retrieval_int8_setting_decides_the_context_encoder(models_dir: Path) -> None:
    import torch

    from service.device import retrieval_int8

    for setting, dtype, int8 in (
        ("auto", "auto", True),
        ("off", "auto", False),
        ("auto", "bfloat16", False),
    ):
        app, client = _serve(models_dir, retrieval_int8=setting, dtype=dtype)
        with client:
            assert _backend(app, "retrieval").responder.int8 is int8
            resp = client.post(
                "/respond", json={"context": ["hello there"], "backend": "retrieval"}
            )
            assert resp.status_code == 200, resp.text
    cpu = torch.device("cpu")
    assert retrieval_int8(cpu, "float32", "on") is True
    for device, dtype in ((cpu, "bfloat16"), (torch.device("cuda"), "float32")):
        with pytest.raises(
            ValueError, match="RETRIEVAL_INT8=on needs a float32 retriever on a CPU"
        ):
            retrieval_int8(device, dtype, "on")


def test_a_dtype_the_device_cannot_run_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOGUE_")}
    env.update(
        {
            "DIALOGUE_DEVICE": "cpu",
            "DIALOGUE_DTYPE": "float16",
            "DIALOGUE_MODELS_DIR": str(tmp_path),
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("refusing to start: DIALOGUE_DTYPE")


def test_backends_answer_once_before_serving_outside_the_metrics(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each local backend makes one model call at start-up (Backend.warm_up), which no metric
    counts; a warm-up that fails is logged and the backend serves anyway."""
    from models.generator import GenerativeResponder
    from models.retriever import RetrievalResponder

    calls: list[str] = []
    for cls in (GenerativeResponder, RetrievalResponder):
        original = cls.respond

        def spy(self: Any, contexts: Any, *args: Any, _o: Any = original, **kw: Any) -> Any:
            calls.append(type(self).__name__)
            return _o(self, contexts, *args, **kw)

        monkeypatch.setattr(cls, "respond", spy)
    caplog.set_level("INFO", logger="service.bundles")
    app, client = _serve(models_dir)
    with client:
        assert sorted(calls) == ["GenerativeResponder", "RetrievalResponder"]  # before any request
        assert "warmed up in" in caplog.text
        samples = _metrics(client)
        counted = [
            (name, labels)
            for (name, labels), value in samples.items()
            if name.startswith(
                (
                    "dialogue_stage_duration_seconds_count",
                    "dialogue_requests_total",
                    "dialogue_generated_tokens_total",
                    "dialogue_batch_size_count",
                )
            )
            and value > 0
        ]
        assert counted == []

    # a responder that fails its warm-up still serves
    def broken(self: Any, contexts: Any, *args: Any, **kw: Any) -> Any:
        raise RuntimeError("warm-up fault")

    monkeypatch.setattr(RetrievalResponder, "respond", broken)
    app, client = _serve(models_dir)
    with client:
        assert "warming up the retrieval backend failed" in caplog.text
        assert _backend(app, "retrieval") is not None

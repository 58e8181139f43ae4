"""Generate, then rank: the generator's n-best ranked by the loaded retriever
(RetrievalResponder.rank_replies, GenerativeBackend with GENERATIVE_RERANK / options.rerank)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from service_fixtures import RESPONSES, build_tiny_bundles, make_settings, parse_metrics

from models.lexical import LexicalReranker
from models.retriever import RetrievalResponder
from service.app import create_app
from service.backends import GenerativeBackend
from service.schemas import ResponseOptions


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


@pytest.fixture
def served(models_dir: Path) -> Iterator[tuple[FastAPI, TestClient]]:
    app = create_app(make_settings(models_dir, generative_rerank=4))
    with TestClient(app) as client:
        yield app, client


def _generative(app: FastAPI) -> GenerativeBackend:
    backend = app.state.engine.backends["generative"]
    assert isinstance(backend, GenerativeBackend)
    return backend


def test_text_scores_are_the_indexed_responses_scores() -> None:
    reranker = LexicalReranker.fit(RESPONSES, weight=1.0)
    reranker.index_responses(RESPONSES)
    terms = reranker.context_terms(["what time is it ?", "good morning to you !"])
    lexical, echo = reranker.text_scores(terms, RESPONSES)
    want_lexical, want_echo = reranker.candidate_scores(terms, np.arange(len(RESPONSES)))
    np.testing.assert_allclose(lexical, want_lexical)
    np.testing.assert_array_equal(echo, want_echo)
    assert echo[RESPONSES.index("good morning to you !")]  # it restates a turn


def test_rank_replies_scores_as_the_dense_ranking_and_drops_echoes(models_dir: Path) -> None:
    retriever = RetrievalResponder.load(models_dir / "retriever-g2r")
    context = ["hello , how are you ?", "what time is it ?"]
    replies = ["it is ten o'clock .", "what time is it ?", "good night .", "see you later ."]
    [scores] = retriever.rank_replies([context], [replies])
    dense = retriever.candidate_scores([context], replies, np.arange(4)[None], weight=0.0)[0]
    assert scores[1] == -np.inf  # repeats the last turn word for word
    keep = [0, 2, 3]
    np.testing.assert_allclose(scores[keep], dense[keep], rtol=1e-5, atol=1e-6)
    # every candidate an echo: they keep their scores (something is served)
    [echoes] = retriever.rank_replies([context], [["what time is it ?", "hello , how are you ?"]])
    assert np.isfinite(echoes).all()
    assert retriever.rank_replies([], []) == []


def test_rerank_asks_the_generator_for_an_n_best(served: tuple[FastAPI, TestClient]) -> None:
    app, _ = served
    backend = _generative(app)
    assert backend.ranker is app.state.engine.backends["retrieval"]
    ranked = backend.prepare(None)
    assert (ranked.strategy, ranked.beam_size, ranked.num_return_sequences) == ("beam", 4, 4)
    wide = backend.prepare(ResponseOptions(rerank=6, strategy="beam", beam_size=8))
    assert (wide.beam_size, wide.num_return_sequences) == (8, 6)
    sampled = backend.prepare(ResponseOptions(rerank=3, strategy="sample"))
    assert (sampled.strategy, sampled.num_return_sequences) == ("sample", 3)
    for off in (0, 1):
        plain = backend.prepare(ResponseOptions(rerank=off))
        assert plain == backend.responder.decoding.with_overrides(num_return_sequences=1)


def test_the_served_reply_is_the_one_the_retriever_ranks_first(
    served: tuple[FastAPI, TestClient],
) -> None:
    app, client = served
    backend = _generative(app)
    context = ["what time is it ?"]
    n_best = backend.responder.respond(
        [context],
        backend.responder.decoding.with_overrides(
            strategy="beam", beam_size=4, num_return_sequences=4
        ),
    )
    retriever = app.state.engine.backends["retrieval"].responder
    [scores] = retriever.rank_replies([context], [n_best])
    best = n_best[int(np.argmax(scores))]
    resp = client.post("/respond", json={"context": context, "backend": "generative"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["response"] == best
    stages = {
        dict(labels).get("stage")
        for (name, labels), value in parse_metrics(client.get("/metrics").text).items()
        if name == "dialogue_stage_duration_seconds_count" and value > 0
    }
    assert "rank" in stages
    # a ranker that prefers the beam's last reply gets it served
    retriever.rank_replies = lambda contexts, rows: [np.arange(len(r), dtype=float) for r in rows]
    resp = client.post("/respond", json={"context": context, "backend": "generative"})
    assert resp.json()["response"] == n_best[-1]
    # ranking off for this request: the bundle's own greedy reply
    greedy = backend.responder.respond([context], backend.responder.decoding)[0]
    off = client.post(
        "/respond",
        json={"context": context, "backend": "generative", "options": {"rerank": 0}},
    )
    assert off.json()["response"] == greedy


def test_a_failing_ranker_serves_the_beams_own_best(served: tuple[FastAPI, TestClient]) -> None:
    app, client = served
    retriever = app.state.engine.backends["retrieval"].responder

    def broken(contexts: object, rows: object) -> list[np.ndarray]:
        raise RuntimeError("ranker broke")

    retriever.rank_replies = broken
    context = ["good morning !"]
    decoding = _generative(app).responder.decoding
    first = _generative(app).responder.respond(
        [context], decoding.with_overrides(strategy="beam", beam_size=4, num_return_sequences=4)
    )[0]
    resp = client.post("/respond", json={"context": context, "backend": "generative"})
    assert resp.status_code == 200
    assert resp.json()["response"] == first


def test_without_a_retriever_nothing_is_ranked(tmp_path: Path) -> None:
    models_dir = build_tiny_bundles(tmp_path, retriever=False)
    app = create_app(make_settings(models_dir, generative_rerank=4))
    with TestClient(app) as client:
        backend = _generative(app)
        assert backend.ranker is None
        assert backend.prepare(None).num_return_sequences == 1
        assert client.post("/respond", json={"context": ["hi"]}).status_code == 200


def test_rerank_beyond_its_bound_is_refused(served: tuple[FastAPI, TestClient]) -> None:
    _, client = served
    for bad in (-1, 17, 2.5, "4"):
        resp = client.post("/respond", json={"context": ["hi"], "options": {"rerank": bad}})
        assert resp.status_code == 422, (bad, resp.text)


def test_a_busy_backend_serves_its_own_decoding(
    served: tuple[FastAPI, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = served
    backend = _generative(app)
    backend.rerank_below = 3
    monkeypatch.setattr(GenerativeBackend, "busy", property(lambda self: 2))
    assert backend.prepare(None).num_return_sequences == 4  # below the bound: ranked
    monkeypatch.setattr(GenerativeBackend, "busy", property(lambda self: 3))
    unranked = backend.prepare(None)
    assert unranked == backend.responder.decoding.with_overrides(num_return_sequences=1)
    # a request's own rerank is honoured whatever the load
    assert backend.prepare(ResponseOptions(rerank=2)).num_return_sequences == 2
    backend.rerank_below = 0  # 0: ranked at any load
    assert backend.prepare(None).num_return_sequences == 4


def test_busy_counts_queued_and_running_requests(served: tuple[FastAPI, TestClient]) -> None:
    app, client = served
    backend = _generative(app)
    assert backend.busy == 0
    seen: list[int] = []
    infer = backend.infer

    def watching(contexts, params, deadline=None):  # type: ignore[no-untyped-def]
        seen.append(backend.batcher.busy)
        return infer(contexts, params, deadline)

    backend.infer = watching  # type: ignore[method-assign]
    assert (
        client.post("/respond", json={"context": ["hi"], "backend": "generative"}).status_code
        == 200
    )
    assert seen == [1]  # the request being answered
    assert backend.busy == 0


def test_empty_replies_and_turns_rank_without_nan(models_dir: Path) -> None:
    retriever = RetrievalResponder.load(models_dir / "retriever-g2r")
    scores = retriever.rank_replies(
        [["hello"], [""]], [["", "good night ."], ["no , thanks .", ""]]
    )
    assert not any(np.isnan(row).any() for row in scores)
    assert scores[1][1] == -np.inf  # an empty reply to an empty turn repeats it


def test_ranked_and_unranked_arms_of_one_generator_make_an_experiment(models_dir: Path) -> None:
    # the ranker is a retrieval arm's retriever: weight 0 loads it without routing users to it
    arms = {
        "ranked": {"bundle": "generator-nd", "weight": 1},
        "greedy": {"bundle": "generator-nd", "weight": 1, "options": {"rerank": 0}},
        "ranker": {"bundle": "retriever-g2r", "weight": 0},
    }
    app = create_app(make_settings(models_dir, arms=arms, generative_rerank=4))
    with TestClient(app) as client:
        serving = app.state.engine.serving
        backend = serving.arms["ranked"].backend
        assert backend is serving.arms["greedy"].backend  # one model, two arms
        context = ["what time is it ?"]
        retriever = serving.arms["ranked"].backend.ranker.responder
        retriever.rank_replies = lambda contexts, rows: [
            np.arange(len(r), dtype=float) for r in rows
        ]  # prefers the beam's last reply
        n_best = backend.responder.respond(
            [context],
            backend.responder.decoding.with_overrides(
                strategy="beam", beam_size=4, num_return_sequences=4
            ),
        )
        greedy = backend.responder.respond([context], backend.responder.decoding)[0]
        assert n_best[-1] != greedy  # else the two arms could not be told apart here
        for arm, want in (("ranked", n_best[-1]), ("greedy", greedy)):
            resp = client.post("/respond", json={"context": context, "arm": arm})
            assert resp.status_code == 200, resp.text
            assert resp.json()["response"] == want, arm


def test_a_blocked_ranked_reply_gives_way_to_its_runner_up_without_sampling(
    models_dir: Path, tmp_path: Path
) -> None:
    context = ["what time is it ?"]
    app = create_app(make_settings(models_dir, generative_rerank=4, safety_filter="off"))
    with TestClient(app) as client:
        backend = _generative(app)
        n_best = backend.responder.respond(
            [context],
            backend.responder.decoding.with_overrides(
                strategy="beam", beam_size=4, num_return_sequences=4
            ),
        )
        served = client.post("/respond", json={"context": context, "backend": "generative"})
        best = served.json()["response"]
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(best + "\n")
    app = create_app(
        make_settings(
            models_dir,
            generative_rerank=4,
            safety_filter="blocklist",
            safety_blocklist=blocklist,
            safety_candidates=3,
        )
    )
    with TestClient(app) as client:
        backend = _generative(app)
        calls: list[int] = []
        generate = backend._generate

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(1)
            return generate(*args, **kwargs)

        backend._generate = counted  # type: ignore[method-assign]
        resp = client.post("/respond", json={"context": context, "backend": "generative"})
    body = resp.json()
    assert resp.status_code == 200 and body["filtered"] == "reranked"
    assert body["response"] in n_best and body["response"] != best
    assert calls == [1]  # the n-best only: its runners-up were the alternatives


def test_the_benchmark_runs_on_tiny_bundles(dailydialog_dir: Path, tmp_path: Path) -> None:
    import json

    from benchmarks import generate_and_rank

    models = build_tiny_bundles(tmp_path / "models")
    serving = {"generative": "generator-nd", "retrieval": "retriever-g2r"}
    (models / "serving.json").write_text(json.dumps(serving))
    out = tmp_path / "gar"
    argv = [
        "--artifacts", str(models), "--data", str(dailydialog_dir), "--contexts", "12",
        "--beams", "2", "--k", "3", "--distractors", "5", "--latency-contexts", "2",
        "--judge", str(models / "retriever-g2r"), "--judge-generator", str(models / "generator-nd"),
        "--out", str(out),
    ]  # fmt: skip
    assert generate_and_rank.main(argv) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert list(result["policies"]) == [
        "greedy", "beam2 (its best)", "beam2 ranked", "greedy+sample2 ranked", "gold (ceiling)"
    ]  # fmt: skip
    for row in result["policies"].values():
        assert 0 <= row["judge_percentile"] <= 1 and len(row["samples"]) == 12
    assert set(result["latency"]) == {"greedy", "beam2 ranked"}

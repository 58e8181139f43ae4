"""POST /feedback (issue 14, item 3): exact JSON for every answer and error, one count per request
id (a second rating replaces the first), unknown ids accepted as unmatched, the per-arm metrics
and approval window, the feedback log; and the A/B report read from logs the service wrote."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import build_tiny_bundles, make_settings, parse_metrics, sample

from service import ab_report
from service.ab_report import read_jsonl_dir
from service.app import create_app
from service.feedback import FeedbackTracker, rating_class
from service.metrics import ServiceMetrics
from service.routing import assign_arm, session_hash


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


@pytest.fixture
def client(models_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(models_dir, exposure_log_dir=tmp_path))) as c:
        yield c


def _answer(client: TestClient, backend: str = "retrieval", **extra: Any) -> dict[str, Any]:
    resp = client.post("/respond", json={"context": ["hi"], "backend": backend, **extra})
    assert resp.status_code == 200
    body: dict[str, Any] = resp.json()
    return body


def _metrics(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse_metrics(client.get("/metrics").text)


def test_a_rating_is_recorded_and_a_second_replaces_it(client: TestClient) -> None:
    rid = _answer(client, session_id="s1")["request_id"]
    first = client.post("/feedback", json={"request_id": rid, "rating": "up"})
    assert first.status_code == 200
    assert first.json() == {
        "recorded": "rating",
        "request_id": rid,
        "matched": True,
        "replaced": False,
    }
    second = client.post(
        "/feedback", json={"request_id": rid, "rating": 1, "reason": "changed my mind"}
    )
    assert second.json() == {
        "recorded": "rating",
        "request_id": rid,
        "matched": True,
        "replaced": True,
    }
    m = _metrics(client)
    # counted once, as first rated; the change is counted apart and the window holds the latest
    assert sample(m, "dialogue_feedback_total", arm="override", rating="up") == 1
    assert sample(m, "dialogue_feedback_total", arm="override", rating="down") == 0
    assert sample(m, "dialogue_feedback_replaced_total", arm="override") == 1
    assert sample(m, "dialogue_arm_approval_rate", arm="override") == 0.0


def test_an_unknown_request_id_is_accepted_and_counted_unmatched(client: TestClient) -> None:
    for _ in range(2):  # idempotent for unknown ids too
        resp = client.post("/feedback", json={"request_id": "never-seen", "rating": 4})
        assert resp.status_code == 200
    assert resp.json() == {
        "recorded": "rating",
        "request_id": "never-seen",
        "matched": False,
        "replaced": True,
    }
    m = _metrics(client)
    assert sample(m, "dialogue_feedback_total", arm="unmatched", rating="up") == 1
    assert ("dialogue_arm_approval_rate", frozenset({("arm", "unmatched")})) not in m


def test_ratings_by_arm_and_the_approval_gauge(models_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(models_dir, ab_weights="generative=1,retrieval=1")
    with TestClient(create_app(settings)) as client:
        by_arm: dict[str, list[str]] = {"generative": [], "retrieval": []}
        i = 0
        while min(len(v) for v in by_arm.values()) < 4:
            reply = client.post("/respond", json={"context": ["hi"], "session_id": f"u{i}"})
            by_arm[reply.json()["arm"]].append(reply.json()["request_id"])
            i += 1
        ratings = {"generative": ["up", 5, "down", 3], "retrieval": [2, "down", "down", "up"]}
        for arm, values in ratings.items():
            for rid, rating in zip(by_arm[arm], values, strict=False):
                assert client.post("/feedback", json={"request_id": rid, "rating": rating}).json()[
                    "matched"
                ]
        m = _metrics(client)
    counts = {
        (arm, r): sample(m, "dialogue_feedback_total", arm=arm, rating=r)
        for arm in ratings
        for r in ("up", "down", "neutral")
    }
    assert counts == {
        ("generative", "up"): 2,
        ("generative", "down"): 1,
        ("generative", "neutral"): 1,
        ("retrieval", "up"): 1,
        ("retrieval", "down"): 3,
        ("retrieval", "neutral"): 0,
    }
    assert sample(m, "dialogue_arm_approval_rate", arm="generative") == pytest.approx(2 / 3)
    assert sample(m, "dialogue_arm_approval_rate", arm="retrieval") == pytest.approx(1 / 4)


def test_a_session_end_is_counted_by_its_arm_and_logged_hashed(
    models_dir: Path, tmp_path: Path
) -> None:
    app = create_app(make_settings(models_dir, exposure_log_dir=tmp_path))
    with TestClient(app) as client:
        resp = client.post("/feedback", json={"session_id": "conv-9", "event": "end", "turns": 7})
        assert resp.status_code == 200
        assert resp.json() == {"recorded": "session_end"}
        settings = app.state.settings
        arm = assign_arm(settings.ab_salt, "conv-9", settings.arm_weights)
        assert sample(_metrics(client), "dialogue_sessions_ended_total", arm=arm) == 1
    [record] = list(read_jsonl_dir(tmp_path / "feedback"))  # written out at shutdown
    assert record == {
        "time": record["time"],
        "session": session_hash(settings.session_salt, "conv-9"),
        "event": "end",
        "turns": 7,
        "arm": arm,
    }


def test_the_feedback_log_keeps_every_event(models_dir: Path, tmp_path: Path) -> None:
    feedback_dir = tmp_path / "elsewhere"
    with TestClient(create_app(make_settings(models_dir, feedback_log_dir=feedback_dir))) as c:
        rid = _answer(c)["request_id"]
        c.post("/feedback", json={"request_id": rid, "rating": "down", "reason": "off topic"})
        c.post("/feedback", json={"request_id": rid, "rating": "up"})
        c.post("/feedback", json={"request_id": "other-1", "rating": 3})
    records = list(read_jsonl_dir(feedback_dir))
    assert [{k: v for k, v in r.items() if k != "time"} for r in records] == [
        {
            "request_id": rid,
            "rating": "down",
            "arm": "override",
            "matched": True,
            "reason": "off topic",
        },
        {"request_id": rid, "rating": "up", "arm": "override", "matched": True},
        {"request_id": "other-1", "rating": 3, "arm": "unmatched", "matched": False},
    ]
    assert all(isinstance(r["time"], float) for r in records)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"request_id": "r1"}, "body.rating.rating: Field required"),
        ({"rating": "up"}, "body.rating.request_id: Field required"),
        (
            {"request_id": "r1", "rating": 0},
            'body.rating.rating: Value error, must be "up", "down" or an integer from 1 to 5',
        ),
        (
            {"request_id": "r1", "rating": "meh"},
            'body.rating.rating: Value error, must be "up", "down" or an integer from 1 to 5',
        ),
        (
            {"request_id": "r1", "rating": True},
            'body.rating.rating: Value error, must be "up", "down" or an integer from 1 to 5',
        ),
        (
            {"request_id": "r1", "rating": 4.5},
            'body.rating.rating: Value error, must be "up", "down" or an integer from 1 to 5',
        ),
        (
            {"request_id": "no spaces", "rating": "up"},
            "body.rating.request_id: String should match pattern '^[A-Za-z0-9._-]{1,64}$'",
        ),
        (
            {"request_id": "r1", "rating": "up", "reason": "x" * 501},
            "body.rating.reason: String should have at most 500 characters",
        ),
        (
            {"request_id": "r1", "rating": "up", "stars": 5},
            "body.rating.stars: Extra inputs are not permitted",
        ),
        ({"event": "end"}, "body.session_end.session_id: Field required"),
        (
            {"session_id": "s", "event": "start"},
            "body.session_end.event: Input should be 'end'",
        ),
        (
            {"session_id": "s", "event": "end", "turns": -1},
            "body.session_end.turns: Input should be greater than or equal to 0",
        ),
        (
            {"session_id": "s", "event": "end", "turns": "7"},
            "body.session_end.turns: Value error, must be an integer, not a string",
        ),
        (
            {"session_id": "s", "event": "end", "request_id": "r1"},
            "body.session_end.request_id: Extra inputs are not permitted",
        ),
        (
            ["up"],
            "body.rating: Input should be a valid dictionary or object to extract fields from",
        ),
    ],
)
def test_feedback_errors_are_exact(client: TestClient, body: Any, message: str) -> None:
    resp = client.post("/feedback", json=body)
    assert resp.status_code == 422
    assert resp.json() == {"error": {"type": "validation_error", "message": message}}


def test_feedback_that_is_not_json_is_refused_like_respond(client: TestClient) -> None:
    resp = client.post("/feedback", content=b"{nope", headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_json"
    resp = client.post("/feedback", content=b"{}", headers={"content-type": "text/plain"})
    assert resp.status_code == 415
    assert resp.json() == {
        "error": {
            "type": "unsupported_media_type",
            "message": "the request body must be JSON, sent with Content-Type: application/json "
            "(got Content-Type: text/plain)",
        }
    }


def test_rating_classes_and_the_rolling_window() -> None:
    assert [rating_class(r) for r in ("up", "down", 1, 2, 3, 4, 5)] == [
        "up",
        "down",
        "down",
        "down",
        "neutral",
        "up",
        "up",
    ]
    metrics = ServiceMetrics()
    tracker = FeedbackTracker(metrics, memory=3, window=3)
    for i in range(5):
        tracker.remember(f"r{i}", "a")
    # r0 and r1 fell out of the memory of 3: unmatched now (and kept apart: r2-r4 stay)
    assert tracker.rate("r0", "up").matched is False
    assert tracker.rate("r1", "up").matched is False
    results = [tracker.rate(f"r{i}", r) for i, r in ((2, "up"), (3, "down"), (4, "up"))]
    assert [r.matched for r in results] == [True, True, True]
    window = tracker._windows["a"]
    assert window.rate() == pytest.approx(2 / 3)
    tracker.remember("r5", "a")
    tracker.rate("r5", "down")  # the window keeps the last 3: r3, r4, r5
    assert window.rate() == pytest.approx(1 / 3)
    tracker.rate("r4", 3)  # changed to neutral: out of the window
    assert window.rate() == 0.0 and len(window.values) == 2


def test_the_report_reads_the_logs_the_service_wrote(models_dir: Path, tmp_path: Path) -> None:
    """End to end: serve two arms, rate every reply (one arm liked more), end the sessions, and
    run the report on the directories the service wrote."""
    arms = {
        "gen": {"bundle": "generator-nd", "weight": 1},
        "ret": {"bundle": "retriever-g2r", "weight": 1},
    }
    exposures = tmp_path / "exposures"
    settings = make_settings(models_dir, arms=arms, exposure_log_dir=exposures)
    sent: dict[str, list[int]] = {"gen": [], "ret": []}
    with TestClient(create_app(settings)) as client:
        for s in range(40):
            session = f"user-{s}"
            for turn in range(2):
                reply = client.post(
                    "/respond", json={"context": [f"hello {turn}"], "session_id": session}
                ).json()
                arm = reply["arm"]
                liked = 1 if (arm == "gen" or s % 4 == 0) else 0
                rating = "up" if liked else "down"
                client.post("/feedback", json={"request_id": reply["request_id"], "rating": rating})
                sent[arm].append(liked)
            client.post("/feedback", json={"session_id": session, "event": "end", "turns": 2})
        client.post("/respond", json={"context": ["hi"], "arm": "gen"})  # not randomised
        client.post("/feedback", json={"request_id": "unknown-1", "rating": "up"})
    out = tmp_path / "report" / "ab"
    argv = ["--exposures", str(exposures), "--feedback", str(exposures / "feedback")]
    assert ab_report.main([*argv, "--control", "ret", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["counts"]["unmatched"] == 1 and data["counts"]["not_randomised"] == 1
    assert data["counts"]["matched"] == 80
    for arm, liked in sent.items():
        stats = data["arms"][arm]
        assert stats["requests"] == stats["ratings"] == len(liked)
        assert stats["sessions"] == len(liked) // 2 and stats["mean_turns"] == 2
        assert stats["approvals"] == sum(liked)
        assert stats["latency_p50_ms"] > 0
    [comparison] = data["comparisons"]
    assert comparison["arm"] == "gen" and comparison["approval_diff"] > 0.5
    assert comparison["significant"] is True

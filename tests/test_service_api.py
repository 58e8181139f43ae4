"""HTTP API of the service: exact JSON for replies and errors, readiness, models, catch-all 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import RESPONSES, build_tiny_bundles, make_settings

from service.app import create_app


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


@pytest.fixture
def client(models_dir: Path) -> Iterator[TestClient]:
    with TestClient(
        create_app(make_settings(models_dir, max_turns=4, max_turn_chars=50, max_request_chars=120))
    ) as c:
        yield c


def _model_ids(client: TestClient) -> dict[str, str]:
    return {m["backend"]: m["model"] for m in client.get("/v1/models").json()["models"]}


def test_respond_retrieval_returns_reply_candidates_arm_and_model(client: TestClient) -> None:
    resp = client.post(
        "/respond",
        json={
            "context": ["Hello, how are you?"],
            "backend": "retrieval",
            "options": {"num_candidates": 3},
        },
    )
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"response", "backend", "arm", "model", "latency_ms", "candidates"}
    assert body["backend"] == "retrieval" and body["arm"] == "override"
    assert body["model"] == _model_ids(client)["retrieval"]
    assert body["model"].startswith("retriever-g2r@")
    assert len(body["candidates"]) == 3
    assert body["response"] == body["candidates"][0]["text"]
    assert all(c["text"] in RESPONSES for c in body["candidates"])
    scores = [c["score"] for c in body["candidates"]]
    assert scores == sorted(scores, reverse=True)
    assert body["latency_ms"] > 0


def test_respond_generative_returns_reply_without_candidates(client: TestClient) -> None:
    resp = client.post(
        "/respond",
        json={
            "context": ["hi", "how are you ?"],
            "backend": "generative",
            "options": {"strategy": "sample", "top_k": 5, "top_p": 0.9, "temperature": 0.7},
        },
    )
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"response", "backend", "arm", "model", "latency_ms"}
    assert body["backend"] == "generative" and body["arm"] == "override"
    assert body["model"] == _model_ids(client)["generative"]
    assert isinstance(body["response"], str)


def test_respond_with_session_id_is_sticky_and_answers_from_its_arm(client: TestClient) -> None:
    first = client.post("/respond", json={"context": ["hi"], "session_id": "conv-7"}).json()
    for _ in range(3):
        again = client.post("/respond", json={"context": ["hello"], "session_id": "conv-7"}).json()
        assert again["arm"] == first["arm"]
    assert first["arm"] in ("generative", "retrieval")
    assert first["backend"] == first["arm"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (
            {"context": []},
            422,
            {
                "type": "validation_error",
                "message": "body.context: List should have at least 1 item after validation, not 0",
            },
        ),
        (
            {"context": ["hi"], "temperature": 0.5},
            422,
            {
                "type": "validation_error",
                "message": "body.temperature: Extra inputs are not permitted",
            },
        ),
        (
            {"context": ["hi"], "options": {"strategy": "nucleus"}},
            422,
            {
                "type": "validation_error",
                "message": "body.options.strategy: Input should be 'greedy', 'sample' or 'beam'",
            },
        ),
        (
            {"context": ["hi"], "options": {"max_length": 9}},
            422,
            {
                "type": "invalid_options",
                "message": "options.max_length must be <= 8 (this model's limit), got 9",
            },
        ),
        (
            {"context": ["hi"], "options": {"num_candidates": 11}},
            422,
            {"type": "invalid_options", "message": "options.num_candidates must be <= 10, got 11"},
        ),
        (
            {"context": ["hi"], "options": {"beam_size": 3}},
            422,
            {
                "type": "invalid_options",
                "message": "options.beam_size only applies to strategy 'beam'",
            },
        ),
        (
            {"context": [" \u200b "]},
            422,
            {"type": "invalid_request", "message": "context[0] is empty"},
        ),
        (
            {"context": ["hi"] * 5},
            413,
            {"type": "payload_too_large", "message": "context has 5 turns; the limit is 4"},
        ),
        (
            {"context": ["hi", "x" * 51]},
            413,
            {
                "type": "payload_too_large",
                "message": "context[1] has 51 characters; the limit is 50",
            },
        ),
        (
            {"context": ["y" * 50, "y" * 50, "y" * 50]},
            413,
            {
                "type": "payload_too_large",
                "message": "context has 150 characters; the limit is 120",
            },
        ),
    ],
)
def test_respond_invalid_request_returns_exact_error(
    client: TestClient, body: dict[str, object], status: int, error: dict[str, str]
) -> None:
    resp = client.post("/respond", json=body)
    assert resp.status_code == status
    assert resp.json() == {"error": error}


def test_respond_huge_body_is_refused_before_parsing(client: TestClient) -> None:
    resp = client.post(
        "/respond",
        content=b'{"context": ["' + b"z" * 20_000 + b'"]}',
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["type"] == "payload_too_large"


def test_respond_malformed_json_returns_422_json(client: TestClient) -> None:
    resp = client.post("/respond", content=b"{nope", headers={"content-type": "application/json"})
    assert resp.status_code == 422
    assert resp.json()["error"]["type"] == "validation_error"


def test_respond_unloaded_backend_without_fallback_returns_503(tmp_path: Path) -> None:
    models_dir = build_tiny_bundles(tmp_path, retriever=False)
    with TestClient(create_app(make_settings(models_dir, fallback=False))) as client:
        resp = client.post("/respond", json={"context": ["hi"], "backend": "retrieval"})
        assert resp.status_code == 503
        assert resp.json() == {
            "error": {
                "type": "backend_unavailable",
                "message": "the retrieval backend is not loaded",
            }
        }
        assert client.get("/readyz").json() == {"status": "ready", "backends": ["generative"]}


def test_respond_unloaded_backend_with_fallback_answers_from_the_other(tmp_path: Path) -> None:
    models_dir = build_tiny_bundles(tmp_path, retriever=False)
    with TestClient(create_app(make_settings(models_dir, fallback=True))) as client:
        resp = client.post("/respond", json={"context": ["hi"], "backend": "retrieval"})
        assert resp.status_code == 200
        assert (resp.json()["backend"], resp.json()["arm"]) == ("generative", "override")


def test_readyz_and_respond_return_503_before_models_load(models_dir: Path) -> None:
    client = TestClient(create_app(make_settings(models_dir)))  # no `with`: lifespan never runs
    assert client.get("/healthz").json() == {"status": "ok", "backends": []}
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json() == {
        "error": {"type": "not_ready", "message": "the service is still loading its models"}
    }
    resp = client.post("/respond", json={"context": ["hi"]})
    assert resp.status_code == 503
    assert resp.json()["error"]["type"] == "not_ready"


def test_readyz_and_models_after_start(client: TestClient, models_dir: Path) -> None:
    assert client.get("/readyz").json() == {
        "status": "ready",
        "backends": ["generative", "retrieval"],
    }
    models = client.get("/v1/models").json()["models"]
    assert [(m["backend"], m["name"], m["device"], m["method"]) for m in models] == [
        ("generative", "generator-nd", "cpu", "nd"),
        ("retrieval", "retriever-g2r", "cpu", "g2r-dm"),
    ]
    assert models[0]["path"] == str(models_dir / "generator-nd")


def test_unexpected_exception_returns_500_without_a_traceback(models_dir: Path) -> None:
    app = create_app(make_settings(models_dir))

    async def broken(request: object) -> object:
        raise RuntimeError("secret internals at /srv/model.py line 3")

    with TestClient(app, raise_server_exceptions=False) as client:
        app.state.engine.respond = broken
        resp = client.post("/respond", json={"context": ["hi"]})
    assert resp.status_code == 500
    assert resp.json() == {"error": {"type": "internal_error", "message": "internal server error"}}
    assert "secret" not in resp.text


def test_startup_fails_with_no_bundles(tmp_path: Path) -> None:
    with (
        pytest.raises(Exception, match="no generator or retriever bundle"),
        TestClient(create_app(make_settings(tmp_path))),
    ):
        pass


def test_openapi_schema_lists_the_routes_and_error_model(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/respond", "/healthz", "/readyz", "/v1/models"} <= set(schema["paths"])
    assert "ErrorBody" in schema["components"]["schemas"]
    assert schema["components"]["schemas"]["RespondRequest"]["additionalProperties"] is False


@pytest.mark.parametrize(
    ("raw", "field", "code"),
    [
        (b'{"context": ["hi \\ud800 there"]}', "context.0", "D800"),
        (b'{"context": ["fine", "x\\udfff"]}', "context.1", "DFFF"),
        (b'{"context": ["hi"], "session_id": "s\\udc00"}', "session_id", "DC00"),
    ],
)
def test_lone_surrogate_in_a_string_field_is_refused_with_422(
    client: TestClient, raw: bytes, field: str, code: str
) -> None:
    resp = client.post("/respond", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["type"] == "validation_error"
    assert error["message"].startswith(f"body.{field}: ")
    assert f"lone UTF-16 surrogate (U+{code})" in error["message"]


def test_surrogate_pair_is_valid_text(client: TestClient) -> None:
    resp = client.post(
        "/respond",
        content=b'{"context": ["hi \\ud83d\\ude00"], "backend": "retrieval"}',
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 200

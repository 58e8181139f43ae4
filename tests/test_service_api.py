"""HTTP API of the service: exact JSON for replies and errors, readiness, models, catch-all 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import RESPONSES, build_tiny_bundles, make_settings

from service.app import create_app
from service.http import body_limit


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
    assert set(body) == {
        "response",
        "request_id",
        "backend",
        "arm",
        "model",
        "latency_ms",
        "candidates",
    }
    assert body["request_id"] == resp.headers["x-request-id"]
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
    assert set(body) == {"response", "request_id", "backend", "arm", "model", "latency_ms"}
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
            {"context": ["hi"], "options": {"num_candidates": 11}},
            422,
            {
                "type": "validation_error",
                "message": "body.options.num_candidates: Input should be less than or equal to 10",
            },
        ),
        (
            {"context": [" \u200b "]},
            422,
            {
                "type": "validation_error",
                "message": "body.context.0: Value error, must contain a visible character (this "
                "one is empty or only whitespace, control or invisible characters)",
            },
        ),
        (
            {"context": ["ok", ""]},
            422,
            {
                "type": "validation_error",
                "message": "body.context.1: String should have at least 1 character",
            },
        ),
        (
            {"context": ["hi"] * 5},
            422,
            {
                "type": "validation_error",
                "message": "body.context: List should have at most 4 items after validation, not 5",
            },
        ),
        (
            {"context": ["hi", "x" * 51]},
            422,
            {
                "type": "validation_error",
                "message": "body.context.1: String should have at most 50 characters",
            },
        ),
        (
            {"context": ["hi"], "options": {"max_length": "5"}},
            422,
            {
                "type": "validation_error",
                "message": "body.options.max_length: Value error, must be an integer, not a string",
            },
        ),
        (
            {"context": ["hi"], "options": {"max_length": True}},
            422,
            {
                "type": "validation_error",
                "message": "body.options.max_length: Value error, must be an integer, not a boolean",
            },
        ),
        (
            {"context": ["hi"], "options": {"top_k": 2.5}},
            422,
            {
                "type": "validation_error",
                "message": "body.options.top_k: Value error, must be an integer, not a fraction",
            },
        ),
        (
            {"context": ["hi"], "options": {"temperature": "0.5"}},
            422,
            {
                "type": "validation_error",
                "message": "body.options.temperature: Value error, must be a number, not a string",
            },
        ),
        (
            {"context": ["hi"], "session_id": ""},
            422,
            {
                "type": "validation_error",
                "message": "body.session_id: String should have at least 1 character",
            },
        ),
        # MAX_REQUEST_CHARS (120) below turns x chars (4 x 50): the one limit JSON Schema cannot
        # state, so it stays a 413 (and the schema's description says so).
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
    limit = body_limit(max_turns=4, request_chars=120)  # the client fixture's limits
    resp = client.post(
        "/respond",
        content=b'{"context": ["' + b"z" * limit + b'"]}',
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 413
    assert resp.json() == {
        "error": {
            "type": "payload_too_large",
            "message": f"request body of {limit + 17} bytes exceeds {limit}",
        }
    }
    assert resp.headers["connection"] == "close"


def test_the_largest_json_of_a_request_within_the_limits_is_not_too_large(
    client: TestClient,
) -> None:
    # Every character an astral one, written as an escaped surrogate pair (12 bytes): 120
    # characters over the turns (MAX_REQUEST_CHARS) and a 256-character session id.
    smile = "\\ud83d\\ude00"
    turns = [smile * 50, smile * 50, smile * 20]
    raw = (
        '{"context": ["' + '", "'.join(turns) + '"], "session_id": "' + smile * 256 + '", '
        '"backend": "retrieval", "options": {"num_candidates": 10}}'
    ).encode()
    assert len(raw) > 120 * 12 + 256 * 12
    resp = client.post("/respond", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b"{nope",
            "the body is not valid JSON: Expecting property name enclosed in double quotes (at 1)",
        ),
        (b'{"context": ["hi"]', "the body is not valid JSON: Expecting ',' delimiter (at 18)"),
        (b'{"context": ["\xff"]}', "the body is not valid JSON (it must be UTF-8 text)"),
    ],
)
def test_respond_unparseable_json_returns_400(client: TestClient, raw: bytes, message: str) -> None:
    resp = client.post("/respond", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json() == {"error": {"type": "invalid_json", "message": message}}


@pytest.mark.parametrize(
    ("headers", "got"),
    [
        ({"content-type": "text/plain"}, "got Content-Type: text/plain"),
        (
            {"content-type": "application/x-www-form-urlencoded"},  # what curl -d sends
            "got Content-Type: application/x-www-form-urlencoded",
        ),
        ({}, "no Content-Type header was sent"),
    ],
)
def test_respond_body_not_sent_as_json_gets_415_saying_so(
    client: TestClient, headers: dict[str, str], got: str
) -> None:
    resp = client.post("/respond", content=b'{"context": ["hi"]}', headers=headers)
    assert resp.status_code == 415
    assert resp.json() == {
        "error": {
            "type": "unsupported_media_type",
            "message": "the request body must be JSON, sent with Content-Type: "
            f"application/json ({got})",
        }
    }


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/x+json"])
def test_respond_accepts_json_content_types(client: TestClient, content_type: str) -> None:
    resp = client.post(
        "/respond",
        content=b'{"context": ["hi"], "backend": "retrieval"}',
        headers={"content-type": content_type},
    )
    assert resp.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/respond", "POST"),
        ("DELETE", "/respond", "POST"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_wrong_method_gets_405_with_allow(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    resp = client.request(method, path)
    assert resp.status_code == 405
    assert resp.headers["allow"] == allow
    assert resp.json() == {"error": {"type": "http_error", "message": "Method Not Allowed"}}


def test_options_fitted_to_the_model_are_not_refused(client: TestClient) -> None:
    # max_length above the bundle's 8 is lowered to 8, min_length above max_length to it, and
    # beam_size without strategy 'beam' is ignored: the schema alone says what is accepted.
    for options in (
        {"max_length": 1024},
        {"max_length": 3, "min_length": 9},
        {"beam_size": 3, "strategy": "greedy"},
        {"num_candidates": 3, "strategy": "beam"},  # the other backend's options are accepted
    ):
        resp = client.post(
            "/respond", json={"context": ["hi"], "backend": "generative", "options": options}
        )
        assert resp.status_code == 200, (options, resp.text)


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
    assert [(m["bundle"], m["model"].split("@")[0]) for m in models] == [
        ("generator-nd", "generator-nd"),
        ("retriever-g2r", "retriever-g2r"),
    ]
    assert all("path" not in m for m in models)
    assert str(models_dir) not in client.get("/v1/models").text  # no absolute paths


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

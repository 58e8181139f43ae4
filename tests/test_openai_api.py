"""POST /v1/chat/completions (issue 14, item 6) with the real ``openai`` client against a live
uvicorn server: the OpenAI response shape, ``model`` naming an arm, ``user`` as the session, the
request id as the completion id, OpenAI-shaped errors (404 unknown model, 400 streaming)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from service_fixtures import build_tiny_bundles, make_settings, parse_metrics, sample

from service.ab_report import read_jsonl_dir
from service.app import create_app
from service.routing import assign_arm

openai = pytest.importorskip("openai", reason="the dev extra installs openai")

ARMS = {
    "nd": {"bundle": "generator-nd", "weight": 1},
    "g2r": {"bundle": "retriever-g2r", "weight": 1},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The app under uvicorn in a thread of this process; yields its base URL and log folder."""
    models_dir = build_tiny_bundles(tmp_path_factory.mktemp("models"))
    logs = tmp_path_factory.mktemp("logs")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    settings = make_settings(
        models_dir, arms=ARMS, exposure_log_dir=logs, exposure_log_text=True, max_turns=4
    )
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", logs
    srv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def client(server: tuple[str, Path]) -> Any:
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0)


def test_the_openai_client_gets_a_chat_completion(client: Any, server: tuple[str, Path]) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "hello , how are you ?"},
        ],
        user="openai-session-1",
    )
    completion = raw.parse()
    assert completion.id == raw.headers["x-request-id"]
    assert completion.object == "chat.completion"
    assert abs(completion.created - time.time()) < 60
    expected = assign_arm("dialogue-ab-1", "openai-session-1", {"nd": 0.5, "g2r": 0.5})
    assert completion.model == expected
    [choice] = completion.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert completion.system_fingerprint.split("@")[0] == ARMS[expected]["bundle"]
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens >= 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # sticky per user, as /respond is per session_id
    again = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "and now ?"}],
        user="openai-session-1",
    )
    assert again.model == expected and again.id != completion.id


def test_model_names_an_arm_and_the_turns_are_the_context(
    client: Any, server: tuple[str, Path]
) -> None:
    messages = [
        {"role": "developer", "content": "ignored"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": [{"type": "text", "text": "three"}]},
        {"role": "assistant", "content": "   "},  # no text: skipped
        {"role": "user", "content": "four"},
        {"role": "user", "content": "five"},
    ]
    completion = client.chat.completions.create(
        model="g2r", messages=messages, temperature=0.3, max_tokens=5
    )
    assert completion.model == "g2r"
    assert completion.system_fingerprint.startswith("retriever-g2r@")
    assert completion.choices[0].finish_reason == "stop"
    # the exposure log (text on in this server) shows what the model was given: the last
    # MAX_TURNS=4 user and assistant turns
    _, logs = server
    deadline = time.monotonic() + 5
    while True:
        records = {r["request_id"]: r for r in read_jsonl_dir(logs)}
        if completion.id in records or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    record = records[completion.id]
    assert record["context"] == ["two", "three", "four", "five"]
    assert (record["arm"], record["variant"], record["endpoint"]) == (
        "override",
        "g2r",
        "chat.completions",
    )
    assert record["response"] == completion.choices[0].message.content


def test_models_list_shows_auto_and_every_arm(client: Any) -> None:
    assert [m.id for m in client.models.list()] == ["auto", "nd", "g2r"]


def test_an_unknown_model_is_openais_404(client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404
    assert missing.value.body == {
        "message": "The model `gpt-4o` does not exist; models: auto, g2r, nd",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


def test_streaming_is_a_clear_400(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert refused.value.status_code == 400
    assert refused.value.body == {
        "message": "body.stream: Value error, streaming is not supported: this service answers "
        "with one message; leave stream out or set it to false",
        "type": "invalid_request_error",
        "param": "stream",
        "code": "validation_error",
    }


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (
            {"model": "auto", "messages": [{"role": "system", "content": "only a system turn"}]},
            400,
            {
                "message": "messages: no user or assistant message carries text",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_request",
            },
        ),
        (
            {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "n": 2},
            400,
            {
                "message": "body.n: Value error, only one choice is supported: n must be 1 (or "
                "left out)",
                "type": "invalid_request_error",
                "param": "n",
                "code": "validation_error",
            },
        ),
        (
            {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": 0},
            400,
            {
                "message": "body.stream: Value error, stream must be false (or left out)",
                "type": "invalid_request_error",
                "param": "stream",
                "code": "validation_error",
            },
        ),
        (
            {"model": "auto", "messages": [{"role": "user", "content": 7}]},
            400,
            {
                "message": "body.messages.0.content: content must be a string or a list of text "
                "parts",
                "type": "invalid_request_error",
                "param": "messages.0.content",
                "code": "validation_error",
            },
        ),
        (
            {"model": "auto", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            {
                "message": "body.messages.0.content.parts.0.type: Input should be 'text'; "
                "body.messages.0.content.parts.0.text: Field required",
                "type": "invalid_request_error",
                "param": "messages.0.content.parts.0.type",
                "code": "validation_error",
            },
        ),
        (
            {"model": "auto", "messages": [{"role": "tool", "content": "hi"}]},
            400,
            {
                "message": "body.messages.0.role: Input should be 'system', 'developer', 'user' "
                "or 'assistant'",
                "type": "invalid_request_error",
                "param": "messages.0.role",
                "code": "validation_error",
            },
        ),
        (
            {"model": "auto", "messages": [{"role": "user", "content": "y" * 1001}]},
            400,
            {
                "message": "body.messages.0.content.text: String should have at most 1000 "
                "characters",
                "type": "invalid_request_error",
                "param": "messages.0.content.text",
                "code": "validation_error",
            },
        ),
    ],
)
def test_errors_have_openais_shape(
    server: tuple[str, Path], body: dict[str, Any], status: int, error: dict[str, Any]
) -> None:
    resp = httpx.post(f"{server[0]}/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == status
    assert resp.json() == {"error": error}
    assert "x-request-id" in resp.headers


def test_chat_completions_count_in_the_request_metrics(server: tuple[str, Path]) -> None:
    url = server[0]
    before = parse_metrics(httpx.get(f"{url}/metrics").text)
    body = {"model": "nd", "messages": [{"role": "user", "content": "hi"}], "user": "m1"}
    resp = httpx.post(
        f"{url}/v1/chat/completions",
        content=json.dumps(body),
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 200
    after = parse_metrics(httpx.get(f"{url}/metrics").text)
    labels = {"backend": "generative", "arm": "override", "outcome": "ok"}
    assert (
        sample(after, "dialogue_requests_total", **labels)
        - sample(before, "dialogue_requests_total", **labels)
        == 1
    )

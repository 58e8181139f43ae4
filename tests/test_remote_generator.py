"""The remote generator (issue 15) against a fake OpenAI-compatible server on 127.0.0.1: normal
replies, the request mapping, the key from the environment, timeouts, 5xx with and without
retries, malformed replies, the circuit breaker, the service answering (and falling back) from a
remote bundle (the request deadline cutting the remote call, failures counted by reason, the
HTTP client closed when the backend stops), and the endpoint as a G2R teacher with and without
log-probabilities."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import build_tiny_bundles, make_settings, parse_metrics, sample

from models.bundle import MANIFEST_FILE, read_manifest
from models.decoding import DecodingConfig
from models.generator import load_generator
from models.remote_generator import (
    RemoteBadResponse,
    RemoteGenerator,
    RemoteTimeout,
    RemoteUnavailable,
    import_remote,
)
from training.cli import main as training_main


class FakeOpenAI:
    """A chat-completions (and completions-with-echo) server; ``mode`` says how it misbehaves."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.logprobs = True
        self.requests: list[dict[str, Any]] = []
        self.failures_left = 0  # for "503-then-ok"
        self.delay = 0.6  # seconds a "slow" reply takes
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(
                    {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
                )
                mode = fake.mode
                if mode == "slow":
                    time.sleep(fake.delay)
                if mode == "500":
                    return self._send(500, b'{"error": "boom"}')
                if mode == "503-then-ok" and fake.failures_left > 0:
                    fake.failures_left -= 1
                    return self._send(503, b'{"error": "busy"}')
                if mode == "malformed":
                    return self._send(200, b'{"choices": [{"message": ')
                if mode == "no-content":
                    return self._send(200, b'{"choices": [{"message": {}}]}')
                if self.path.endswith("/completions") and "chat" not in self.path:
                    return self._completions(body)
                last = body["messages"][-1]["content"]
                choices = [
                    {"index": i, "message": {"role": "assistant", "content": f" echo {i}: {last} "}}
                    for i in range(body.get("n", 1))
                ]
                return self._send(200, json.dumps({"choices": choices}).encode())

            def _completions(self, body: dict[str, Any]) -> None:
                if not fake.logprobs:
                    return self._send(404, b'{"error": "not found"}')
                text = body["prompt"]
                words = list(re.finditer(r"\S+", text))  # "tokens": words, each log p = -1
                lp = {
                    "tokens": [w.group() for w in words],
                    "text_offset": [w.start() for w in words],
                    "token_logprobs": [None] + [-1.0] * (len(words) - 1),
                }
                self._send(200, json.dumps({"choices": [{"text": text, "logprobs": lp}]}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    yield server
    server.close()


def _bundle(tmp_path: Path, url: str, **kw: Any) -> Path:
    out = tmp_path / "remote-fake"
    import_remote(out, url=url, model="big-llm", **kw)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_remote_bundle_is_a_manifest_without_the_key(tmp_path: Path) -> None:
    out = tmp_path / "r"
    argv = ["import-remote", "--url", "http://vllm:8000/v1", "--model", "m", "--out", str(out)]
    assert training_main([*argv, "--timeout", "2.5"]) == 0
    manifest = read_manifest(out)
    assert manifest.architecture == "remote-openai" and manifest.files == {}
    assert manifest.model_config["remote"]["timeout_s"] == 2.5
    assert manifest.model_config["remote"]["api_key_env"] == "DIALOGUE_REMOTE_API_KEY"
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE]
    # another endpoint or model is another bundle id
    other = tmp_path / "r2"
    import_remote(other, url="http://vllm:8000/v1", model="other", name="r")
    assert read_manifest(other).bundle_id != manifest.bundle_id
    with pytest.raises(ValueError, match="credentials"):
        import_remote(tmp_path / "x", url="http://user:secret@vllm/v1", model="m")


def test_replies_go_out_as_messages_and_come_back(
    fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIALOGUE_REMOTE_API_KEY", "sk-test-123")
    gen = load_generator(_bundle(tmp_path, fake.url + "/chat/completions"))
    assert isinstance(gen, RemoteGenerator) and gen.device == "remote"
    assert gen.bundle_id.startswith("remote-fake@") and "sk-test" not in repr(gen.__dict__)
    contexts = [["hi", "hello", "how are you ?"], ["what time is it ?"]]
    greedy = DecodingConfig(max_length=16)
    sample = DecodingConfig(strategy="sample", max_length=5, top_k=7, num_return_sequences=2)
    stages: list[str] = []
    out = gen.reply_each(contexts, [greedy, sample], on_stage=lambda s, t: stages.append(s))
    assert [[r.text for r in row] for row in out] == [
        ["echo 0: how are you ?"],
        ["echo 0: what time is it ?", "echo 1: what time is it ?"],
    ]
    assert stages == ["generate"]
    first = next(r for r in fake.requests if r["body"]["max_tokens"] == 16)
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test-123"
    assert first["body"]["model"] == "big-llm" and first["body"]["temperature"] == 0.0
    assert [m["role"] for m in first["body"]["messages"]] == ["user", "assistant", "user"]
    drawn = next(r["body"] for r in fake.requests if r["body"]["max_tokens"] == 5)
    assert drawn["n"] == 2 and drawn["top_k"] == 7 and drawn["temperature"] == 1.0
    assert gen.counts["ok"] == 2


def test_a_timeout_is_a_remote_timeout_and_then_fails_fast(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    gen = load_generator(_bundle(tmp_path, fake.url, timeout_s=0.2, cooldown_s=0.5))
    fake.mode = "slow"
    started = time.monotonic()
    with pytest.raises(RemoteTimeout):
        gen.respond([["hi"]])
    assert time.monotonic() - started < 0.5  # not retried
    with pytest.raises(RemoteUnavailable, match="moments ago"):
        gen.respond([["hi"]])  # the circuit is open: no request sent
    assert len(fake.requests) == 1
    time.sleep(0.55)
    fake.mode = "ok"
    assert gen.respond([["hi"]]) == ["echo 0: hi"]


def test_the_deadline_shortens_the_timeout(fake: FakeOpenAI, tmp_path: Path) -> None:
    gen = load_generator(_bundle(tmp_path, fake.url, timeout_s=5.0))
    assert isinstance(gen, RemoteGenerator)
    fake.mode = "slow"
    started = time.monotonic()
    with pytest.raises(RemoteTimeout):
        gen.reply_each([["hi"]], [gen.decoding], deadline=time.monotonic() + 0.2)
    assert time.monotonic() - started < 0.5


def test_502_503_are_retried_500_and_bad_json_are_not(fake: FakeOpenAI, tmp_path: Path) -> None:
    gen = load_generator(_bundle(tmp_path, fake.url, retries=2, cooldown_s=0))
    assert isinstance(gen, RemoteGenerator)
    fake.mode, fake.failures_left = "503-then-ok", 2
    assert gen.respond([["hi"]]) == ["echo 0: hi"]
    assert len(fake.requests) == 3 and gen.counts["retry"] == 2
    fake.mode, fake.failures_left = "503-then-ok", 5
    with pytest.raises(RemoteUnavailable, match="HTTP 503 \\(after 3 attempts\\)"):
        gen.respond([["hi"]])
    fake.requests.clear()
    fake.mode = "500"
    with pytest.raises(RemoteUnavailable, match="HTTP 500"):
        gen.respond([["hi"]])
    assert len(fake.requests) == 1
    for mode in ("malformed", "no-content"):
        fake.mode = mode
        with pytest.raises(RemoteBadResponse):
            gen.respond([["hi"]])


def test_connect_errors_are_retried_then_unavailable(tmp_path: Path) -> None:
    gen = load_generator(
        _bundle(tmp_path, f"http://127.0.0.1:{_free_port()}/v1", retries=1, cooldown_s=0)
    )
    assert isinstance(gen, RemoteGenerator)
    with pytest.raises(RemoteUnavailable, match=r"cannot connect.*after 2 attempts"):
        gen.respond([["hi"]])
    assert gen.counts["retry"] == 1


def test_the_service_answers_from_a_remote_arm_and_falls_back(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    models_dir = build_tiny_bundles(tmp_path / "models", generator=False)
    _bundle(models_dir, fake.url, cooldown_s=0, retries=0)
    settings = make_settings(models_dir, generative_bundle="remote-fake")
    from service.app import create_app

    with TestClient(create_app(settings)) as client:
        models = {m["backend"]: m for m in client.get("/v1/models").json()["models"]}
        assert models["generative"]["device"] == "remote"
        body = {"context": ["hello , how are you ?"], "backend": "generative"}
        ok = client.post("/respond", json=body)
        assert ok.status_code == 200, ok.text
        assert ok.json()["response"] == "echo 0: hello , how are you ?"
        assert ok.json()["model"] == models["generative"]["model"]
        fake.mode = "500"
        fell = client.post("/respond", json=body)
        assert fell.status_code == 200 and fell.json()["backend"] == "retrieval"
    with TestClient(
        create_app(make_settings(models_dir, generative_bundle="remote-fake", fallback=False))
    ) as client:
        failed = client.post("/respond", json=body)
        assert failed.status_code == 503
        assert failed.json()["error"]["type"] == "backend_error"


def _remote(app: Any) -> RemoteGenerator:
    gen = app.state.engine.backends["generative"].responder
    assert isinstance(gen, RemoteGenerator)
    return gen


def _until(done: Callable[[], bool], within_s: float = 1.0) -> None:
    give_up = time.monotonic() + within_s
    while not done():
        assert time.monotonic() < give_up, "timed out waiting"
        time.sleep(0.01)


def _failures(client: TestClient, reason: str) -> float:
    return sample(
        parse_metrics(client.get("/metrics").text),
        "dialogue_backend_failures_total",
        backend="generative",
        arm="generative",
        reason=reason,
    )


def test_the_request_deadline_cuts_the_remote_call(fake: FakeOpenAI, tmp_path: Path) -> None:
    """A slow endpoint: the client gets its 504 by the request deadline (not the bundle's 10 s
    timeout), and the remote call itself ends there, so the backend's worker is free at once."""
    models_dir = build_tiny_bundles(tmp_path / "models", generator=False)
    _bundle(models_dir, fake.url, timeout_s=10.0, retries=0, cooldown_s=0)
    fake.mode, fake.delay = "slow", 3.0
    settings = make_settings(
        models_dir, generative_bundle="remote-fake", fallback=False, request_timeout_s=0.5
    )
    from service.app import create_app

    app = create_app(settings)
    body = {"context": ["hello , how are you ?"], "backend": "generative"}
    with TestClient(app) as client:
        gen = _remote(app)
        started = time.monotonic()
        resp = client.post("/respond", json=body)
        took = time.monotonic() - started
        assert resp.status_code == 504, resp.text
        assert resp.json()["error"]["type"] == "deadline_exceeded"
        assert took < 0.5 + 0.4
        _until(lambda: gen.counts["timeout"] == 1)  # the call ends at the deadline, not after
        assert time.monotonic() - started < 0.5 + 0.5
        fake.mode = "ok"  # the worker is free: the next request is answered at once
        again = client.post("/respond", json=body)
        assert again.status_code == 200, again.text
        assert time.monotonic() - started < 1.5
        assert _failures(client, "timeout") == 1
        m = parse_metrics(client.get("/metrics").text)
        assert (
            sample(
                m,
                "dialogue_requests_total",
                backend="generative",
                arm="override",
                outcome="timeout",
            )
            == 1
        )


def test_a_slow_remote_arm_falls_back_within_the_deadline(fake: FakeOpenAI, tmp_path: Path) -> None:
    models_dir = build_tiny_bundles(tmp_path / "models", generator=False)
    _bundle(models_dir, fake.url, timeout_s=10.0, retries=0, cooldown_s=0)
    fake.mode, fake.delay = "slow", 3.0
    settings = make_settings(models_dir, generative_bundle="remote-fake", request_timeout_s=1.0)
    from service.app import create_app

    app = create_app(settings)
    with TestClient(app) as client:
        gen = _remote(app)
        started = time.monotonic()
        resp = client.post("/respond", json={"context": ["hi"], "backend": "generative"})
        took = time.monotonic() - started
        assert resp.status_code == 200 and resp.json()["backend"] == "retrieval", resp.text
        # the remote call was cut at 0.8 s (FALLBACK_RESERVE 0.2 of the 1 s deadline left for
        # the retriever), and the answer came within the deadline
        assert 0.7 < took < 1.0 + 0.3
        _until(lambda: gen.counts["timeout"] == 1)  # its thread may count a moment later
        assert time.monotonic() - started < 1.0 + 0.5  # not the endpoint's 3 s
        assert _failures(client, "timeout") == 1
        m = parse_metrics(client.get("/metrics").text)
        assert sample(m, "dialogue_fallbacks_total", backend="generative", outcome="timeout") == 1


def test_remote_failures_are_counted_by_reason_and_fall_back(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    models_dir = build_tiny_bundles(tmp_path / "models", generator=False)
    # the bundle's own 0.2 s timeout is shorter than the request deadline: a timeout with
    # deadline left falls back like any failure
    _bundle(models_dir, fake.url, timeout_s=0.2, retries=0, cooldown_s=0)
    settings = make_settings(models_dir, generative_bundle="remote-fake")
    from service.app import create_app

    app = create_app(settings)
    body = {"context": ["hi"], "backend": "generative"}
    with TestClient(app) as client:
        gen = _remote(app)
        counted = dict.fromkeys(("timeout", "unavailable", "bad_response", "error"), 0.0)
        for mode, reason in (
            ("slow", "timeout"),
            ("500", "unavailable"),
            ("malformed", "bad_response"),
            ("no-content", "bad_response"),
            ("bug", "error"),
        ):
            if mode == "bug":

                def broken(*args: Any, **kwargs: Any) -> list[Any]:
                    raise RuntimeError("a bug")

                gen.complete = broken  # type: ignore[method-assign]
            else:
                fake.mode = mode
            resp = client.post("/respond", json=body)
            assert resp.status_code == 200 and resp.json()["backend"] == "retrieval", mode
            counted[reason] += 1
            assert {r: _failures(client, r) for r in counted} == counted, mode
        m = parse_metrics(client.get("/metrics").text)
        # each failed attempt fell back; its outcome label stays "error" (a 503 without fallback)
        assert sample(m, "dialogue_fallbacks_total", backend="generative", outcome="error") == 5
    with TestClient(
        create_app(make_settings(models_dir, generative_bundle="remote-fake", fallback=False))
    ) as client:
        fake.mode = "500"
        failed = client.post("/respond", json=body)
        assert failed.status_code == 503
        assert failed.json()["error"] == {
            "type": "backend_error",
            "message": "the generative backend failed (unavailable)",
        }
        assert _failures(client, "unavailable") == 1


def test_the_http_client_is_closed_on_reload_and_shutdown(fake: FakeOpenAI, tmp_path: Path) -> None:
    models_dir = build_tiny_bundles(tmp_path / "models", generator=False)
    _bundle(models_dir, fake.url)
    token = "s3cret-token-for-tests"
    settings = make_settings(models_dir, generative_bundle="remote-fake", admin_token=token)
    from service.app import create_app

    app = create_app(settings)
    with TestClient(app) as client:
        body = {"context": ["hi"], "backend": "generative"}
        assert client.post("/respond", json=body).status_code == 200
        before = _remote(app)
        assert not before.closed
        resp = client.post("/admin/reload", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, resp.text
        after = _remote(app)
        assert after is not before and before.closed and not after.closed
        assert client.post("/respond", json=body).json()["response"] == "echo 0: hi"
    assert after.closed  # shutdown


def test_remote_teacher_with_and_without_log_probabilities(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    from training.config import AugmentConfig
    from training.methods.g2r.augment import ContextGroup, augment_contexts, read_shards
    from training.methods.g2r.remote_teacher import RemoteTeacher
    from training.methods.g2r.teachers import load_teacher

    bundle = _bundle(tmp_path, fake.url)
    groups = [ContextGroup((f"context {i}",), (f"gold reply {i}",)) for i in range(5)]
    cfg = AugmentConfig(m=2, min_lengths=(0,), max_length=8, batch_contexts=2)

    teacher = load_teacher(bundle, max_concurrency=3)
    assert isinstance(teacher, RemoteTeacher) and teacher.has_scores
    ll, mi = teacher.score([["context 0"]], ["a b c"])
    assert ll == [pytest.approx(-1.0)]  # three words, each log p = -1
    # log P(r | ".") = -3; with the empty context "a" is the text's first token, which has no
    # log-probability: -2 over the other two. log P(r) is their average likelihood (eq. 6).
    log_prior = math.log((math.exp(-3) + math.exp(-2)) / 2)
    assert mi == [pytest.approx((-3 - log_prior) / 3)]
    assert augment_contexts(teacher, groups, tmp_path / "scored", cfg, progress=False) == 5
    header, records = read_shards(tmp_path / "scored")
    assert header is not None and "scores" not in header
    assert records[0]["generated"][0]["text"] == "echo 0 : context 0"  # normalised
    assert all(g["ll"] is not None for r in records.values() for g in r["generated"])

    fake.logprobs = False
    plain = load_teacher(bundle)
    assert isinstance(plain, RemoteTeacher) and not plain.has_scores
    out = tmp_path / "unscored"
    assert augment_contexts(plain, groups, out, cfg, progress=False) == 5
    header, records = read_shards(out)
    assert header is not None and header["scores"] is False
    assert all(g["ll"] is None for r in records.values() for g in r["generated"])
    assert augment_contexts(plain, groups, out, cfg, progress=False) == 0  # resumes

    from training.methods.g2r.filter import TeacherReplyFilter
    from training.methods.g2r.job import without_scores_check

    with pytest.raises(ValueError, match="--method g2r-d"):
        without_scores_check(header, "g2r-dm", None, out)
    kept = without_scores_check(header, "g2r-d", TeacherReplyFilter(), out)
    assert kept is not None and kept.min_score_teacher_quantile is None


def test_our_bundles_and_remote_ones_load_without_transformers(tmp_path: Path) -> None:
    import subprocess
    import sys

    ours = build_tiny_bundles(tmp_path, retriever=False) / "generator-nd"
    remote = _bundle(tmp_path, "http://127.0.0.1:9/v1")
    code = (
        "import sys; sys.modules['transformers'] = None\n"  # any import of it fails
        "from models.generator import load_generator\n"
        f"print(load_generator({str(ours)!r}).bundle_id)\n"
        f"print(load_generator({str(remote)!r}).bundle_id)\n"
        "import service.backends\n"
        "assert sys.modules['transformers'] is None\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0].startswith("generator-nd@")
    assert done.stdout.split()[1].startswith("remote-fake@")


def test_the_remote_generator_talks_to_this_services_own_chat_endpoint(tmp_path: Path) -> None:
    """Interoperability: a remote-openai bundle pointed at another instance of this service
    (its POST /v1/chat/completions, served by uvicorn on 127.0.0.1)."""
    import uvicorn

    from service.app import create_app

    models_dir = build_tiny_bundles(tmp_path / "models")
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(make_settings(models_dir)), host="127.0.0.1", port=0, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        import_remote(tmp_path / "self", url=f"http://127.0.0.1:{port}/v1", model="generative")
        gen = load_generator(tmp_path / "self")
        replies = gen.reply_each([["hello , how are you ?"], ["hi"]], [gen.decoding] * 2)
        assert [len(r) for r in replies] == [1, 1]
        assert all(isinstance(r[0].text, str) for r in replies)
    finally:
        server.should_exit = True
        thread.join(timeout=10)

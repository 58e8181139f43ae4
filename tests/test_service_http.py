"""The body size limit on a real server: a chunked body (no Content-Length) is stopped while it
is read, with a 413, quickly and without the server holding it in memory. The request deadline
starts when the service first sees a request, so a body that takes it past is a 504."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from service_fixtures import build_tiny_bundles, make_settings

from service.app import create_app
from service.http import body_limit

CHUNK = 64 * 1024
BODY_BYTES = 200 * 1024 * 1024  # what the client is ready to send: 200 MiB


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``python -m service``'s app under uvicorn, in a thread of this process; yields its port."""
    models_dir = build_tiny_bundles(tmp_path_factory.mktemp("models"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    # a 1 s deadline for the slow-body test; the others answer well within it
    settings = make_settings(models_dir, request_timeout_s=1.0)
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield port
    srv.should_exit = True
    thread.join(timeout=30)


def _send_chunked(port: int, total: int) -> tuple[int, int, float, bytes]:
    """POST /respond with a chunked body of up to ``total`` bytes, stopping when the server
    answers or closes; returns (bytes sent, status, seconds, response)."""
    started = time.perf_counter()
    sent = 0
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /respond HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        payload = b'{"context": ["' + b"z" * (CHUNK - 14)
        frame = f"{len(payload):x}\r\n".encode() + payload + b"\r\n"
        sock.setblocking(False)
        while sent < total:
            with contextlib.suppress(BlockingIOError):
                reply += sock.recv(65536)
            if reply:
                break
            try:
                sock.sendall(frame)  # non-blocking: raises when the buffer is full
                sent += len(payload)
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := sock.recv(65536):
                reply += chunk
    match = re.match(rb"HTTP/1\.1 (\d{3})", reply)
    assert match, reply[:200]
    return sent, int(match.group(1)), time.perf_counter() - started, reply


def test_a_chunked_body_over_the_limit_is_refused_while_it_is_read(server: int) -> None:
    limit = body_limit(max_turns=16, request_chars=16 * 1000)  # the defaults
    rss_before = _rss_bytes()
    sent, status, seconds, reply = _send_chunked(server, BODY_BYTES)
    growth = _rss_bytes() - rss_before
    assert status == 413
    assert b'"type":"payload_too_large"' in reply.replace(b" ", b"")
    assert f"exceeds {limit} bytes".encode() in reply
    assert b"connection: close" in reply.lower()
    assert sent < 8 * 1024 * 1024  # stopped long before the 200 MiB the client had ready
    assert seconds < 5
    assert growth < 32 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB"


def test_a_chunked_body_within_the_limit_is_served(server: int) -> None:
    body = b'{"context": ["hello , how are you ?"], "backend": "retrieval"}'
    with socket.create_connection(("127.0.0.1", server), timeout=30) as sock:
        sock.sendall(
            b"POST /respond HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        for part in (body[:10], body[10:]):  # two chunks
            sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert b'"backend":"retrieval"' in reply


def test_the_deadline_counts_from_when_the_request_arrived(server: int) -> None:
    # The body takes 1.3 s to arrive against a 1 s deadline: a 504 as soon as it is read, and
    # no model is asked (the backend would answer in milliseconds).
    body = b'{"context": ["hello , how are you ?"], "backend": "retrieval"}'
    with socket.create_connection(("127.0.0.1", server), timeout=30) as sock:
        sock.sendall(
            b"POST /respond HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(f"{10:x}\r\n".encode() + body[:10] + b"\r\n")
        time.sleep(1.3)
        rest = body[10:]
        sock.sendall(f"{len(rest):x}\r\n".encode() + rest + b"\r\n0\r\n\r\n")
        started = time.perf_counter()
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 504"), reply[:300]
    assert b"deadline" in reply
    assert time.perf_counter() - started < 0.5

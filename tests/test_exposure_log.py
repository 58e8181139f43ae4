"""Request ids and the exposure log (issue 14, item 2): X-Request-ID honoured or replaced; one
JSON line per answered request, without raw text unless asked; size rotation; a full queue drops
(and counts) instead of blocking a request; one file per process."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import build_tiny_bundles, make_settings, parse_metrics, sample

from service.ab_report import read_jsonl_dir
from service.app import create_app
from service.exposure import JsonlLog, process_file_name
from service.routing import session_hash

EXPOSURE_KEYS = {
    "time",
    "request_id",
    "session",
    "arm",
    "variant",
    "backend",
    "bundle",
    "latency_ms",
    "response_chars",
    "response_tokens",
    "filtered",
    "fallback",
    "endpoint",
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


def _records(directory: Path) -> list[dict[str, Any]]:
    return list(read_jsonl_dir(directory))


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("client-id_1.2", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("has space", False),
        ("semi;colon", False),
        ("", False),
        (None, False),
    ],
)
def test_a_well_formed_client_request_id_is_honoured_else_replaced(
    models_dir: Path, sent: str | None, kept: bool
) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent}
    with TestClient(create_app(make_settings(models_dir))) as client:
        resp = client.post(
            "/respond", json={"context": ["hi"], "backend": "retrieval"}, headers=headers
        )
        error = client.post("/respond", json={"context": []}, headers=headers)
    assert resp.status_code == 200
    rid = resp.json()["request_id"]
    assert resp.headers["x-request-id"] == rid
    if kept:
        assert rid == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", rid)
    # errors carry the header too (the body is the usual error body)
    assert error.status_code == 422 and "x-request-id" in error.headers
    assert (error.headers["x-request-id"] == sent) is kept


def test_each_response_gets_its_own_request_id(models_dir: Path) -> None:
    with TestClient(create_app(make_settings(models_dir))) as client:
        ids = {
            client.post("/respond", json={"context": ["hi"]}).json()["request_id"]
            for _ in range(20)
        }
    assert len(ids) == 20


def test_the_exposure_log_records_answered_requests_without_raw_text(
    models_dir: Path, tmp_path: Path
) -> None:
    settings = make_settings(models_dir, exposure_log_dir=tmp_path / "exp", log_salt="pepper-1")
    with TestClient(create_app(settings)) as client:
        replies = [
            client.post(
                "/respond",
                json={"context": ["secret words here"], "session_id": "user-42@example.com"},
            ).json()
            for _ in range(3)
        ]
        override = client.post(
            "/respond", json={"context": ["more secret words"], "backend": "generative"}
        ).json()
        assert client.post("/respond", json={"context": []}).status_code == 422  # not answered
    [path] = (tmp_path / "exp").glob("*.jsonl")
    assert path.name == process_file_name("exposures")  # one file per host and process
    assert path.name.startswith("exposures-") and path.name.endswith(f"-{os.getpid()}.jsonl")
    if re.fullmatch(r"[A-Za-z0-9._-]+", socket.gethostname()):
        assert socket.gethostname() in path.name
    text = path.read_text()
    assert "secret" not in text and "user-42" not in text  # no raw text, no raw session id
    records = _records(tmp_path / "exp")
    assert len(records) == 4
    for record in records:
        assert set(record) == EXPOSURE_KEYS
    hashed = session_hash("pepper-1", "user-42@example.com")
    for reply, record in zip(replies, records[:3], strict=True):
        assert record["request_id"] == reply["request_id"]
        assert record["session"] == hashed and re.fullmatch(r"[0-9a-f]{32}", hashed)
        assert (record["arm"], record["backend"]) == (reply["arm"], reply["backend"])
        assert record["variant"] == reply["arm"]  # the AB_WEIGHTS arms are the backends
        assert record["bundle"] == reply["model"] and record["latency_ms"] == reply["latency_ms"]
        assert record["response_chars"] == len(reply["response"])
        assert record["fallback"] is False and record["filtered"] is None
        assert record["endpoint"] == "respond"
        if record["backend"] == "retrieval":
            assert record["response_tokens"] is None
        else:
            assert isinstance(record["response_tokens"], int)
    last = records[3]
    assert (last["request_id"], last["arm"], last["session"]) == (
        override["request_id"],
        "override",
        None,
    )


def test_raw_text_is_logged_only_when_asked(models_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(models_dir, exposure_log_dir=tmp_path, exposure_log_text=True)
    with TestClient(create_app(settings)) as client:
        reply = client.post(
            "/respond", json={"context": ["hello", "how are you ?"], "backend": "retrieval"}
        ).json()
    [record] = _records(tmp_path)
    assert set(record) == EXPOSURE_KEYS | {"context", "response"}
    assert record["context"] == ["hello", "how are you ?"]
    assert record["response"] == reply["response"]


def test_the_log_rotates_by_size_and_keeps_n_files(tmp_path: Path) -> None:
    log = JsonlLog(tmp_path, "exposures", max_bytes=2048, backups=3, queue_size=1000)
    for i in range(200):  # ~90 bytes each: ~18 KB in all, 2 KB a file
        assert log.write({"request_id": f"r{i:04d}", "arm": "a", "padding": "p" * 50})
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    base = process_file_name("exposures")
    assert files == [base, f"{base}.1", f"{base}.2", f"{base}.3"]  # the current one + 3 kept
    for name in files:
        assert (tmp_path / name).stat().st_size <= 2048
    kept = [r["request_id"] for r in _records(tmp_path)]
    # the newest records survive, each once, every line whole JSON
    assert len(kept) == len(set(kept)) and "r0199" in kept and "r0000" not in kept
    numbers = sorted(int(r[1:]) for r in kept)
    assert numbers == list(range(numbers[0], 200))

    everything = tmp_path / "all"
    log = JsonlLog(everything, "exposures", max_bytes=2048, backups=100, queue_size=1000)
    for i in range(200):
        log.write({"request_id": f"r{i:04d}", "padding": "p" * 50})
    log.close()
    assert sorted(r["request_id"] for r in _records(everything)) == [
        f"r{i:04d}" for i in range(200)
    ]


def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = JsonlLog(
        tmp_path,
        "exposures",
        max_bytes=1 << 20,
        backups=1,
        queue_size=4,
        on_drop=lambda: dropped.append(1),
    )
    release = threading.Event()
    write = log._write

    def stuck_write(records: Any) -> None:  # a disk that does not answer
        release.wait(10)
        write(records)

    log._write = stuck_write  # type: ignore[method-assign]
    started = time.perf_counter()
    accepted = sum(log.write({"request_id": f"r{i}"}) for i in range(1000))
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"1000 writes took {elapsed:.3f} s against a stuck disk"
    assert accepted <= 5 and len(dropped) == 1000 - accepted == log.dropped
    release.set()
    log.close()  # writes what was queued
    assert len(_records(tmp_path)) == accepted


def test_a_full_queue_in_the_service_counts_dropped_records(
    models_dir: Path, tmp_path: Path
) -> None:
    settings = make_settings(models_dir, exposure_log_dir=tmp_path, exposure_log_queue=1)
    app = create_app(settings)
    release, stuck = threading.Event(), threading.Event()
    with TestClient(app) as client:
        log = app.state.engine.exposures
        write = log._write

        def stuck_write(records: Any) -> None:
            stuck.set()
            release.wait(10)
            write(records)

        log._write = stuck_write

        def respond() -> int:
            body = {"context": ["hi"], "backend": "retrieval"}
            return client.post("/respond", json=body).status_code

        # The first record reaches the writer, which then hangs (a slow disk): from then on the
        # queue holds one record and every further one is dropped, whatever the machine's load.
        statuses = [respond()]
        assert stuck.wait(5)
        statuses += [respond() for _ in range(5)]
        metrics = parse_metrics(client.get("/metrics").text)
        release.set()
    assert statuses == [200] * 6  # every request answered while the log could not keep up
    dropped = sample(metrics, "dialogue_exposure_log_dropped_total", log="exposure")
    assert dropped == 4  # one in the writer's hands, one queued, the rest dropped
    assert len(_records(tmp_path)) == 2


def test_the_log_is_off_without_a_directory(models_dir: Path) -> None:
    app = create_app(make_settings(models_dir))
    with TestClient(app) as client:
        assert client.post("/respond", json={"context": ["hi"]}).status_code == 200
        assert app.state.engine.exposures is None and app.state.engine.feedback_log is None

"""Hot reload: the admin endpoint, SIGHUP, and keeping the old bundles when new ones are bad."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from service_fixtures import build_tiny_bundles, make_settings, parse_metrics, sample

from models.bundle import BundleError
from service.app import create_app
from service.schemas import BackendName, RespondRequest

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _model_ids(client: TestClient) -> dict[str, str]:
    return {m["backend"]: m["model"] for m in client.get("/v1/models").json()["models"]}


def test_admin_reload_is_absent_without_admin_token(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(build_tiny_bundles(tmp_path)))) as client:
        resp = client.post("/admin/reload", headers=AUTH)
    assert resp.status_code == 404
    assert resp.json() == {"error": {"type": "http_error", "message": "Not Found"}}


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
def test_admin_reload_refuses_a_missing_or_wrong_token(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    settings = make_settings(build_tiny_bundles(tmp_path), admin_token=TOKEN)
    with TestClient(create_app(settings)) as client:
        resp = client.post("/admin/reload", headers=headers)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    assert resp.json() == {
        "error": {"type": "unauthorized", "message": "a valid bearer token is required"}
    }


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "no Authorization header"),
        ({"Authorization": "Basic abc"}, "not a Bearer credential"),
        ({"Authorization": "Bearer guessed-token-value-1"}, "wrong bearer token"),
    ],
)
def test_admin_reload_logs_refusals_without_the_token(
    tmp_path: Path, headers: dict[str, str], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(build_tiny_bundles(tmp_path), admin_token=TOKEN)
    with TestClient(create_app(settings)) as client, caplog.at_level("WARNING", "service.routes"):
        assert client.post("/admin/reload", headers=headers).status_code == 401
    refusals = [r.getMessage() for r in caplog.records if "refused admin request" in r.getMessage()]
    assert len(refusals) == 1
    assert refusals[0].startswith("refused admin request POST /admin/reload from ")
    assert refusals[0].endswith(why)
    assert TOKEN not in caplog.text and "guessed-token-value-1" not in caplog.text


@pytest.mark.parametrize("token", ["", "   ", "short", "x" * 15, " " + "y" * 16])
def test_an_empty_or_short_admin_token_refuses_to_start(tmp_path: Path, token: str) -> None:
    with pytest.raises(ValidationError, match="ADMIN_TOKEN") as refused:
        make_settings(tmp_path, admin_token=token)
    if token.strip() == token:
        assert "at least 16 characters" in str(refused.value)
    if token.strip():
        assert token.strip() not in str(refused.value)  # never echoed


def test_a_token_of_the_minimum_length_enables_the_endpoint(tmp_path: Path) -> None:
    token = "z" * 16
    settings = make_settings(build_tiny_bundles(tmp_path), admin_token=token)
    with TestClient(create_app(settings)) as client:
        resp = client.post("/admin/reload", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200


def test_admin_reload_swaps_in_new_bundles(tmp_path: Path) -> None:
    models_dir = build_tiny_bundles(tmp_path)
    with TestClient(create_app(make_settings(models_dir, admin_token=TOKEN))) as client:
        before = _model_ids(client)
        build_tiny_bundles(models_dir, retriever=False, seed=1)  # retrain the generator
        resp = client.post("/admin/reload", headers=AUTH)
        assert resp.status_code == 200
        after = {m["backend"]: m["model"] for m in resp.json()["models"]}
        assert after["generative"] != before["generative"]
        assert after["retrieval"] == before["retrieval"]
        assert _model_ids(client) == after
        reply = client.post("/respond", json={"context": ["hi"], "backend": "generative"}).json()
        assert reply["model"] == after["generative"]
        m = parse_metrics(client.get("/metrics").text)
    assert sample(m, "dialogue_model_info", backend="generative", model=after["generative"]) == 1
    assert (
        "dialogue_model_info",
        frozenset({("backend", "generative"), ("model", before["generative"])}),
    ) not in m


def test_admin_reload_with_a_bad_bundle_keeps_the_old_ones(tmp_path: Path) -> None:
    models_dir = build_tiny_bundles(tmp_path)
    with TestClient(create_app(make_settings(models_dir, admin_token=TOKEN))) as client:
        before = _model_ids(client)
        with (models_dir / "retriever-g2r" / "index.faiss").open("ab") as f:
            f.write(b"corrupt")
        resp = client.post("/admin/reload", headers=AUTH)
        assert resp.status_code == 409
        error = resp.json()["error"]
        assert error["type"] == "reload_failed"
        assert error["message"].startswith("reload failed, kept the loaded models: bundle ")
        assert "index.faiss checksum mismatch" in error["message"]
        assert _model_ids(client) == before
        for backend in ("generative", "retrieval"):
            reply = client.post("/respond", json={"context": ["hi"], "backend": backend})
            assert reply.status_code == 200 and reply.json()["model"] == before[backend]


def test_sighup_reloads_the_bundles(tmp_path: Path) -> None:
    models_dir = build_tiny_bundles(tmp_path)
    app = create_app(make_settings(models_dir))

    async def scenario() -> tuple[str, str]:
        async with app.router.lifespan_context(app):
            engine = app.state.engine
            before = engine.backends["generative"].model_id
            # Never send SIGHUP unless the app handles it: the default action kills pytest.
            assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL
            build_tiny_bundles(models_dir, retriever=False, seed=2)
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(500):
                await asyncio.sleep(0.01)
                if engine.backends["generative"].model_id != before:
                    break
            return before, engine.backends["generative"].model_id

    before, after = asyncio.run(scenario())
    assert after != before
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # handler removed on shutdown


def test_shutdown_lets_queued_requests_finish(tmp_path: Path) -> None:
    app = create_app(make_settings(build_tiny_bundles(tmp_path), max_batch=1))

    async def scenario() -> list[str]:
        async with app.router.lifespan_context(app):
            engine = app.state.engine
            requests = [RespondRequest(context=["hi"], backend="retrieval") for _ in range(4)]
            tasks = [asyncio.create_task(engine.respond(r)) for r in requests]
            await asyncio.sleep(0)  # all four queued before shutdown starts
        return [(await t).backend for t in tasks]

    assert asyncio.run(scenario()) == ["retrieval"] * 4


@pytest.mark.parametrize("bundle_state", ["good", "corrupt"])
def test_reload_under_concurrent_requests_fails_none(tmp_path: Path, bundle_state: str) -> None:
    from service.errors import ReloadFailed

    models_dir = build_tiny_bundles(tmp_path)
    app = create_app(make_settings(models_dir, max_batch=4))

    async def scenario() -> tuple[list[str], str, str]:
        async with app.router.lifespan_context(app):
            engine = app.state.engine
            before = engine.backends["generative"].model_id
            if bundle_state == "good":
                build_tiny_bundles(models_dir, retriever=False, seed=3)
            else:
                with (models_dir / "retriever-g2r" / "index.faiss").open("ab") as f:
                    f.write(b"corrupt")
            reloaded = asyncio.Event()
            models: list[str] = []

            async def client(i: int) -> None:
                # Keep asking until well after the swap; any failed request raises out of gather.
                backend: BackendName = "generative" if i % 2 else "retrieval"
                after_swap = 0
                while after_swap < 3:
                    answer = await engine.respond(RespondRequest(context=["hi"], backend=backend))
                    assert answer.backend == backend
                    models.append(answer.model)
                    after_swap += reloaded.is_set()

            clients = [asyncio.create_task(client(i)) for i in range(8)]
            await asyncio.sleep(0.02)
            try:
                await engine.reload()
            except ReloadFailed:
                assert bundle_state == "corrupt"
            reloaded.set()
            await asyncio.gather(*clients)
            return models, before, engine.backends["generative"].model_id

    models, before, after = asyncio.run(scenario())
    assert len(models) >= 8 * 3
    if bundle_state == "good":
        assert after != before and before in models and after in models  # served by both
    else:
        assert after == before and after in models


def _negative_teacher_beside(models_dir: Path) -> None:
    """A second generator beside generator-nd (as a real build has the generic negative teacher)."""
    shutil.copytree(models_dir / "generator-nd", models_dir / "generator-negative-teacher")
    path = models_dir / "generator-negative-teacher" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["name"] = "generator-negative-teacher"
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", ["unreadable manifest", "folder gone"])
@pytest.mark.parametrize("wanted", ["generator-nd", "auto"])
def test_reload_refuses_a_named_bundle_that_cannot_load_and_keeps_serving(
    tmp_path: Path, damage: str, wanted: str
) -> None:
    models_dir = build_tiny_bundles(tmp_path)
    _negative_teacher_beside(models_dir)
    if wanted == "auto":
        (models_dir / "serving.json").write_text(
            json.dumps({"generative": "generator-nd", "retrieval": "retriever-g2r"})
        )
    settings = make_settings(models_dir, admin_token=TOKEN, generative_bundle=wanted)
    with TestClient(create_app(settings)) as client:
        before = _model_ids(client)
        assert before["generative"].startswith("generator-nd@")
        if damage == "unreadable manifest":
            (models_dir / "generator-nd" / "manifest.json").write_text("{not json")
        else:
            shutil.rmtree(models_dir / "generator-nd")
        resp = client.post("/admin/reload", headers=AUTH)
        assert resp.status_code == 409
        message = resp.json()["error"]["message"]
        assert message.startswith("reload failed, kept the loaded models: ")
        assert (
            "manifest.json is not valid JSON"
            if damage != "folder gone"
            else "no generator bundle 'generator-nd'"
        ) in message
        assert _model_ids(client) == before
        reply = client.post("/respond", json={"context": ["hi"], "backend": "generative"})
        assert reply.status_code == 200 and reply.json()["model"] == before["generative"]


@pytest.mark.parametrize(
    ("overrides", "serving", "match"),
    [
        (
            {"generative_bundle": "generator-missing"},
            None,
            "no generator bundle 'generator-missing'",
        ),
        ({}, {"generative": "generator-gone"}, "'generator-gone' \\(the build's choice"),
        ({"retrieval_bundle": "retriever-g2"}, None, "no retriever bundle 'retriever-g2'"),
    ],
)
def test_startup_fails_when_a_named_bundle_cannot_load(
    tmp_path: Path, overrides: dict[str, str], serving: dict[str, str] | None, match: str
) -> None:
    models_dir = build_tiny_bundles(tmp_path)
    _negative_teacher_beside(models_dir)
    if serving is not None:
        (models_dir / "serving.json").write_text(json.dumps(serving))
    with (
        pytest.raises(BundleError, match=match),
        TestClient(create_app(make_settings(models_dir, **overrides))),
    ):
        pass


def test_models_list_names_and_ids_not_paths(tmp_path: Path) -> None:
    models_dir = build_tiny_bundles(tmp_path)
    with TestClient(create_app(make_settings(models_dir, generative_bundle="generator-*"))) as c:
        resp = c.get("/v1/models")
    assert str(tmp_path) not in resp.text
    assert {m["backend"]: (m["bundle"], m["name"]) for m in resp.json()["models"]} == {
        "generative": ("generator-nd", "generator-nd"),
        "retrieval": ("retriever-g2r", "retriever-g2r"),
    }

"""Arms as named variants (issue 14, item 1): any number of arms over bundles of either kind, a
bundle two arms name loaded once, option defaults per arm, a configured fallback arm, the old
AB_WEIGHTS settings as two arms, and a reload that swaps every arm at once."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from service_fixtures import build_tiny_bundles, make_settings, parse_metrics, sample

from service.app import create_app
from service.backends import Answer, Backend, GenerativeBackend
from service.routing import assign_arm
from service.settings import Settings

TOKEN = "s3cret-token-for-tests"

THREE_ARMS = {
    "nd": {"bundle": "generator-nd", "weight": 0.1},
    "standard": {"bundle": "generator-standard", "weight": 0.1},
    "g2r": {"bundle": "retriever-g2r", "weight": 0.8},
}


def _copy_bundle(models_dir: Path, src: str, dst: str) -> None:
    """A copy of bundle ``src`` named ``dst`` (directory and manifest name)."""
    shutil.copytree(models_dir / src, models_dir / dst)
    manifest = json.loads((models_dir / dst / "manifest.json").read_text())
    manifest["name"] = dst
    (models_dir / dst / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models_dir = build_tiny_bundles(tmp_path_factory.mktemp("models"))
    _copy_bundle(models_dir, "generator-nd", "generator-standard")
    return models_dir


def _broken(backend: Backend) -> None:
    def broken_infer(
        contexts: list[list[str]], params: list[Any], deadline: float | None = None
    ) -> list[Answer]:
        raise RuntimeError("CUDA error: device-side assert triggered")

    backend.infer = broken_infer  # type: ignore[method-assign]


def test_three_arms_split_10k_sessions_by_weight() -> None:
    settings = Settings(_env_file=None, arms=THREE_ARMS)  # type: ignore[call-arg]
    weights = settings.arm_weights
    assert weights == pytest.approx({"nd": 0.1, "standard": 0.1, "g2r": 0.8})
    arms = Counter(assign_arm(settings.ab_salt, f"session-{i}", weights) for i in range(10_000))
    assert set(arms) == {"nd", "standard", "g2r"}
    # binomial sd at p = 0.1, n = 10k is 0.003 (0.004 at 0.8): 0.012 is 3-4 sd
    for arm, weight in weights.items():
        assert abs(arms[arm] / 10_000 - weight) < 0.012, (arm, arms)


def test_the_engine_routes_each_session_to_its_hashed_arm_and_lists_the_arms(
    models_dir: Path,
) -> None:
    settings = make_settings(models_dir, arms=THREE_ARMS)
    with TestClient(create_app(settings)) as client:
        seen = Counter()
        for i in range(60):
            body = client.post("/respond", json={"context": ["hi"], "session_id": f"s{i}"}).json()
            expected = assign_arm(settings.ab_salt, f"s{i}", settings.arm_weights)
            assert body["arm"] == expected
            assert body["model"].split("@")[0] == THREE_ARMS[expected]["bundle"]
            seen[expected] += 1
        assert len(seen) >= 2
        models = client.get("/v1/models").json()
        metrics = parse_metrics(client.get("/metrics").text)
    assert [
        (m["arm"], m["weight"], m["backend"], m["bundle"], m["fallback"]) for m in models["models"]
    ] == [
        ("nd", 0.1, "generative", "generator-nd", "g2r"),
        ("standard", 0.1, "generative", "generator-standard", "g2r"),
        ("g2r", 0.8, "retrieval", "retriever-g2r", "nd"),  # the heaviest other arm; ties by name
    ]
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["auto", "nd", "standard", "g2r"]
    for arm, weight in (("nd", 0.1), ("standard", 0.1), ("g2r", 0.8)):
        assert sample(metrics, "dialogue_arm_weight", arm=arm) == pytest.approx(weight)
        assert (
            sample(
                metrics,
                "dialogue_requests_total",
                backend="retrieval" if arm == "g2r" else "generative",
                arm=arm,
                outcome="ok",
            )
            == seen[arm]
        )


def test_two_arms_on_one_bundle_share_one_loaded_model_with_their_own_options(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Path] = []
    load = GenerativeBackend.load.__func__  # type: ignore[attr-defined]

    def counting_load(cls: Any, bundle_dir: Path, *args: Any, **kwargs: Any) -> Any:
        loads.append(Path(bundle_dir))
        return load(cls, bundle_dir, *args, **kwargs)

    monkeypatch.setattr(GenerativeBackend, "load", classmethod(counting_load))
    arms = {
        "greedy": {"bundle": "generator-nd", "weight": 1},
        "beam": {
            "bundle": "generator-nd",
            "weight": 1,
            "options": {"strategy": "beam", "beam_size": 3, "max_length": 4},
        },
        "g2r": {"bundle": "retriever-g2r", "weight": 2, "options": {"num_candidates": 2}},
    }
    # ranking off: the arms' own decoding options are what is checked (generate-then-rank
    # widens a beam to its n-best: tests/test_generate_and_rank.py)
    app = create_app(make_settings(models_dir, arms=arms, generative_rerank=0))
    with TestClient(app) as client:
        serving = app.state.engine.serving
        assert loads == [models_dir / "generator-nd"]  # one load for the two arms
        assert serving.arms["greedy"].backend is serving.arms["beam"].backend
        assert len(serving.unique_backends()) == 2
        backend = serving.arms["beam"].backend
        beam = backend.prepare(serving.arms["beam"].merged_options(None))
        greedy = backend.prepare(serving.arms["greedy"].merged_options(None))
        assert (beam.strategy, beam.beam_size, beam.max_length) == ("beam", 3, 4)
        assert greedy.strategy == backend.responder.decoding.strategy != "beam"
        # the request's own options lie over the arm's defaults
        from service.schemas import ResponseOptions

        mixed = backend.prepare(
            serving.arms["beam"].merged_options(ResponseOptions(strategy="greedy"))
        )
        assert (mixed.strategy, mixed.max_length) == ("greedy", 4)
        # the retrieval arm's default of two candidates
        reply = client.post("/respond", json={"context": ["hi"], "arm": "g2r"}).json()
        assert len(reply["candidates"]) == 2 and reply["arm"] == "override"
        reply = client.post(
            "/respond", json={"context": ["hi"], "arm": "g2r", "options": {"num_candidates": 3}}
        ).json()
        assert len(reply["candidates"]) == 3
        for name in ("greedy", "beam"):
            reply = client.post("/respond", json={"context": ["hi"], "arm": name})
            assert reply.status_code == 200
            assert reply.json()["model"].startswith("generator-nd@")


def test_an_arm_whose_options_do_not_fit_its_bundle_stops_start_up(models_dir: Path) -> None:
    arms = {"g2r": {"bundle": "retriever-g2r", "weight": 1, "options": {"num_candidates": 11}}}
    with (
        pytest.raises(Exception, match="arm 'g2r': its options do not fit retriever-g2r@"),
        TestClient(create_app(make_settings(models_dir, arms=arms))),
    ):
        pass


def test_a_failing_arm_falls_back_to_its_configured_arm(models_dir: Path, tmp_path: Path) -> None:
    arms = {
        "g2r": {"bundle": "retriever-g2r", "weight": 1, "fallback": "standard"},
        "nd": {"bundle": "generator-nd", "weight": 1},
        "standard": {"bundle": "generator-standard", "weight": 0},
    }
    settings = make_settings(models_dir, arms=arms, exposure_log_dir=tmp_path / "exp")
    app = create_app(settings)
    with TestClient(app) as client:
        _broken(app.state.engine.serving.arms["g2r"].backend)
        resp = client.post("/respond", json={"context": ["hi"], "arm": "g2r"})
        assert resp.status_code == 200
        body = resp.json()
        assert (body["backend"], body["arm"]) == ("generative", "override")
        assert body["model"].startswith("generator-standard@")
        metrics = parse_metrics(client.get("/metrics").text)
    assert sample(metrics, "dialogue_fallbacks_total", backend="retrieval", outcome="error") == 1
    [record] = [json.loads(line) for line in next((tmp_path / "exp").glob("*.jsonl")).open()]
    assert (record["variant"], record["fallback"], record["backend"]) == (
        "standard",
        True,
        "generative",
    )


def test_fallback_arm_setting_and_fallback_off(models_dir: Path) -> None:
    arms = {
        "g2r": {"bundle": "retriever-g2r", "weight": 1},
        "nd": {"bundle": "generator-nd", "weight": 3},
        "standard": {"bundle": "generator-standard", "weight": 0},
    }
    app = create_app(make_settings(models_dir, arms=arms, fallback_arm="standard"))
    with TestClient(app) as client:
        fallbacks = {m["arm"]: m["fallback"] for m in client.get("/v1/models").json()["models"]}
        assert fallbacks == {"g2r": "standard", "nd": "standard", "standard": "g2r"}
        _broken(app.state.engine.serving.arms["g2r"].backend)
        body = client.post("/respond", json={"context": ["hi"], "arm": "g2r"}).json()
        assert body["model"].startswith("generator-standard@")
    app = create_app(make_settings(models_dir, arms=arms, fallback=False))
    with TestClient(app) as client:
        _broken(app.state.engine.serving.arms["g2r"].backend)
        resp = client.post("/respond", json={"context": ["hi"], "arm": "g2r"})
        assert resp.status_code == 503
        assert resp.json()["error"]["type"] == "backend_error"


def test_the_old_settings_make_two_arms_named_after_the_backends(models_dir: Path) -> None:
    settings = make_settings(models_dir, ab_weights="generative=1,retrieval=3")
    assert {n: (s.weight, s.backend, s.bundle) for n, s in settings.arm_specs().items()} == {
        "generative": (0.25, "generative", "auto"),
        "retrieval": (0.75, "retrieval", "auto"),
    }
    with TestClient(create_app(settings)) as client:
        models = client.get("/v1/models").json()["models"]
        assert [(m["arm"], m["backend"], m["weight"], m["fallback"]) for m in models] == [
            ("generative", "generative", 0.25, "retrieval"),
            ("retrieval", "retrieval", 0.75, "generative"),
        ]
        body = client.post("/respond", json={"context": ["hi"], "arm": "retrieval"}).json()
        assert (body["backend"], body["arm"]) == ("retrieval", "override")


def test_arms_and_the_old_settings_together_refuse_to_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DIALOGUE_ARMS", json.dumps(THREE_ARMS))
    monkeypatch.setenv("DIALOGUE_AB_WEIGHTS", "generative=0.2,retrieval=0.8")
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert (
        "DIALOGUE_ARMS replaces DIALOGUE_AB_WEIGHTS: unset DIALOGUE_AB_WEIGHTS and give every "
        "arm its bundle and weight in DIALOGUE_ARMS, e.g. "
        '{"generative": {"bundle": "auto", "backend": "generative", "weight": 0.2}, '
        '"retrieval": {"bundle": "auto", "backend": "retrieval", "weight": 0.8}}'
    ) in str(refused.value)
    monkeypatch.delenv("DIALOGUE_AB_WEIGHTS")
    monkeypatch.setenv("DIALOGUE_GENERATIVE_BUNDLE", "generator-nd")
    with pytest.raises(ValidationError, match="DIALOGUE_ARMS replaces DIALOGUE_GENERATIVE_BUNDLE"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.delenv("DIALOGUE_GENERATIVE_BUNDLE")
    assert set(Settings(_env_file=None).arm_specs()) == set(THREE_ARMS)  # type: ignore[call-arg]
    # ... or from a file, not both
    path = tmp_path / "arms.json"
    path.write_text(json.dumps(THREE_ARMS))
    monkeypatch.setenv("DIALOGUE_ARMS_FILE", str(path))
    with pytest.raises(ValidationError, match="set DIALOGUE_ARMS or DIALOGUE_ARMS_FILE, not both"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.delenv("DIALOGUE_ARMS")
    assert Settings(_env_file=None).arm_weights["g2r"] == pytest.approx(0.8)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("arms", "match"),
    [
        ({"a": {"bundle": "auto", "weight": 1}}, "bundle 'auto' needs \"backend\""),
        ({"a": {"bundle": "x", "weight": 1, "fallback": "b"}}, "fallback 'b' is no arm"),
        ({"override": {"bundle": "x", "weight": 1}}, "arm name 'override'"),
        ({"a b": {"bundle": "x", "weight": 1}}, "arm name 'a b'"),
        ({"a": {"bundle": "x", "weight": 0}}, "must not all be zero"),
        ({"a": {"bundle": "x", "weight": -1}}, "greater than or equal to 0"),
        ({"a": {"bundle": "x", "weight": 1, "colour": "red"}}, "Extra inputs are not permitted"),
        ({}, "DIALOGUE_ARMS has no arm"),
    ],
)
def test_malformed_arms_refuse_to_start(arms: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        Settings(_env_file=None, arms=arms)  # type: ignore[call-arg]


def test_an_arm_bundle_of_the_wrong_kind_or_missing_is_refused(models_dir: Path) -> None:
    cases = [
        (
            {"a": {"bundle": "generator-nd", "backend": "retrieval", "weight": 1}},
            "bundle 'generator-nd' (DIALOGUE_ARMS[\"a\"].bundle) is a generator, not a retriever",
        ),
        (
            {"a": {"bundle": "generator-gone", "weight": 1}},
            "no bundle 'generator-gone' (DIALOGUE_ARMS[\"a\"].bundle)",
        ),
    ]
    for arms, match in cases:
        with (
            pytest.raises(Exception) as refused,
            TestClient(create_app(make_settings(models_dir, arms=arms))),
        ):
            pass
        assert match in str(refused.value)


def test_a_request_names_an_arm_or_a_backend_not_both(models_dir: Path) -> None:
    with TestClient(create_app(make_settings(models_dir, arms=THREE_ARMS))) as client:
        resp = client.post("/respond", json={"context": ["hi"], "arm": "nope"})
        assert resp.status_code == 422
        assert resp.json() == {
            "error": {
                "type": "validation_error",
                "message": "body.arm: Input should be 'g2r', 'nd' or 'standard'",
            }
        }
        resp = client.post(
            "/respond", json={"context": ["hi"], "arm": "nd", "backend": "retrieval"}
        )
        assert resp.status_code == 422
        assert resp.json() == {
            "error": {
                "type": "invalid_request",
                "message": 'name an "arm" or a "backend", not both',
            }
        }
        # a backend kind goes to the heaviest arm of that kind
        body = client.post("/respond", json={"context": ["hi"], "backend": "retrieval"}).json()
        assert body["model"].startswith("retriever-g2r@") and body["arm"] == "override"


def test_reload_swaps_every_arm_at_once(tmp_path: Path) -> None:
    models_dir = build_tiny_bundles(tmp_path)
    arms = {
        "a": {"bundle": "generator-nd", "weight": 1},
        "b": {"bundle": "generator-nd", "weight": 1, "options": {"strategy": "sample"}},
        "g2r": {"bundle": "retriever-g2r", "weight": 1},
    }
    app = create_app(make_settings(models_dir, arms=arms, admin_token=TOKEN))
    with TestClient(app) as client:
        before = {m["arm"]: m["model"] for m in client.get("/v1/models").json()["models"]}
        old = app.state.engine.serving
        build_tiny_bundles(models_dir, retriever=False, seed=1)  # retrain the generator
        resp = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 200
        after = {m["arm"]: m["model"] for m in resp.json()["models"]}
        fresh = app.state.engine.serving
        assert fresh is not old
        assert after["a"] == after["b"] != before["a"] and after["g2r"] == before["g2r"]
        assert fresh.arms["a"].backend is fresh.arms["b"].backend
        for arm in ("a", "b"):
            reply = client.post("/respond", json={"context": ["hi"], "arm": arm}).json()
            assert reply["model"] == after[arm]
        metrics = parse_metrics(client.get("/metrics").text)
    assert sample(metrics, "dialogue_model_info", backend="generative", model=after["a"]) == 1
    assert sample(metrics, "dialogue_model_info", backend="generative", model=before["a"]) == 0

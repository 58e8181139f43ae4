"""A/B routing, settings parsing and bundle selection of the service."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError
from service_fixtures import build_tiny_bundles, make_settings

from service.engine import select_bundle
from service.routing import OVERRIDE_ARM, assign_arm, choose_arm, parse_weights, session_point
from service.settings import Settings

WEIGHTS = {"generative": 0.2, "retrieval": 0.8}


def test_assign_arm_splits_10k_sessions_by_weight() -> None:
    arms = Counter(assign_arm("salt-1", f"session-{i}", WEIGHTS) for i in range(10_000))
    assert set(arms) == {"generative", "retrieval"}
    # Binomial sd at p=0.2, n=10k is 0.004; 0.015 is ~3.7 sd.
    assert abs(arms["generative"] / 10_000 - 0.2) < 0.015


def test_assign_arm_is_sticky_per_session_and_reshuffled_by_the_salt() -> None:
    sessions = [f"s{i}" for i in range(1000)]
    first = [assign_arm("a", s, WEIGHTS) for s in sessions]
    assert first == [assign_arm("a", s, WEIGHTS) for s in sessions]
    # Order of the weights does not matter, only their values.
    assert first == [assign_arm("a", s, {"retrieval": 4.0, "generative": 1.0}) for s in sessions]
    other_salt = [assign_arm("b", s, WEIGHTS) for s in sessions]
    assert first != other_salt


def test_session_point_is_a_salted_hash_in_unit_interval() -> None:
    points = [session_point("x", str(i)) for i in range(1000)]
    assert all(0.0 <= p < 1.0 for p in points)
    assert session_point("x", "7") == session_point("x", "7") != session_point("y", "7")


def test_assign_arm_without_session_is_random() -> None:
    rng = random.Random(0)
    arms = Counter(assign_arm("s", None, WEIGHTS, rng=rng) for _ in range(5000))
    assert abs(arms["generative"] / 5000 - 0.2) < 0.03


def test_assign_arm_with_a_zero_weight_never_picks_that_arm() -> None:
    weights = {"generative": 0.0, "retrieval": 1.0}
    assert {assign_arm("s", str(i), weights) for i in range(500)} == {"retrieval"}


def test_choose_arm_explicit_backend_overrides() -> None:
    assert choose_arm("s", "conv", {"retrieval": 1.0}, "generative") == (OVERRIDE_ARM, "generative")
    assert choose_arm("s", "conv", {"retrieval": 1.0}, None) == ("retrieval", "retrieval")


def test_parse_weights_normalises_and_rejects_bad_specs() -> None:
    assert parse_weights("generative=1, retrieval=3") == {"generative": 0.25, "retrieval": 0.75}
    assert parse_weights("retrieval=2") == {"retrieval": 1.0}
    for bad, message in [
        ("generative", "not of the form"),
        ("generative=x", "not a number"),
        ("chatgpt=1", "unknown A/B arm"),
        ("generative=-1,retrieval=2", ">= 0"),
        ("generative=0", "all be zero"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_weights(bad)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIALOGUE_AB_WEIGHTS", "generative=0.5,retrieval=0.5")
    monkeypatch.setenv("DIALOGUE_FALLBACK", "off")
    monkeypatch.setenv("DIALOGUE_PORT", "9001")
    monkeypatch.setenv("DIALOGUE_ADMIN_TOKEN", "t0k-of-16-chars!")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.ab_weights == {"generative": 0.5, "retrieval": 0.5}
    assert settings.fallback is False and settings.port == 9001
    token = settings.admin_token
    assert token is not None and token.get_secret_value() == "t0k-of-16-chars!"
    assert "t0k" not in repr(settings)
    monkeypatch.setenv("DIALOGUE_AB_WEIGHTS", "bogus=1")
    with pytest.raises(ValidationError, match="unknown A/B arm"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("DIALOGUE_AB_WEIGHTS", "generative=0.5,retrieval=0.5")
    monkeypatch.setenv("DIALOGUE_ADMIN_TOKEN", "")  # set but empty: refused, not "no token"
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_settings_defaults_match_the_design() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.models_dir == Path("artifacts") and settings.port == 8000
    assert settings.device == "auto" and settings.fallback is True and settings.admin_token is None
    assert settings.ab_weights == {"generative": 0.2, "retrieval": 0.8}
    assert (settings.generative_bundle, settings.retrieval_bundle) == ("auto", "auto")


def test_select_bundle_auto_follows_the_builds_choice(tmp_path: Path) -> None:
    build_tiny_bundles(tmp_path)
    # No serving.json: the historical names.
    assert select_bundle(tmp_path, "generative", "auto") == tmp_path / "generator-nd"
    assert select_bundle(tmp_path, "retrieval", "auto") == tmp_path / "retriever-g2r"
    shutil.copytree(tmp_path / "generator-nd", tmp_path / "generator-standard")
    manifest = json.loads((tmp_path / "generator-standard" / "manifest.json").read_text())
    manifest["name"] = "generator-standard"
    (tmp_path / "generator-standard" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "serving.json").write_text(
        json.dumps({"generative": "generator-standard", "retrieval": "retriever-g2r", "why": {}})
    )
    assert select_bundle(tmp_path, "generative", "auto") == tmp_path / "generator-standard"
    # An explicit name still wins over the build's choice.
    assert select_bundle(tmp_path, "generative", "generator-nd") == tmp_path / "generator-nd"


def test_select_bundle_prefers_the_named_then_a_prefix_then_any_of_the_kind(tmp_path: Path) -> None:
    build_tiny_bundles(tmp_path)
    assert select_bundle(tmp_path, "generative", "generator-nd") == tmp_path / "generator-nd"
    assert select_bundle(tmp_path, "retrieval", "retriever-g2") == tmp_path / "retriever-g2r"
    assert select_bundle(tmp_path, "generative", "generator-missing") == tmp_path / "generator-nd"
    assert select_bundle(tmp_path / "nowhere", "retrieval", "retriever-g2r") is None
    assert make_settings(tmp_path).models_dir == tmp_path


def test_select_bundle_prefers_the_newest_prefix_match(tmp_path: Path) -> None:
    build_tiny_bundles(tmp_path, generator=False)
    older, newer = tmp_path / "retriever-g2r-a", tmp_path / "retriever-g2r-dm"
    (tmp_path / "retriever-g2r").rename(older)
    shutil.copytree(older, newer)
    for path, created_at in ((older, "2000-01-01T00:00:00Z"), (newer, "2999-01-01T00:00:00Z")):
        manifest = json.loads((path / "manifest.json").read_text())
        manifest.update(name=path.name, created_at=created_at)
        (path / "manifest.json").write_text(json.dumps(manifest))
    assert select_bundle(tmp_path, "retrieval", "retriever-g2r") == newer
    assert select_bundle(tmp_path, "generative", "generator-nd") is None

"""A/B routing, settings parsing and bundle selection of the service."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError
from service_fixtures import build_tiny_bundles, make_settings

from models.bundle import BundleError
from service.app import create_app
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
    assert settings.torch_threads == 1  # cannot collapse beside a busy process (README)
    assert (settings.request_timeout_s, settings.fallback_reserve) == (5.0, 0.2)
    assert settings.max_request_chars is None and settings.request_chars_limit == 16 * 1000


def test_the_app_sets_the_intra_op_threads_it_is_told(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    app = create_app(make_settings(build_tiny_bundles(tmp_path), torch_threads=wanted))
    try:
        with TestClient(app):
            for backend in app.state.engine.backends.values():
                # where the model calls run (torch's thread count is per thread once used)
                executor = backend.executor
                assert executor is not None
                assert executor.submit(torch.get_num_threads).result() == wanted
    finally:
        torch.set_num_threads(before)


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


def _copy_bundle(models_dir: Path, src: str, dst: str, **manifest_updates: str) -> Path:
    """A copy of bundle ``src`` named ``dst`` (directory and manifest name)."""
    shutil.copytree(models_dir / src, models_dir / dst)
    manifest = json.loads((models_dir / dst / "manifest.json").read_text())
    manifest.update(name=dst, **manifest_updates)
    (models_dir / dst / "manifest.json").write_text(json.dumps(manifest))
    return models_dir / dst


def test_select_bundle_serves_exactly_the_named_bundle(tmp_path: Path) -> None:
    build_tiny_bundles(tmp_path)
    _copy_bundle(tmp_path, "generator-nd", "generator-negative-teacher")
    assert select_bundle(tmp_path, "generative", "generator-nd") == tmp_path / "generator-nd"
    assert select_bundle(tmp_path, "retrieval", "retriever-g2r") == tmp_path / "retriever-g2r"
    # A manifest name finds its bundle in another directory.
    (tmp_path / "retriever-g2r").rename(tmp_path / "some-dir")
    assert select_bundle(tmp_path, "retrieval", "retriever-g2r") == tmp_path / "some-dir"
    # A name that is not there is an error listing what is, never another bundle.
    with pytest.raises(BundleError) as missing:
        select_bundle(tmp_path, "generative", "generator-missing")
    assert str(missing.value) == (
        f"no generator bundle 'generator-missing' (GENERATIVE_BUNDLE) in {tmp_path}; generator "
        "bundles there: generator-nd, generator-negative-teacher. Set GENERATIVE_BUNDLE to one "
        "of them, to '<prefix>*' or 'any' to take the newest match, or to 'off'"
    )
    with pytest.raises(BundleError, match="no generator bundle 'generator-n'"):
        select_bundle(tmp_path, "generative", "generator-n")  # no silent prefix match
    with pytest.raises(BundleError, match="is a retriever, not a generator"):
        select_bundle(tmp_path, "generative", "some-dir")
    with pytest.raises(BundleError, match="not a bundle name"):
        select_bundle(tmp_path, "generative", "../generator-nd")
    assert select_bundle(tmp_path, "generative", "off") is None


@pytest.mark.parametrize("damage", ["unreadable manifest", "no manifest", "folder gone"])
def test_select_bundle_never_swaps_a_broken_named_bundle_for_another(
    tmp_path: Path, damage: str
) -> None:
    # The case: generator-nd broken, the generic negative teacher beside it.
    build_tiny_bundles(tmp_path)
    _copy_bundle(tmp_path, "generator-nd", "generator-negative-teacher")
    if damage == "unreadable manifest":
        (tmp_path / "generator-nd" / "manifest.json").write_text("{not json")
        match = "manifest.json is not valid JSON"
    elif damage == "no manifest":
        (tmp_path / "generator-nd" / "manifest.json").unlink()
        match = "manifest.json is missing"
    else:
        shutil.rmtree(tmp_path / "generator-nd")
        match = "no generator bundle 'generator-nd'"
    for wanted in ("generator-nd", "auto"):  # auto without serving.json = generator-nd
        with pytest.raises(BundleError, match=match):
            select_bundle(tmp_path, "generative", wanted)


def test_select_bundle_matches_a_prefix_or_any_only_when_asked(tmp_path: Path) -> None:
    build_tiny_bundles(tmp_path, generator=False)
    older, newer = tmp_path / "retriever-g2r-a", tmp_path / "retriever-g2r-dm"
    (tmp_path / "retriever-g2r").rename(older)
    shutil.copytree(older, newer)
    for path, created_at in ((older, "2000-01-01T00:00:00Z"), (newer, "2999-01-01T00:00:00Z")):
        manifest = json.loads((path / "manifest.json").read_text())
        manifest.update(name=path.name, created_at=created_at)
        (path / "manifest.json").write_text(json.dumps(manifest))
    assert select_bundle(tmp_path, "retrieval", "retriever-g2r*") == newer
    assert select_bundle(tmp_path, "retrieval", "retriever-g2r-a*") == older
    assert select_bundle(tmp_path, "retrieval", "any") == newer
    with pytest.raises(BundleError, match="no retriever bundle 'retriever-g2r'"):
        select_bundle(tmp_path, "retrieval", "retriever-g2r")
    with pytest.raises(BundleError, match="no generator bundle matching GENERATIVE_BUNDLE='any'"):
        select_bundle(tmp_path, "generative", "any")
    with pytest.raises(BundleError, match=r"matching RETRIEVAL_BUNDLE='x\*'"):
        select_bundle(tmp_path, "retrieval", "x*")
    # auto with bundles of the kind but none of the default name: an error, not a guess.
    with pytest.raises(BundleError, match=r"'retriever-g2r' \(the default for auto\)"):
        select_bundle(tmp_path, "retrieval", "auto")
    # auto with no bundle of the kind at all: that backend is off.
    assert select_bundle(tmp_path, "generative", "auto") is None
    assert select_bundle(tmp_path / "nowhere", "retrieval", "auto") is None


def test_select_bundle_auto_fails_loudly_when_serving_json_cannot_be_followed(
    tmp_path: Path,
) -> None:
    build_tiny_bundles(tmp_path)
    serving = tmp_path / "serving.json"
    serving.write_text(
        json.dumps({"generative": "generator-standard", "retrieval": "retriever-g2r"})
    )
    with pytest.raises(
        BundleError, match=r"'generator-standard' \(the build's choice in serving.json\)"
    ):
        select_bundle(tmp_path, "generative", "auto")
    assert select_bundle(tmp_path, "retrieval", "auto") == tmp_path / "retriever-g2r"
    serving.write_text("{truncated")
    with pytest.raises(BundleError, match=r"serving\.json cannot be read"):
        select_bundle(tmp_path, "retrieval", "auto")
    serving.write_text(json.dumps({"generative": 3}))
    with pytest.raises(BundleError, match="'generative' is 3, not a bundle name"):
        select_bundle(tmp_path, "generative", "auto")
    serving.write_text(json.dumps({"generative": "generator-nd"}))  # no retrieval entry
    assert select_bundle(tmp_path, "retrieval", "auto") == tmp_path / "retriever-g2r"


def test_select_bundle_safety_classifier_is_optional_but_never_swapped(tmp_path: Path) -> None:
    build_tiny_bundles(tmp_path)
    assert select_bundle(tmp_path, "safety", "safety-classifier") is None
    assert select_bundle(tmp_path, "safety", "auto") is None
    assert select_bundle(tmp_path, "safety", "safety*") is None
    (tmp_path / "safety-classifier").mkdir()  # there, but no bundle: an error
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        select_bundle(tmp_path, "safety", "safety-classifier")

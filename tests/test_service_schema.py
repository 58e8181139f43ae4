"""The OpenAPI schema is the contract: what it allows the service accepts, what it forbids the
service refuses, and schemathesis (every check) finds nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import build_tiny_bundles, make_settings

from models.text import normalize_text
from service.app import create_app
from service.schemas import VISIBLE_TEXT_PATTERN


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


def test_the_turn_pattern_is_exactly_what_normalisation_keeps() -> None:
    # A one-character turn matches the schema's pattern if and only if normalize_text leaves
    # something of it, for every code point (lone surrogates are refused separately).
    pattern = re.compile(VISIBLE_TEXT_PATTERN)
    disagree = [
        hex(cp)
        for cp in range(0x110000)
        if not 0xD800 <= cp < 0xE000
        and (pattern.search(chr(cp)) is None) != (normalize_text(chr(cp)) == "")
    ]
    assert disagree == []


def test_the_schema_states_the_limits_of_the_settings(models_dir: Path) -> None:
    settings = make_settings(models_dir, max_turns=5, max_turn_chars=70, max_candidates=7)
    with TestClient(create_app(settings)) as client:
        schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    context = components["RespondRequest"]["properties"]["context"]
    assert (context["minItems"], context["maxItems"]) == (1, 5)
    assert context["items"] == {
        "type": "string",
        "minLength": 1,
        "maxLength": 70,
        "pattern": VISIBLE_TEXT_PATTERN,
    }
    candidates = components["ResponseOptions"]["properties"]["num_candidates"]["anyOf"][0]
    assert (candidates["minimum"], candidates["maximum"]) == (1, 7)
    responses = schema["paths"]["/respond"]["post"]["responses"]
    assert set(responses) == {"200", "400", "413", "415", "422", "429", "503", "504"}
    assert "Retry-After" in responses["429"]["headers"]
    assert components["ErrorBody"]["additionalProperties"] is False


def test_the_schema_says_when_the_total_character_limit_is_tighter(models_dir: Path) -> None:
    # turns x chars = 5 x 70 = 350 > 100: JSON Schema cannot state a sum, the description does.
    settings = make_settings(models_dir, max_turns=5, max_turn_chars=70, max_request_chars=100)
    with TestClient(create_app(settings)) as client:
        schema = client.get("/openapi.json").json()
        resp = client.post("/respond", json={"context": ["y" * 60, "y" * 60]})
    context = schema["components"]["schemas"]["RespondRequest"]["properties"]["context"]
    assert "at most 100 characters over all turns (else 413)" in context["description"]
    assert resp.status_code == 413


def test_admin_reload_declares_its_bearer_scheme(models_dir: Path) -> None:
    settings = make_settings(models_dir, admin_token="t" * 16)
    with TestClient(create_app(settings)) as client:
        schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/admin/reload"]["post"]["security"] == [{"HTTPBearer": []}]


@pytest.mark.slow
def test_schemathesis_with_every_check_finds_nothing(tmp_path: Path) -> None:
    """The fuzz run of reports/reliability.md on tiny bundles: fixed seed, 1,000 examples per
    operation, --checks all, positive and negative cases (about 1,200 cases, ~1 min)."""
    from benchmarks.service_fuzz import fuzz

    models_dir = build_tiny_bundles(tmp_path / "models")
    report = fuzz(models_dir, seed=1, max_examples=1000, report_path=tmp_path / "fuzz.json")
    summary = report["summary"]
    assert summary["cases_generated"] >= 1000, summary
    failures = json.dumps(report["failures"])[:4000]
    assert summary["cases_with_failures"] == 0, failures + report["output"][-4000:]
    assert summary["errored"] == 0 and summary["exit_code"] == 0, report["output"][-4000:]
    assert summary["server_tracebacks"] == 0

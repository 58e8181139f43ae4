"""benchmarks/service_reliability.py against a real ``python -m service`` on tiny bundles: the
poison figure of reports/reliability.md in small (normal requests never fail beside poison)."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pytest
from service_fixtures import CONTEXTS, build_tiny_bundles

from benchmarks import service_reliability as sr


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


def test_poison_beside_normal_traffic_fails_only_the_poison(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sr, "load_contexts", lambda *a, **k: [[c] for c in CONTEXTS])
    args = argparse.Namespace(
        models_dir=models_dir,
        data=Path("unused"),
        backends=["retrieval", "generative"],
        requests=96,
    )
    result = sr.run_poison(args)
    for backend, figures in result["backends"].items():
        assert figures["normal_requests"] == 96, backend
        assert figures["normal_failed"] == 0, figures
        assert figures["poison_requests"] >= 1
        assert all(key.endswith(":422") for key in figures["poison_statuses"]), figures


def test_the_soak_mix_has_every_kind_of_request() -> None:
    rng = random.Random(0)
    bodies = [sr._soak_body(rng, [["hello"]], i) for i in range(2000)]
    assert any(b"\\ud800" in b or b"1e-39" in b for b in bodies)  # poison
    assert any(b'"context": [" "]' in b for b in bodies)  # invalid
    assert any(b'"backend": "generative"' in b for b in bodies)
    assert any(b'"num_candidates": 5' in b for b in bodies)
    assert sum(b'"session_id"' in b for b in bodies) > 1000  # mostly A/B routed


def test_longest_stage_adds_the_slowest_bucket_of_each_stage() -> None:
    exposition = "\n".join(
        [
            'dialogue_stage_duration_seconds_bucket{stage="generate",le="0.1"} 3.0',
            'dialogue_stage_duration_seconds_bucket{stage="generate",le="0.25"} 5.0',
            'dialogue_stage_duration_seconds_bucket{stage="generate",le="0.5"} 7.0',
            'dialogue_stage_duration_seconds_bucket{stage="generate",le="+Inf"} 7.0',
            'dialogue_stage_duration_seconds_bucket{stage="tokenize",le="0.001"} 7.0',
            'dialogue_stage_duration_seconds_bucket{stage="tokenize",le="+Inf"} 7.0',
            'dialogue_stage_duration_seconds_bucket{stage="search",le="0.001"} 0.0',
            'dialogue_stage_duration_seconds_bucket{stage="search",le="+Inf"} 0.0',
        ]
    )
    assert sr.longest_stage(exposition, ["tokenize", "generate", "search"]) == 0.501
    assert sr.longest_stage(exposition, ["search"]) is None

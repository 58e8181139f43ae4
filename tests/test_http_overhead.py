"""benchmarks/http_overhead.py: the stage parser by hand, and one round end to end on tiny
bundles (a real ``python -m service`` subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from service_fixtures import build_tiny_bundles

from benchmarks import http_overhead as ho

EXPOSITION = """\
# HELP dialogue_stage_duration_seconds Seconds per stage.
# TYPE dialogue_stage_duration_seconds histogram
dialogue_stage_duration_seconds_bucket{le="0.001",stage="search"} 3.0
dialogue_stage_duration_seconds_bucket{le="+Inf",stage="search"} 4.0
dialogue_stage_duration_seconds_sum{stage="search"} 0.006
dialogue_stage_duration_seconds_count{stage="search"} 4.0
dialogue_stage_duration_seconds_bucket{le="+Inf",stage="queue"} 0.0
dialogue_stage_duration_seconds_sum{stage="queue"} 0.0
dialogue_stage_duration_seconds_count{stage="queue"} 0.0
# HELP dialogue_requests_total Requests.
# TYPE dialogue_requests_total counter
dialogue_requests_total{backend="retrieval",arm="a",outcome="ok"} 7.0
"""


def test_stage_means_are_milliseconds_per_observation() -> None:
    assert ho.stage_means(EXPOSITION) == pytest.approx({"search": 1.5})  # no count: no mean


def test_one_round_over_http_on_tiny_bundles(tmp_path: Path) -> None:
    models = build_tiny_bundles(tmp_path / "models")
    out = tmp_path / "overhead"
    argv = ["--models-dir", str(models), "--backends", "retrieval", "--rounds", "1"]
    assert ho.main([*argv, "--requests", "5", "--warmup", "2", "--out", str(out)]) == 0
    [row] = json.loads(out.with_suffix(".json").read_text())["backends"]
    assert row["backend"] == "retrieval" and len(row["rounds"]) == 1
    assert row["inprocess_p50_ms"] > 0 and 0 < row["server_p50_ms"] < row["client_p50_ms"]
    assert row["overhead_ms"] == pytest.approx(row["client_p50_ms"] - row["inprocess_p50_ms"])
    assert 0 < row["server_p50_ms"] < row["stdlib_client_p50_ms"]
    assert row["stdlib_overhead_ms"] == pytest.approx(
        row["stdlib_client_p50_ms"] - row["inprocess_p50_ms"]
    )
    assert {"tokenize", "encode", "search"} <= set(row["stages_ms"])
    md = out.with_suffix(".md").read_text()
    assert "| retrieval | httpx |" in md and "| retrieval | http.client |" in md

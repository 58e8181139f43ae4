"""benchmarks/stage_times.py: the recorded training times of a build's bundles, summed."""

from __future__ import annotations

import json
from pathlib import Path

from service_fixtures import build_tiny_bundles

from benchmarks import stage_times
from models.bundle import update_metrics
from models.generator import GenerativeResponder


def test_sums_the_wall_times_the_manifests_record(tmp_path: Path) -> None:
    models = build_tiny_bundles(tmp_path / "models")  # generator-nd and retriever-g2r, no times
    g = GenerativeResponder.load(models / "generator-nd")
    for name, seconds in (("generator-standard", 90.0), ("generator-nt", 30.5)):
        g.save(
            models / name,
            name=name,
            training={"preset": "tiny", "method": "mle", "steps": 3, "wall_time_s": seconds},
            metrics={},
        )
    update_metrics(models / "generator-nt", {"x": 1})  # a later metrics update keeps the time
    out = tmp_path / "times"
    assert stage_times.main(["--artifacts", str(models), "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["recorded_s"] == 120.5
    assert sorted(result["not_recorded"]) == ["generator-nd", "retriever-g2r"]
    assert "**2.0 min**" in out.with_suffix(".md").read_text()
    only = stage_times.stage_times(models, preset="tiny")
    assert [r["bundle"] for r in only["bundles"]] == ["generator-nt", "generator-standard"]

"""benchmarks/retrieval_int8.py on a tiny retriever bundle and the real DailyDialog test split."""

from __future__ import annotations

import json
from pathlib import Path

from service_fixtures import build_tiny_bundles

from benchmarks.retrieval_int8 import main


def test_int8_report_measures_both_precisions_against_float32(tmp_path: Path) -> None:
    bundles = build_tiny_bundles(tmp_path / "bundles")
    out = tmp_path / "int8"
    main(
        [
            "--retriever", f"g2r={bundles / 'retriever-g2r'}", "--queries", "4",
            "--agreement", "16", "--rounds", "1", "--out", str(out),
        ]
    )  # fmt: skip
    r = json.loads(out.with_suffix(".json").read_text())
    assert list(r["quality"]) == ["g2r float32", "g2r int8"]
    f32, i8 = r["quality"]["g2r float32"], r["quality"]["g2r int8"]
    assert "served_top1_agreement_with_float32" not in f32
    assert 0.0 <= i8["served_top1_agreement_with_float32"] <= 1.0
    for q in (f32, i8):
        assert 0.0 <= q["dense_hits@1"] <= q["dense_hits@5"] <= 1.0 and q["n"] > 0
    rows = r["latency"]
    assert len(rows) == 6 and all(row["n"] == 4 for row in rows.values())
    assert rows[r["baseline"]]["x_faster_than_baseline"] == 1.0
    assert "(reference)" in out.with_suffix(".md").read_text()

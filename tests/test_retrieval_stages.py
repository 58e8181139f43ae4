"""benchmarks/retrieval_stages.py on a tiny retriever bundle and real DailyDialog test contexts."""

from __future__ import annotations

import json
from pathlib import Path

from service_fixtures import build_tiny_bundles

from benchmarks.retrieval_stages import main
from models.retriever import RetrievalResponder


def test_stage_report_splits_the_served_path_and_sweeps_ef(tmp_path: Path) -> None:
    bundles = build_tiny_bundles(tmp_path / "bundles")
    bundle = bundles / "retriever-g2r"
    bundle_ef = RetrievalResponder.load(bundle).index.config.ef_search
    out = tmp_path / "stages"
    main(
        [
            "--bundle", str(bundle), "--queries", "8", "--agreement", "40", "--rounds", "1",
            "--ef", f"{bundle_ef},4", "--out", str(out),
            "--generator", str(bundles / "generator-nd"),
        ]
    )  # fmt: skip
    r = json.loads(out.with_suffix(".json").read_text())
    assert set(r["stages"]) == {"tokenize", "encode", "search", "total"}
    parts = sum(r["stages"][s]["mean_ms"] for s in ("tokenize", "encode", "search"))
    assert parts <= r["stages"]["total"]["mean_ms"]  # the stages lie inside the call
    same, small = r["ef_sweep"]
    # the bundle's own efSearch agrees with itself exactly; a tiny one may not, never above
    assert same["served_top1_agreement"] == 1.0 and same["candidate_recall"] == 1.0
    assert 0.0 <= small["served_top1_agreement"] <= 1.0 and small["candidate_recall"] <= 1.0
    assert r["n_agreement"] == 40 and r["bundle_ef_search"] == bundle_ef
    md = out.with_suffix(".md").read_text()
    assert "## efSearch" in md and "## Against greedy generation" in md
    rows = r["against_generation"]
    assert list(rows) == [
        "greedy generation (the generator bundle)",
        "retrieval as served (re-ranked top-1)",
        "as served, the context encoder as a module (no trace)",
        "as served, the float32 context encoder (RETRIEVAL_INT8=off)",  # int8 serves on a CPU
        "as served at efSearch 4",
        "dense path alone (tokenize + encode + HNSW top-1)",
        "dense path alone at efSearch 4",
        "tokenize + encode alone (no search: what any retrieval with this encoder pays)",
    ]
    assert all(row["n"] == 8 for row in rows.values())  # every row timed on every context
    assert r["generator"].startswith("generator-nd@")
    assert "20x faster than generation is a served path of" in md

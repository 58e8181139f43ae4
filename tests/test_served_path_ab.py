"""benchmarks/served_path_ab.py: an older checkout's retrieval code beside the current one."""

from __future__ import annotations

import json
from pathlib import Path

from service_fixtures import build_tiny_bundles

from benchmarks.served_path_ab import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_checkout_against_itself_serves_the_same_replies(tmp_path: Path) -> None:
    bundle = build_tiny_bundles(tmp_path / "bundles") / "retriever-g2r"
    out = tmp_path / "ab"
    main(
        [
            "--bundle", str(bundle), "--baseline-src", str(ROOT), "--queries", "6",
            "--rounds", "2", "--agreement", "20", "--out", str(out),
        ]
    )  # fmt: skip
    r = json.loads(out.with_suffix(".json").read_text())
    assert r["agreement"] == {"same_top3": 1.0, "max_score_diff": 0.0}
    assert {name: row["n"] for name, row in r["latency"].items()} == {
        "baseline": 12.0,
        "current": 12.0,
    }
    assert r["difference"]["se_ms"] >= 0.0
    assert "x faster than the baseline" in out.with_suffix(".md").read_text()


def test_micro_batches_are_timed_per_context(tmp_path: Path) -> None:
    bundle = build_tiny_bundles(tmp_path / "bundles") / "retriever-g2r"
    out = tmp_path / "ab"
    main(
        [
            "--bundle", str(bundle), "--baseline-src", str(ROOT), "--queries", "12",
            "--batch", "4", "--rounds", "2", "--agreement", "10", "--out", str(out),
        ]
    )  # fmt: skip
    r = json.loads(out.with_suffix(".json").read_text())
    assert r["batch"] == 4 and r["agreement"]["same_top3"] == 1.0
    # 3 calls of 4 contexts x 2 passes, each call's time shared by its contexts
    assert {row["n"] for row in r["latency"].values()} == {6.0}
    assert "4 per `respond` call" in out.with_suffix(".md").read_text()

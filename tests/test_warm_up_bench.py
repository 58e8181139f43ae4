"""benchmarks/warm_up.py on the tiny bundles: both arms, both backends, fresh processes."""

from __future__ import annotations

import json
from pathlib import Path

from service_fixtures import build_tiny_bundles

from benchmarks.warm_up import main


def test_warm_up_report_times_first_and_later_calls_in_both_arms(tmp_path: Path) -> None:
    bundles = build_tiny_bundles(tmp_path / "bundles")
    serving = {"generative": "generator-nd", "retrieval": "retriever-g2r"}
    (bundles / "serving.json").write_text(json.dumps(serving))
    out = tmp_path / "warm"
    main(["--artifacts", str(bundles), "--rounds", "1", "--later", "2", "--out", str(out)])
    r = json.loads(out.with_suffix(".json").read_text())
    assert set(r["summary"]) == {"cold", "warm"}
    for arm in ("cold", "warm"):
        assert len(r["runs"][arm]) == 1
        for kind in ("generative", "retrieval"):
            s = r["summary"][arm][kind]
            assert s["first_ms"] > 0 and s["later_ms"] > 0
    assert "cold / warm, first call" in out.with_suffix(".md").read_text()

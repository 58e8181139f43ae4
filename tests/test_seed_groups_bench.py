"""benchmarks/seed_groups.py: seed means of a `training compare` report."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.seed_groups import group_of, main, seed_groups


def _row(d2: float) -> dict[str, object]:
    metrics = {"dist-2": d2, "bleu-4": 0.02, "max-ratio": 0.1, "lf": 0.01, "avg-len": 5.0}
    return {"model": "m", "greedy": metrics}


def test_groups_by_seed_suffix_with_mean_and_sd(tmp_path: Path) -> None:
    assert group_of("nd-normhid-s12") == "nd-normhid" and group_of("standard") == "standard"
    report = {"standard": _row(0.04), "nd-s0": _row(0.04), "nd-s1": _row(0.06), "ft-s0": _row(0.05)}
    groups = seed_groups(report, "greedy")
    assert list(groups) == ["standard", "nd", "ft"]
    assert groups["nd"]["labels"] == ["nd-s0", "nd-s1"]
    assert math.isclose(groups["nd"]["dist-2"]["mean"], 0.05)
    assert math.isclose(groups["nd"]["dist-2"]["sd"], math.sqrt(2) * 0.01)
    assert math.isnan(groups["ft"]["dist-2"]["sd"])
    path = tmp_path / "compare.json"
    path.write_text(json.dumps(report))
    out = tmp_path / "groups"
    main(["--report", str(path), "--baseline", "ft", "--out", str(out)])
    text = out.with_suffix(".md").read_text()
    assert "| nd | 2 | 0.0500 (0.0141) 1.00x |" in text
    assert "## beam5" not in text  # only the decodings the report has

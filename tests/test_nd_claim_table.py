"""benchmarks/nd_claim_table: ND's ratios over a baseline from seed-group reports, beside the
paper's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import nd_claim_table


def _groups(path: Path) -> Path:
    def group(labels: list[str], dist2: float, bleu4: float, lf: float) -> dict[str, object]:
        return {
            "labels": labels,
            "dist-2": {"mean": dist2, "sd": 0.0},
            "bleu-4": {"mean": bleu4, "sd": 0.0},
            "lf": {"mean": lf, "sd": 0.0},
        }

    report = {
        "groups": {
            "greedy": {
                "standard": group(["standard"], 0.02, 0.020, 0.001),
                "nd": group(["nd-s0", "nd-s1"], 0.05, 0.019, 0.003),
                "control": group(["c-s0", "c-s1"], 0.04, 0.021, 0.002),
            }
        }
    }
    path.write_text(json.dumps(report))
    return path


def test_rows_are_group_mean_ratios_beside_the_paper(tmp_path: Path) -> None:
    groups = _groups(tmp_path / "g.json")
    out = tmp_path / "table"
    argv = [
        "--row",
        f"vs standard={groups},nd,standard",
        "--row",
        f"vs control={groups},nd,control",
    ]
    assert nd_claim_table.main([*argv, "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert rows[0]["dist-2"] == pytest.approx(2.5) and rows[0]["bleu-4"] == pytest.approx(0.95)
    assert rows[1]["dist-2"] == pytest.approx(1.25) and rows[1]["seeds"] == [2, 2]
    text = out.with_suffix(".md").read_text()
    assert "| paper (Table 3), ND vs Standard at convergence | - | 2.17x |" in text
    assert "| 2.50x | 1.15 |" in text  # 2.5 over the paper's 2.166


def test_a_malformed_row_or_a_missing_group_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TITLE="):
        nd_claim_table.parse_row("no equals sign")
    with pytest.raises(ValueError, match="TITLE="):
        nd_claim_table.parse_row("title=path,only-one-group")
    with pytest.raises(KeyError, match="no group 'missing'"):
        nd_claim_table.measure(_groups(tmp_path / "g.json"), "missing", "standard")

"""benchmarks/generator_seeds.py: the run-log half (no bundles needed)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.generator_seeds import eval_records, main, trajectory_markdown


def test_trajectories_mark_the_kept_step_and_the_perplexity_bound(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 10, "kind": "train", "loss": 4.0},
        {
            "step": 25,
            "kind": "eval",
            "val_loss": 1.1,
            "val_max_ratio": 0.1,
            "val_ppl": 80.0,
            "val_ppl_eligible": 0.0,
        },
        {
            "step": 50,
            "kind": "eval",
            "val_loss": 0.3,
            "val_max_ratio": 0.3,
            "val_ppl": 60.0,
            "val_ppl_eligible": 1.0,
        },
        {
            "step": 75,
            "kind": "eval",
            "val_loss": 0.2,
            "val_max_ratio": 0.2,
            "val_ppl": 61.0,
            "val_ppl_eligible": 1.0,
        },
    ]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    evals = eval_records(log)
    assert [r["step"] for r in evals] == [25, 50, 75]
    text = trajectory_markdown({"nt": evals})
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| 25 |") and "| no |" in lines[1] and "kept" not in lines[1]
    assert lines[3].startswith("| 75 |") and "**kept**" in lines[3]
    out = tmp_path / "report"
    assert main(["--log", f"nt={log}", "--out", str(out)]) == 0
    assert "**kept**" in out.with_suffix(".md").read_text()
    assert json.loads(out.with_suffix(".json").read_text())["trajectories"]["nt"][2]["step"] == 75

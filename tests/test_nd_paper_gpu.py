"""The GPU run of the ND claim at the paper's model size (reports/commands/nd_paper_gpu.sh) gets
one call of a lent device, with no second try: its stages are dry-run here on the CPU at the tiny
preset, so a change that would break it fails CI instead of that call."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "reports" / "commands" / "nd_paper_gpu.sh"


def test_nd_paper_gpu_script_dry_run_on_the_cpu(dailydialog_dir: Path, tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        **os.environ,
        "PRESET": "tiny",
        "DEVICE": "cpu",
        "DATA": str(dailydialog_dir),
        "STD_S": "3",
        "TEACHER_S": "2",
        "ND_S": "3",
        "CLUSTERS": "50",
        "EVAL_EXAMPLES": "100",
        "WORK": str(work),
        "OUT": str(out),
        "OMP_NUM_THREADS": "2",
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    # what the device call brings back: the comparison, the ratios, the stages, the log
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        f"nd_paper_gpu{s}"
        for s in (".json", ".md", "_ratios.json", "_ratios.md", "_stages.json", "_log.txt")
    )
    compare = json.loads((out / "nd_paper_gpu.json").read_text())
    assert list(compare) == ["standard", "negative-teacher", "nd"]
    assert "greedy" in compare["nd"] and "beam5" not in compare["nd"]
    assert compare["nd"]["training"]["method"] == "nd"
    stages = json.loads((out / "nd_paper_gpu_stages.json").read_text())
    # each training stage stopped by its time budget, its sized update count or early stopping
    for name in ("standard", "negative-teacher", "nd"):
        reason = stages[name]["stop_reason"]
        assert stages[name]["steps"] > 0
        assert reason == "max_steps" or reason.startswith(("max_seconds", "early stop")), reason
    # the ND student's updates were sized from Standard's measured rate
    std = stages["standard"]
    expected = max(20, int(std["steps"] / std["wall_time_s"] * 3 / 1.5))
    assert compare["nd"]["training"]["steps"] <= expected
    assert "avg-embedding (k-means 50" in stages["negative_set"]["entropy"]
    assert "| nd | 1 |" in (out / "nd_paper_gpu_ratios.md").read_text()
    # a second run resumes: every stage's output exists, so no bundle is written again
    written = {n: (work / n / "manifest.json").stat().st_mtime_ns for n in ("standard", "nd")}
    again = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert written == {n: (work / n / "manifest.json").stat().st_mtime_ns for n in written}

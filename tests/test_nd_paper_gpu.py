"""The GPU run of the ND claim at the paper's model size (reports/commands/nd_paper_gpu.sh) gets
one call of a lent device, with no second try: its stages are dry-run here on the CPU at the tiny
preset, so a change that would break it fails CI instead of that call."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
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
        "FT_STEPS": "6",
        "CLUSTERS": "50",
        "EVAL_EXAMPLES": "100",
        "WORK": str(work),
        "OUT": str(out),
        "PACK": str(tmp_path / "packed.tar.gz"),
        "OMP_NUM_THREADS": "2",
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    # what the device call brings back: the comparison, the ratios (against Standard and against
    # the lambda-0 control), every reply, the stages, the log
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"nd_paper_gpu{s}" for s in (".json", ".md", "_stages.json", "_log.txt")]
        + [f"nd_paper_gpu_ratios{c}{e}" for c in ("", "_control") for e in (".json", ".md")]
        + ["nd_paper_gpu_replies", "nd_paper_gpu_logs"]
    )
    labels = ["standard", "negative-teacher", "nd-ft-s0", "mle-ft-s0", "nd-ft-s1", "mle-ft-s1"]
    assert sorted(p.name for p in (out / "nd_paper_gpu_replies").iterdir()) == sorted(
        f"{label}.greedy.json.gz" for label in labels
    )
    compare = json.loads((out / "nd_paper_gpu.json").read_text())
    assert list(compare) == labels
    assert "greedy" in compare["nd-ft-s0"] and "beam5" not in compare["nd-ft-s0"]
    stages = json.loads((out / "nd_paper_gpu_stages.json").read_text())
    # the from-scratch stages stopped by their time budget, their update count or early stopping
    for name in ("standard", "negative-teacher"):
        reason = stages[name]["stop_reason"]
        assert stages[name]["steps"] > 0
        assert reason == "max_steps" or reason.startswith(("max_seconds", "early stop")), reason
    # the fine-tunes and their controls: all from Standard, the same update count sized from
    # Standard's measured rate; per seed, ND and control differ only in lambda
    # every training stage's own log (the stages of a phase run at once)
    assert sorted(p.name for p in (out / "nd_paper_gpu_logs").iterdir()) == sorted(
        f"{label}.txt" for label in labels
    )
    # all of $OUT packed into one file, for a device tool that brings back few files
    with tarfile.open(tmp_path / "packed.tar.gz") as packed:
        assert {"./nd_paper_gpu_ratios_control.md", "./nd_paper_gpu_stages.json"} <= set(
            packed.getnames()
        )
    for seed in (0, 1):
        nd, control = compare[f"nd-ft-s{seed}"]["training"], compare[f"mle-ft-s{seed}"]["training"]
        assert nd["method"] == control["method"] == "nd"
        assert nd["seed"] == control["seed"] == seed
        assert nd["steps"] == control["steps"] == 6
        assert nd["nd"]["init_from"] == control["nd"]["init_from"] == str(work / "standard")
        assert nd["nd"]["lambda"] > 0 and control["nd"]["lambda"] == 0
        assert {k: v for k, v in nd["nd"].items() if k != "lambda"} == {
            k: v for k, v in control["nd"].items() if k != "lambda"
        }
    assert "avg-embedding (k-means 50" in stages["negative_set"]["entropy"]
    assert "| nd-ft | 2 |" in (out / "nd_paper_gpu_ratios.md").read_text()
    assert "| mle-ft | 2 |" in (out / "nd_paper_gpu_ratios_control.md").read_text()
    # a second run resumes: every stage's output exists, so no bundle is written again
    written = {n: (work / n / "manifest.json").stat().st_mtime_ns for n in ("standard", "nd-ft-s1")}
    again = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert written == {n: (work / n / "manifest.json").stat().st_mtime_ns for n in written}

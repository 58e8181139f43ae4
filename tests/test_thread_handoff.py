"""benchmarks/thread_handoff.py runs and reports a cell per loop and job."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.thread_handoff import JOBS, main


def test_thread_handoff_reports_every_loop_and_job(tmp_path: Path) -> None:
    out = tmp_path / "handoff"
    assert main(["--rounds", "10", "--out", str(out)]) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    for loop in ("uvloop", "asyncio"):
        assert set(results[loop]) == set(JOBS)
        # beyond the job's own length; a round trip cannot be much faster than the job itself
        assert all(ms > -1.0 for ms in results[loop].values())
    assert "| uvloop |" in out.with_suffix(".md").read_text()

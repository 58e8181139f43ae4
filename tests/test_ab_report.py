"""service.ab_report: hand-checked statistics and a synthetic log with known approval rates."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from service import ab_report
from service.ab_report import (
    newcombe_interval,
    ratings_for_power,
    summarise,
    two_proportion_test,
    wilson_interval,
)


def test_wilson_interval_matches_published_values() -> None:
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_newcombe_interval_matches_his_worked_example() -> None:
    # Newcombe (1998), method 10, example (a): 56/70 vs 48/80 -> 0.0524 to 0.3339.
    lo, hi = newcombe_interval(56, 70, 48, 80)
    assert lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)


def test_power_sample_size_matches_the_textbook_formula() -> None:
    # Fleiss: 0.5 vs 0.6 at two-sided 5% and 80% power needs 388 per group (unpooled/pooled mix).
    assert ratings_for_power(0.5, 0.1) == pytest.approx(388, abs=1)
    assert ratings_for_power(0.5, 0.05) > ratings_for_power(0.5, 0.1)


def test_small_counts_use_the_exact_test() -> None:
    p, test = two_proportion_test(3, 4, 0, 4)
    assert test == "fisher-exact" and p == pytest.approx(0.142857, abs=1e-5)
    p, test = two_proportion_test(60, 100, 50, 100)
    assert test == "z" and 0.1 < p < 0.2


def _write(path: Path, records: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _synthetic(rates: dict[str, float], sessions: int, seed: int) -> tuple[list, list]:
    rng = random.Random(seed)
    exposures, feedback = [], []
    for arm, rate in rates.items():
        for s in range(sessions):
            rid = f"{arm}-{s}"
            exposures.append(
                {
                    "request_id": rid,
                    "session": f"{arm}/{s}",
                    "arm": arm,
                    "latency_ms": 10.0 + s % 7,
                    "filtered": False,
                }
            )
            feedback.append(
                {"request_id": rid, "time": 1.0, "rating": "up" if rng.random() < rate else "down"}
            )
    return exposures, feedback


def test_a_ten_point_difference_over_2000_sessions_is_detected() -> None:
    exposures, feedback = _synthetic({"control": 0.5, "treat": 0.6}, 2000, seed=1)
    stats, _ = summarise(exposures, feedback)
    (cmp,) = ab_report.compare(stats, "control", effect=0.05)
    assert cmp.significant and cmp.approval_p_value is not None and cmp.approval_p_value < 1e-6
    assert cmp.approval_diff_ci95 is not None and cmp.approval_diff_ci95[0] > 0.05
    assert cmp.sessions_still_needed == 0  # 2000 > the ~1,560 needed for 0.05 at p = 0.5


def test_equal_arms_are_not_declared_different() -> None:
    exposures, feedback = _synthetic({"control": 0.5, "treat": 0.5}, 2000, seed=2)
    stats, _ = summarise(exposures, feedback)
    (cmp,) = ab_report.compare(stats, "control", effect=0.05)
    assert not cmp.significant
    assert cmp.approval_diff_ci95 is not None
    assert cmp.approval_diff_ci95[0] < 0 < cmp.approval_diff_ci95[1]


def test_join_dedups_ratings_counts_unmatched_and_uses_session_end_turns(tmp_path: Path) -> None:
    _write(
        tmp_path / "exp" / "exposures-a.jsonl",
        [
            {"request_id": "r1", "session": "s1", "arm": "nd", "latency_ms": 10},
            {"request_id": "r2", "session": "s1", "arm": "nd", "latency_ms": 30},
            {"request_id": "r3", "session": "s2", "arm": "standard", "latency_ms": 20},
        ],
    )
    (tmp_path / "exp" / "exposures-a.jsonl.1").write_text(
        '{"request_id": "r4", "session": "s3", "arm": "standard", "filtered": true}\nnot json\n'
    )
    _write(
        tmp_path / "fb" / "feedback.jsonl",
        [
            {"request_id": "r1", "time": 2.0, "rating": "down"},
            {"request_id": "r1", "time": 3.0, "rating": 5},  # replaces the first
            {"request_id": "r3", "time": 1.0, "rating": 2},
            {"request_id": "nope", "time": 1.0, "rating": "up"},
            {"request_id": "r4", "time": 1.0, "rating": 9},  # invalid
            {"session": "s2", "event": "end", "turns": 6},
        ],
    )
    result, markdown = ab_report.report(tmp_path / "exp", tmp_path / "fb", "standard", 0.05)
    counts = result["counts"]
    assert counts == {
        "feedback_records": 6,
        "matched": 2,
        "unmatched": 1,
        "replaced": 1,
        "invalid": 1,
        "not_randomised": 0,
    }
    nd, std = result["arms"]["nd"], result["arms"]["standard"]
    assert (nd["requests"], nd["sessions"], nd["ratings"], nd["approvals"]) == (2, 1, 1, 1)
    assert nd["latency_p50_ms"] == 20.0 and nd["mean_turns"] == 2
    assert std["mean_turns"] == (6 + 1) / 2 and std["filtered_share"] == 0.5
    assert std["approval_rate"] == 0.0
    assert "| nd | 2 | 1 | 1 | 1.000 |" in markdown


def test_cli_writes_both_files_and_refuses_an_unknown_control(tmp_path: Path) -> None:
    exposures, feedback = _synthetic({"a": 0.5, "b": 0.7, "c": 0.5}, 50, seed=3)
    _write(tmp_path / "exp" / "x.jsonl", exposures)
    _write(tmp_path / "fb" / "y.jsonl", feedback)
    out = tmp_path / "rep" / "ab"
    argv = ["--exposures", str(tmp_path / "exp"), "--feedback", str(tmp_path / "fb")]
    assert ab_report.main([*argv, "--control", "a", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert [c["arm"] for c in data["comparisons"]] == ["b", "c"]
    assert out.with_suffix(".md").read_text().startswith("# A/B outcomes")
    assert ab_report.main([*argv, "--control", "zzz"]) == 2

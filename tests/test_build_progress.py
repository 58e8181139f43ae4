"""What `python -m training build` prints: stage k/N lines with an estimate that follows the
machine, the closing table, and which stages `--redo` brings back."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from training.config import PRESETS
from training.pipeline.plan import redo_closure
from training.pipeline.progress import (
    BuildProgress,
    format_duration,
    planned_seconds,
    summary_table,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_stage_lines_count_stages_and_the_estimate_follows_the_measured_speed() -> None:
    clock, out = Clock(), io.StringIO()
    show = BuildProgress(
        [
            ("a", "first", 10.0, True, ""),
            ("b", "second", 20.0, True, ""),
            ("c", "third", 30.0, False, "its bundle exists"),
        ],
        stream=out,
        clock=clock,
    )
    show.start("a")
    assert show.estimate_total_s() == pytest.approx(30.0)  # skipped stages cost nothing
    clock.now = 20.0  # twice as slow as planned
    assert show.finish("a") == pytest.approx(20.0)
    show.start("b")
    assert show.speed() == pytest.approx(2.0)
    assert show.estimate_total_s() == pytest.approx(60.0)  # 20 elapsed + 20 planned x 2
    clock.now = 50.0
    assert show.estimate_total_s() == pytest.approx(60.0)  # 30 s into b's expected 40
    clock.now = 70.0
    assert show.estimate_total_s() == pytest.approx(70.0)  # b overran: never below elapsed
    show.finish("b")
    show.start("c")
    show.finish("c")
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "[build] stage 1/3 a: first (~10 s); elapsed 0 s, whole build ~30 s (estimate)"
    )
    assert lines[1] == "[build] stage 1/3 a: done in 20 s"
    assert lines[2] == (
        "[build] stage 2/3 b: second (~40 s); elapsed 20 s, whole build ~1 min 00 s (estimate)"
    )
    assert lines[3] == "[build] stage 2/3 b: done in 50 s"
    assert lines[4] == "[build] stage 3/3 c: skipped, its bundle exists"
    assert len(lines) == 5
    record = {r["stage"]: r for r in show.record()}
    assert record["b"]["seconds"] == pytest.approx(50.0) and record["c"]["ran"] is False


def test_a_resumed_stage_does_not_set_the_speed_of_the_estimate() -> None:
    """A stage that continued from its checkpoint took a fraction of its planned time; taking
    that as the machine's speed made every later estimate of a resumed base build far too low."""
    clock, out = Clock(), io.StringIO()
    show = BuildProgress(
        [("a", "first", 600.0, True, ""), ("b", "second", 300.0, True, "")],
        stream=out,
        clock=clock,
    )
    show.resuming("a")
    show.start("a")
    clock.now = 5.0  # only its last steps and the save
    show.finish("a")
    assert show.speed() == pytest.approx(1.0)
    show.start("b")
    assert (
        out.getvalue()
        .splitlines()[0]
        .startswith("[build] stage 1/2 a: first (resuming from its checkpoint); elapsed 0 s")
    )
    assert "b: second (~5 min 00 s)" in out.getvalue().splitlines()[2]
    assert [r["resumed"] for r in show.record()] == [True, False]


def test_a_stage_of_a_few_seconds_does_not_set_the_speed_of_the_estimate() -> None:
    """The data stage (~3 s planned) can finish in 0 s from a warm cache; the estimate of the
    stages after it must keep the planned speed, not fall to nothing."""
    clock = Clock()
    show = BuildProgress(
        [("data", "load", 3.0, True, ""), ("retriever", "train", 480.0, True, "")],
        stream=io.StringIO(),
        clock=clock,
    )
    show.start("data")
    show.finish("data")  # 0 s
    assert show.speed() == pytest.approx(1.0)
    show.start("retriever")
    assert show.estimate_total_s() == pytest.approx(480.0)


def test_progress_prints_nothing_when_disabled() -> None:
    out = io.StringIO()
    show = BuildProgress([("a", "x", 1.0, True, "")], stream=out, enabled=False)
    show.start("a")
    show.finish("a")
    assert out.getvalue() == ""


def test_plan_of_the_small_preset_reproduces_its_measured_build() -> None:
    # reports/build_small_summary_s14.json: total_s 790.8 for the whole small build, idle, with
    # the retriever at 2,100 updates (3,100 since session 24: the plan prices those 1,000 more
    # in the retriever's stage alone)
    plan = planned_seconds(PRESETS["small"])
    small = PRESETS["small"]
    retriever = replace(small.retriever, train=replace(small.retriever.train, max_steps=2100))
    measured_s14 = planned_seconds(replace(small, retriever=retriever))
    assert sum(measured_s14.values()) == pytest.approx(790.8, rel=0.05)
    assert {k: v for k, v in plan.items() if k != "retriever-g2r"} == {
        k: v for k, v in measured_s14.items() if k != "retriever-g2r"
    }
    assert plan["retriever-g2r"] > measured_s14["retriever-g2r"]
    # bigger presets cost more, stage by stage
    base = planned_seconds(PRESETS["base"])
    for stage in ("generator-standard", "generator-nd", "retriever-g2r", "evaluate"):
        assert base[stage] > plan[stage] > planned_seconds(PRESETS["tiny"])[stage]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0 s"), (42.0, "42 s"), (372.0, "6 min 12 s"), (7500.0, "2 h 05 min")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_summary_table_is_short_and_names_the_full_summary() -> None:
    summary = {
        "preset": "small",
        "timings": {"total_s": 941.0},
        "stages": [
            {"stage": "data", "ran": True, "seconds": 3.6, "skipped_because": None},
            {
                "stage": "generator-standard",
                "ran": False,
                "seconds": 0.0,
                "skipped_because": "its bundle exists (--redo generator-standard to train it again)",
            },
        ],
        "evaluation": {
            "generator-standard": {
                "perplexity": 65.84,
                "greedy": {"max-ratio": 0.285, "dist-2": 0.0061},
            },
            "generator-nt": {"perplexity": 67.4, "greedy": {"max-ratio": 0.201, "dist-2": 0.0075}},
        },
        "served_generator": "generator-nt",
        "retriever": "retriever-g2r",
        "bundles_dir": "artifacts",
        "summary_file": "runs/small/build-summary.json",
    }
    text = summary_table(summary)
    lines = text.splitlines()
    assert lines[0] == "build (small): 15 min 41 s"
    assert any(line.split() == ["data", "4", "s", "ran"] for line in lines)
    assert any(line.split()[:3] == ["generator-standard", "-", "skipped:"] for line in lines)
    assert "--redo" not in text  # the stage lines say how; the table stays short
    nt = next(line for line in lines if line.strip().startswith("generator-nt"))
    assert nt.split() == ["generator-nt", "67.4", "0.201", "0.0075", "<-", "served"]
    assert lines[-2] == "bundles: artifacts/ (served: generator-nt, retriever-g2r)"
    assert lines[-1] == "full summary: runs/small/build-summary.json"
    assert len(lines) < 20


def test_redo_brings_back_the_stages_that_read_the_output() -> None:
    small, base = PRESETS["small"], PRESETS["base"]
    # small: teacher and student start from the standard generator
    assert redo_closure(small, ["generator-standard"]) == {
        "generator-standard",
        "safety-classifier",
        "generator-negative-teacher",
        "generator-nd",
        "generator-nt",
        "select",
        "retriever-g2r",
        "evaluate",
    }
    # base: the teacher from scratch stays, the student is fine-tuned from the standard model
    assert "generator-negative-teacher" not in redo_closure(base, ["generator-standard"])
    assert "generator-nd" in redo_closure(base, ["generator-standard"])
    assert redo_closure(base, ["generator-negative-teacher"]) == {
        "generator-negative-teacher",
        "generator-nd",
        "select",
        "retriever-g2r",
        "evaluate",
    }
    assert redo_closure(small, ["evaluate"]) == {"evaluate"}
    assert redo_closure(small, ["safety-classifier"]) == {"safety-classifier"}
    assert len(redo_closure(small, ["data"])) == len(redo_closure(small, ["all"])) == 10
    with pytest.raises(ValueError, match="unknown stage"):
        redo_closure(small, ["generator"])

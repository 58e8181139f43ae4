"""benchmarks/everyday_probe and benchmarks/safety_alternatives: the served path on everyday turns,
and how the safety filter's alternatives are picked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from service_fixtures import build_tiny_bundles

from benchmarks import everyday_probe, safety_alternatives


def test_the_contexts_file_pairs_share_their_last_turn(tmp_path: Path) -> None:
    contexts = everyday_probe.load_contexts()
    assert len(contexts) == 34
    assert sum(c["kind"] == "risk" for c in contexts) == 1
    bad = {"contexts": [{"kind": "pair", "turns": ["a", "b"]}, {"kind": "pair", "turns": ["c"]}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="share their last turn"):
        everyday_probe.load_contexts(tmp_path / "bad.json")


def test_probe_runs_the_service_on_tiny_bundles(dailydialog_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    build_tiny_bundles(models)
    out = tmp_path / "probe"
    argv = ["--artifacts", str(models), "--data", str(dailydialog_dir), "--out", str(out)]
    assert everyday_probe.main([*argv, "--baseline", "generator-nd"]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    served = result["arms"]["generative (served)"]
    assert served["replies"] == 33 and served["pairs"] == 3 and served["risk_statements"] == 1
    assert 1 <= served["distinct"] <= 33 and 0 <= served["unseen_share"] <= 1
    assert "teacher_written_share" in result["arms"]["retrieval (served)"]
    assert result["response_set"]["responses"] > 0
    assert (
        0
        <= result["response_set"]["teacher_written_with_unseen_word"]
        <= (result["response_set"]["teacher_written"])
    )
    assert all(len(r) == 34 for r in result["replies"].values())
    # the baseline here is the served bundle itself: unranked, its replies are the served
    # generator's own without generate-then-rank
    replies = result["replies"]
    assert (
        replies["generative (served, unranked)"] == replies["generative (generator-nd, unranked)"]
    )
    assert result["arms"]["generative (served, unranked)"]["replies"] == 33


class _Scorer:
    """log p per token = minus the number of words, whatever the context."""

    def score(self, contexts: list[list[str]], texts: list[str]) -> tuple[list[float], list[float]]:
        return [-float(len(t.split())) for t in texts], []


def test_alternatives_are_settled_by_the_service_filter() -> None:
    from models.blocklist import Blocklist
    from models.generator import Reply
    from service.metrics import ServiceMetrics
    from service.safety import SafetyFilter

    safety = SafetyFilter("blocklist", metrics=ServiceMetrics(), blocklist=Blocklist(["bad"]))
    drawn = [
        [Reply("a bad one", []), Reply("", []), Reply("good", []), Reply("also good", [])],
        [Reply("bad", []), Reply("bad too", [])],
    ]
    chosen = safety_alternatives.settle(safety, ["x", "y"], drawn)
    # the first safe, non-empty alternative; none safe: the fallback reply (None)
    assert chosen == ["good", None]
    counts = {"good": 1, "also": 1, "a": 1, "one": 1}
    figures = safety_alternatives.figures(chosen, drawn, [["x"], ["y"]], _Scorer(), counts)  # type: ignore[arg-type]
    assert figures["fallback_share"] == 0.5
    assert figures["served_unseen"] == 0.0 and figures["served_log_p_per_token"] == -1.0
    # "bad" (three replies) and "too": 3 of the 6 drawn hold an unseen word
    assert figures["drawn_unseen"] == pytest.approx(3 / 6)
    assert figures["drawn_log_p_per_token"] == pytest.approx(-(3 + 0 + 1 + 2 + 1 + 2) / 6)

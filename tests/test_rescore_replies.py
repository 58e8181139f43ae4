"""benchmarks/rescore_replies: saved replies scored again here, a missing metric filled in and every
other figure of the original run checked against the recomputation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import rescore_replies
from models.metrics import response_metrics
from training.core.data import load_splits, training_response_token_counts
from training.eval.compare import read_replies, replies_path, write_replies


@pytest.fixture(scope="module")
def split(dailydialog_dir: Path) -> tuple[list[str], dict[str, int]]:
    splits = load_splits(dailydialog_dir, max_context_turns=1)
    return [e.response for e in splits.test], training_response_token_counts(splits.train)


def test_rescore_fills_bleu_and_checks_the_rest(
    dailydialog_dir: Path, tmp_path: Path, split: tuple[list[str], dict[str, int]]
) -> None:
    refs, counts = split
    generic = ["i don't know ."] * len(refs)
    echo = [r if i % 3 else "i don't know ." for i, r in enumerate(refs)]
    report: dict = {}
    files = []
    for label, hyps in (("standard", generic), ("nd", echo)):
        metrics = response_metrics(hyps, refs, counts)
        metrics["bleu-3"] = metrics["bleu-4"] = float("nan")  # a device without nltk
        report[label] = {"model": f"{label}@0", "perplexity": 50.0, "greedy": metrics}
        path = replies_path(tmp_path / "cmp", label, "greedy")
        write_replies(path, hyps, refs)
        files.append(f"{label}={path}")
    (tmp_path / "cmp.json").write_text(json.dumps(report))
    args = ["--report", str(tmp_path / "cmp.json"), "--data", str(dailydialog_dir)]
    for spec in files:
        args += ["--replies", spec]
    out = tmp_path / "rescored"
    assert rescore_replies.main([*args, "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    nd = result["nd"]["greedy"]
    assert not math.isnan(nd["bleu-4"]) and nd["bleu-4"] > result["standard"]["greedy"]["bleu-4"]
    assert nd["dist-2"] == report["nd"]["greedy"]["dist-2"]
    checks = result["rescored"]["labels"]
    assert checks["nd"]["agree"] and checks["nd"]["recomputed_here"] == ["bleu-3", "bleu-4"]
    assert "| nd |" in out.with_suffix(".md").read_text()
    # a figure of the original run that the replies do not give back is reported, exit 1
    report["nd"]["greedy"]["dist-2"] += 0.01
    (tmp_path / "cmp.json").write_text(json.dumps(report))
    assert rescore_replies.main([*args, "--out", str(out)]) == 1
    assert (
        "dist-2"
        in json.loads(out.with_suffix(".json").read_text())["rescored"]["labels"]["nd"]["differing"]
    )


def test_replies_from_another_split_are_refused(
    dailydialog_dir: Path, tmp_path: Path, split: tuple[list[str], dict[str, int]]
) -> None:
    refs, counts = split
    hyps = ["ok ."] * len(refs)
    report = {
        "a": {"model": "a@0", "perplexity": 1.0, "greedy": response_metrics(hyps, refs, counts)}
    }
    (tmp_path / "cmp.json").write_text(json.dumps(report))
    path = tmp_path / "a.json.gz"
    write_replies(path, hyps, list(reversed(refs)))
    assert read_replies(path)["refs"][0] == refs[-1]
    with pytest.raises(ValueError, match="not the test split's"):
        rescore_replies.main(
            [
                "--report",
                str(tmp_path / "cmp.json"),
                "--data",
                str(dailydialog_dir),
                "--replies",
                f"a={path}",
            ]
        )

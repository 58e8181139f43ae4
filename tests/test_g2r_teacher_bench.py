"""benchmarks/g2r_teacher_signal.py and benchmarks/g2r_hard_kd.py on tiny bundles and the real
DailyDialog splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from service_fixtures import build_tiny_bundles

from benchmarks import g2r_hard_kd, g2r_hard_kd_seeds, g2r_teacher_signal
from benchmarks.g2r_teacher_signal import reranked_gold_first


def test_reranking_the_top_columns_moves_only_them() -> None:
    served = np.array([[1.0, 3.0, 2.0, 0.0], [5.0, 1.0, 0.0, 4.0]])
    cols = np.argsort(-served, axis=1)[:, :2]  # row 0: [1, 2]; row 1: [0, 3]
    mi = np.array([[0.0, 0.0], [0.0, 2.0]])
    assert reranked_gold_first(served, cols, mi, 0.0).tolist() == [False, True]
    # beta 1: row 1's second candidate (4 + 2) passes the gold (5 + 0)
    assert reranked_gold_first(served, cols, mi, 1.0).tolist() == [False, False]
    # a gold outside the top columns is never first, however the teacher scores
    assert not reranked_gold_first(served, cols, np.full((2, 2), -9.0), 1.0)[0]


def test_teacher_signal_report(tmp_path: Path, dailydialog_dir: Path) -> None:
    bundles = build_tiny_bundles(tmp_path / "bundles")
    out = tmp_path / "signal"
    g2r_teacher_signal.main(
        [
            "--retriever", str(bundles / "retriever-g2r"), "--generator",
            str(bundles / "generator-nd"), "--data", str(dailydialog_dir), "--val", "40",
            "--alone", "3", "--timed", "3", "--threads", "1", "--out", str(out),
        ]
    )  # fmt: skip
    r = json.loads(out.with_suffix(".json").read_text())
    rr = r["rerank"]
    assert rr["beta"] in g2r_teacher_signal.BETAS
    assert rr["test_hits@1_by_beta"]["0.0"] == rr["test_hits@1_served"]
    assert rr["wins"] - rr["losses"] == round(
        (rr["test_hits@1_reranked"] - rr["test_hits@1_served"]) * rr["test_contexts"]
    )
    assert r["alone"]["contexts"] == 3
    assert set(r["latency"]) == {
        "retrieval as served (top-k)", "teacher score of the top-k (eq. 6)", "greedy generation",
    }  # fmt: skip
    assert "re-scoring the served top 3" in out.with_suffix(".md").read_text()


def test_hard_kd_report_trains_both_arms_from_the_same_start(
    tmp_path: Path, dailydialog_dir: Path
) -> None:
    bundles = build_tiny_bundles(tmp_path / "bundles")
    out = tmp_path / "kd"
    g2r_hard_kd.main(
        [
            "--retriever", str(bundles / "retriever-g2r"), "--teacher", str(bundles / "generator-nd"),
            "--preset", "tiny", "--data", str(dailydialog_dir), "--contexts", "64", "--val", "32",
            "--steps", "2", "--threads", "1", "--arms", "control,kd,self",
            "--scores", str(tmp_path / "scores.pt"), "--out", str(out),
        ]
    )  # fmt: skip
    r = json.loads(out.with_suffix(".json").read_text())
    assert set(r["rows"]) == {"bundle", "control", "kd", "self"}
    assert set(r["paired"]) == {"bundle", "kd", "self"} and r["against"] == "control"
    p = r["paired"]["kd"]["served"]
    diff = r["rows"]["kd"]["served_hits@1"] - r["rows"]["control"]["served_hits@1"]
    assert p["wins"] - p["losses"] == round(diff * r["test_contexts"])
    assert (tmp_path / "scores.pt").is_file()
    assert r["beta"] in g2r_hard_kd.BETAS
    assert "kd" in r["logs"]["kd"][-1] and "kd" not in r["logs"]["control"][-1]
    for row in r["rows"].values():
        assert 0.0 <= row["dense_hits@1"] <= 1.0 and 0.0 <= row["served_hits@1"] <= 1.0


def test_final_contexts_are_never_training_contexts(dailydialog_dir: Path) -> None:
    from training.core.data import load_splits

    splits = load_splits(dailydialog_dir, max_context_turns=3)
    trained = {e.context for e in splits.train}
    some = g2r_hard_kd.final_contexts(dailydialog_dir, 3, splits.test)
    assert any(e.context in trained for e in some)  # endings that recur mid-dialogue elsewhere
    finals = g2r_hard_kd.final_contexts(dailydialog_dir, 3, [*splits.train, *splits.test])
    assert len(finals) > 5000 and all(e.response == "" for e in finals)
    assert not any(e.context in trained for e in finals)  # unseen as contexts by the student
    assert len({e.context for e in finals}) == len(finals)
    # the last turn was a gold response in training (the student saw it as a reply only)
    responses = {e.response for e in splits.train}
    assert np.mean([e.context[-1] in responses for e in finals]) > 0.9
    excluded = g2r_hard_kd.final_contexts(dailydialog_dir, 3, [*splits.train, *finals[:10]])
    assert not {e.context for e in finals[:10]} & {e.context for e in excluded}


def test_hard_kd_over_unseen_contexts_has_no_gold_column(
    tmp_path: Path, dailydialog_dir: Path
) -> None:
    bundles = build_tiny_bundles(tmp_path / "bundles")
    out = tmp_path / "kd-final"
    argv = [
        "--retriever", str(bundles / "retriever-g2r"), "--teacher", str(bundles / "generator-nd"),
        "--preset", "tiny", "--data", str(dailydialog_dir), "--contexts", "48", "--val", "24",
        "--k", "3", "--steps", "2", "--threads", "1", "--arms", "control,kd",
        "--kd-contexts", "final", "--scores", str(tmp_path / "scores.pt"), "--out", str(out),
    ]  # fmt: skip
    g2r_hard_kd.main([*argv, "--beta", "7.5"])
    r = json.loads(out.with_suffix(".json").read_text())
    assert r["kd_contexts"] == "final" and r["train_gold_first"] is None
    # --beta: the given one is used, the validation choice still reported
    assert r["beta"] == 7.5 and r["beta_chosen_on_validation"] in g2r_hard_kd.BETAS
    assert "**7.5** as given" in out.with_suffix(".md").read_text()
    assert 0.0 <= r["train_teacher_agrees"] <= 1.0
    cached = torch.load(tmp_path / "scores.pt", weights_only=False)
    train_cands, _ = cached["sets"]["train"]
    val_cands, _ = cached["sets"]["val"]
    assert {len(c) for c in train_cands} == {3} and {len(c) for c in val_cands} == {4}
    assert "never a training context" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):  # no gold to keep
        g2r_hard_kd.main([*argv, "--kd-target", "negatives"])


def test_negatives_target_keeps_the_gold_probability_of_the_start() -> None:
    s0 = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.5, 1.0]])
    mi = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, 0.0]])
    hybrid = g2r_hard_kd.teacher_distribution(s0, mi, 2.0, "hybrid")
    neg = g2r_hard_kd.teacher_distribution(s0, mi, 2.0, "negatives")
    assert torch.allclose(hybrid, (s0 + 2.0 * mi).softmax(dim=1))
    assert torch.allclose(neg.sum(dim=1), torch.ones(2))
    assert torch.allclose(neg[:, 0], s0.softmax(dim=1)[:, 0])
    # the negatives keep the hybrid's order and ratios among themselves
    assert torch.allclose(
        neg[:, 1:] / neg[:, 1:].sum(1, keepdim=True),
        hybrid[:, 1:] / hybrid[:, 1:].sum(1, keepdim=True),
    )
    assert neg[0, 2] > neg[0, 1]  # the teacher's preference, not the student's


def test_seed_summary_differences_against_the_control(tmp_path: Path) -> None:
    def report(seed: int, control: float, kd: float) -> dict[str, object]:
        rows = {
            "control": {"dense_hits@1": control, "served_hits@1": control},
            "kd": {"dense_hits@1": kd, "served_hits@1": kd},
        }
        z = {"dense": {"z": 1.0}, "served": {"z": 2.0}}
        return {"seed": seed, "against": "control", "rows": rows, "paired": {"kd": z}}

    paths = []
    for seed, (c, k) in enumerate([(0.30, 0.31), (0.30, 0.32), (0.31, 0.33)]):
        paths.append(tmp_path / f"s{seed}.json")
        paths[-1].write_text(json.dumps(report(seed, c, k)))
    out = tmp_path / "seeds"
    g2r_hard_kd_seeds.main([*map(str, paths), "--out", str(out)])
    r = json.loads(out.with_suffix(".json").read_text())
    kd = r["arms"]["kd"]["served"]
    assert kd["diffs"] == pytest.approx([0.01, 0.02, 0.02])
    assert kd["diff_mean"] == pytest.approx(0.05 / 3)
    # sd of (0.01, 0.02, 0.02) is 0.01 / sqrt(3), so t = (0.05 / 3) / (0.01 / 3) = 5
    assert kd["diff_sd"] == pytest.approx(0.01 / 3**0.5)
    assert kd["t"] == pytest.approx(5.0)
    assert {"diffs", "t"}.isdisjoint(r["arms"]["control"]["served"])
    # --pair: one arm against another, per seed (here kd against control again, and the reverse)
    g2r_hard_kd_seeds.main([*map(str, paths), "--pair", "control:kd", "--out", str(out)])
    pair = json.loads(out.with_suffix(".json").read_text())["pairs"]["control:kd"]["served"]
    assert pair["values"] == pytest.approx([-0.01, -0.02, -0.02])
    assert pair["mean"] == pytest.approx(-kd["diff_mean"])
    assert "control minus kd" in out.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match="not in every report"):
        g2r_hard_kd_seeds.main([*map(str, paths), "--pair", "kd:self"])

"""benchmarks/nt_selection.py: the rules it replays and the weights it keeps per evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import nt_selection
from training.methods import fine_tune


def _row(r_thres: float, k: int, mr: float, d2: float, eligible: bool = True) -> dict:
    row = {"r_thres": r_thres, "eval": k, "val_ppl": 60.0, "eligible": eligible}
    for name in ("head", "sample"):
        row[f"{name}_max-ratio"], row[f"{name}_dist-2"] = mr, d2
    row["test_max-ratio"], row["test_dist-2"] = mr + 0.01 * k, d2 - 0.001 * k
    return row


def test_summarise_replays_each_rule_within_the_perplexity_bound() -> None:
    rows = [
        _row(0.01, 1, mr=0.05, d2=0.09, eligible=False),  # best on both, but above the bound
        _row(0.01, 2, mr=0.10, d2=0.08),
        _row(0.01, 3, mr=0.10, d2=0.07),  # ties step 2 on max-ratio: the earlier step is kept
        _row(0.01, 4, mr=0.20, d2=0.085),
    ]
    out = nt_selection.summarise(rows)
    kept = {(k["rule"], k["validation"]): k["eval"] for k in out["kept"]}
    assert kept[("least-generic", "sample")] == kept[("least-generic", "head")] == 2
    assert kept[("most-distinct", "sample")] == 4
    pick = next(k for k in out["kept"] if k["rule"] == "most-distinct")
    assert pick["test_dist-2"] == rows[3]["test_dist-2"]
    # test Dist-2 = validation Dist-2 - 0.001 * step: the same order, rho 1; reversed, rho -1
    assert out["spearman_vs_test"]["sample dist-2"] == pytest.approx(1.0)
    for r in rows:
        r["test_dist-2"] = -r["test_dist-2"]
    assert nt_selection.summarise(rows)["spearman_vs_test"]["head dist-2"] == pytest.approx(-1.0)
    assert set(out["spearman_vs_test"]) == {
        "head max-ratio",
        "head dist-2",
        "sample max-ratio",
        "sample dist-2",
    }


def test_snapshotting_keeps_the_weights_each_evaluation_saw(tmp_path: Path, monkeypatch) -> None:
    seen: list[float] = []

    def fake(*args, **kwargs):
        def evaluate(model: nn.Module) -> dict[str, float]:
            seen.append(float(model.weight.sum()))
            return {"val_loss": seen[-1], "val_ppl": 1.0, "val_ppl_eligible": 1.0}

        return evaluate

    monkeypatch.setattr(fine_tune, "greedy_genericness_fn", fake)
    evaluate = nt_selection._snapshotting(tmp_path)()
    model = nn.Linear(2, 2)
    for step in range(3):
        with torch.no_grad():
            model.weight.fill_(float(step))
        model.requires_grad_(False)
        evaluate(model)
    logged = [json.loads(line) for line in (tmp_path / "evals.jsonl").read_text().splitlines()]
    assert [r["eval"] for r in logged] == [1, 2, 3]
    for r in logged:
        state = torch.load(tmp_path / f"eval-{r['eval']}.pt")
        assert float(state["weight"].sum()) == r["val_loss"] == seen[r["eval"] - 1]

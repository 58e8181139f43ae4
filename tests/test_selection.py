"""The served-generator rule (training/pipeline/selection.py) and the serving.json the service reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.bundle import read_serving
from training.pipeline.selection import (
    RetrieverRule,
    SelectionRule,
    select_generator,
    select_retriever,
    write_serving,
)


def _eval(ppl: float, max_ratio: float, dist2: float) -> dict[str, object]:
    return {"perplexity": ppl, "greedy": {"max-ratio": max_ratio, "dist-2": dist2, "bleu-4": 0.01}}


def test_least_generic_among_comparable_perplexity_wins() -> None:
    chosen, record = select_generator(
        {
            "standard": _eval(50.0, 0.30, 0.010),
            "nd": _eval(53.0, 0.12, 0.020),  # within 1.10x: eligible and less generic
            "wild": _eval(80.0, 0.01, 0.200),  # diverse because it models the data badly
        }
    )
    assert chosen == "nd"
    assert record["candidates"]["wild"]["eligible"] is False
    assert record["candidates"]["nd"]["eligible"] is True
    assert "max-ratio" in record["criterion"]


def test_near_equal_max_ratio_goes_to_higher_dist2() -> None:
    chosen, _ = select_generator(
        {"a": _eval(50.0, 0.201, 0.010), "b": _eval(50.5, 0.203, 0.030)},
        SelectionRule(tie=0.01),
    )
    assert chosen == "b"


def test_perplexity_gate_can_exclude_the_least_generic() -> None:
    evals = {"standard": _eval(50.0, 0.30, 0.01), "nd": _eval(60.0, 0.10, 0.02)}
    assert select_generator(evals, SelectionRule(max_ppl_ratio=1.1))[0] == "standard"
    assert select_generator(evals, SelectionRule(max_ppl_ratio=1.3))[0] == "nd"


def test_no_candidates_is_an_error() -> None:
    with pytest.raises(ValueError, match="no generator"):
        select_generator({})


def test_serving_file_round_trip(tmp_path: Path) -> None:
    assert read_serving(tmp_path) is None
    write_serving(tmp_path, "generator-standard", "retriever-g2r", {"chosen": "generator-standard"})
    data = read_serving(tmp_path)
    assert data is not None and data["generative"] == "generator-standard"
    (tmp_path / "serving.json").write_text("{not json")
    assert read_serving(tmp_path) is None


def test_retriever_with_the_best_validation_hits_is_served() -> None:
    vals = {
        "retriever-biencoder": {"hits@1": 0.177, "hits@5": 0.42, "hits_k": 100.0},
        "retriever-g2r": {"hits@1": 0.153, "hits@5": 0.41, "hits_k": 100.0},
    }
    chosen, why = select_retriever(vals)
    assert chosen == "retriever-biencoder"
    assert why["candidates"]["retriever-g2r"]["hits@1"] == pytest.approx(0.153)
    # A G2R retriever that beats the bi-encoder by more than the tie width is served.
    vals["retriever-g2r"]["hits@1"] = 0.19
    assert select_retriever(vals)[0] == "retriever-g2r"
    # Within the tie width the first in build order wins.
    vals["retriever-g2r"]["hits@1"] = 0.180
    assert select_retriever(vals, RetrieverRule(tie=0.005))[0] == "retriever-biencoder"


def test_retriever_is_chosen_on_served_hits_when_every_candidate_has_them() -> None:
    """session 10's base build: G2R-DM ahead dense, the bi-encoder ahead as served (re-ranked)."""
    vals = {
        "retriever-biencoder": {"hits@1": 0.2160, "served_hits@1": 0.2905, "hits_k": 100.0},
        "retriever-g2r": {"hits@1": 0.2215, "served_hits@1": 0.2875, "hits_k": 100.0},
    }
    chosen, why = select_retriever(vals)
    assert chosen == "retriever-biencoder" and "as served" in why["criterion"]
    assert why["candidates"]["retriever-g2r"]["served_hits@1"] == pytest.approx(0.2875)
    # one candidate without a re-ranker: every candidate is compared dense
    del vals["retriever-biencoder"]["served_hits@1"]
    chosen, why = select_retriever(vals)
    assert chosen == "retriever-g2r" and "as served" not in why["criterion"]


def test_retrievers_validated_with_different_k_are_refused() -> None:
    with pytest.raises(ValueError, match="different K"):
        select_retriever(
            {"a": {"hits@1": 0.2, "hits_k": 100.0}, "b": {"hits@1": 0.3, "hits_k": 50.0}}
        )
    with pytest.raises(ValueError, match="no retriever"):
        select_retriever({})

"""The retrieval benchmarks' helpers: latency summaries, agreement with exact search, the sample
picks shared with ``training.eval.generation``, and the budgeted index build."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.latency import latency_summary, recall_at_k, time_per_query, top1_agreement
from benchmarks.retrieval import parse_labelled, sample_picks, teacher_shard_stats
from benchmarks.search_scaling import build_with_budget, synthetic_embeddings
from models.retriever import IndexConfig, exact_search


def test_latency_summary_reports_milliseconds() -> None:
    s = latency_summary([0.001, 0.002, 0.003, 0.010])
    assert s["mean_ms"] == pytest.approx(4.0)
    assert s["p50_ms"] == pytest.approx(2.5)
    assert s["n"] == 4.0


def test_time_per_query_runs_warmups_untimed() -> None:
    calls: list[int] = []
    times = time_per_query(calls.append, [1, 2, 3], warmup=2)
    assert calls == [1, 2, 1, 2, 3]
    assert len(times) == 3 and all(t >= 0 for t in times)


def test_top1_agreement_and_recall_by_hand() -> None:
    approx = np.array([[0, 1], [2, 3], [5, 4]])
    exact = np.array([[0, 9], [3, 2], [4, 5]])
    assert top1_agreement(approx, exact) == pytest.approx(1 / 3)
    assert recall_at_k(approx, exact) == pytest.approx(5 / 6)


def test_sample_picks_match_evaluate_generator() -> None:
    expected = np.random.default_rng(0).choice(100, size=20, replace=False).tolist()
    assert sample_picks(100, 20) == expected
    assert sorted(sample_picks(5, 20)) == [0, 1, 2, 3, 4]


def test_parse_labelled_rejects_duplicates_and_bad_specs() -> None:
    assert [str(p) for p in parse_labelled(["a=x", "b=y/z"]).values()] == ["x", "y/z"]
    with pytest.raises(ValueError, match="twice"):
        parse_labelled(["a=x", "a=y"])
    with pytest.raises(ValueError, match="LABEL=DIR"):
        parse_labelled(["nolabel"])


def test_synthetic_embeddings_are_seeded_and_unit_norm_on_request() -> None:
    a = synthetic_embeddings(50, 8, seed=3)
    assert np.array_equal(a, synthetic_embeddings(50, 8, seed=3))
    unit = synthetic_embeddings(50, 8, seed=3, unit_norm=True)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)


def test_build_with_budget_matches_exact_search_and_stops_at_the_budget() -> None:
    db = synthetic_embeddings(600, 16, seed=0)
    queries = synthetic_embeddings(40, 16, seed=1)
    config = IndexConfig(ef_search=256, add_batch_size=200)
    index, _ = build_with_budget(db, config, budget_s=1e9)
    assert index.ntotal == 600
    _, approx = index.search(queries, 1)
    _, exact = exact_search(db, queries, 1, use_gpu=False)
    assert top1_agreement(approx, exact) >= 0.95
    partial, _ = build_with_budget(db, config, budget_s=0.0)
    assert partial.ntotal == 200  # one chunk, then the spent budget stops the build


def test_teacher_shard_stats_by_hand(tmp_path: Path) -> None:
    records = [
        {"header": {"teacher": "t", "n_contexts": 2}},
        {  # gold scored 0, one reply log 3: P_G(gold) = 1 / 4, not the teacher's top
            "index": 0,
            "context": ["a"],
            "gold": [{"text": "x y", "ll": 0.0, "mi": 0.0}],
            "generated": [{"text": "z", "ll": math.log(3.0), "mi": 0.0, "min_length": 1}],
        },
        {  # gold 0 against a reply at -inf-ish: P_G(gold) = 1, the top
            "index": 1,
            "context": ["b"],
            "gold": [{"text": "x y z w", "ll": 0.0, "mi": 0.0}],
            "generated": [{"text": "z", "ll": -1e9, "mi": 0.0, "min_length": 1}],
        },
    ]
    (tmp_path / "shard-0-of-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    stats = teacher_shard_stats(tmp_path)
    assert stats["contexts"] == 2.0
    assert stats["gold_is_teacher_top"] == pytest.approx(0.5)
    assert stats["teacher_prob_on_gold"] == pytest.approx((0.25 + 1.0) / 2)
    assert stats["gold_words"] == pytest.approx(3.0)
    assert stats["teacher_reply_words"] == pytest.approx(1.0)


def test_timed_calls_start_with_an_empty_normalisation_cache() -> None:
    """Repeated passes over the same contexts time fresh requests, not cached text."""
    from benchmarks.latency import time_interleaved, time_per_query
    from models.text import normalize_text

    texts = ["Hello there, how are you?"] * 3
    time_per_query(normalize_text, texts, warmup=1)
    assert normalize_text.cache_info().hits == 0
    time_interleaved({"a": normalize_text, "b": normalize_text}, texts, 2, warmup=1)
    assert normalize_text.cache_info().hits == 0
    normalize_text(texts[0])  # and the cache does work between calls
    assert normalize_text.cache_info().hits == 1

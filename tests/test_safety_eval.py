"""Safety evaluation (FlatGD section 4.1): unsafe rate over sampled replies, with a fake classifier."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from models.decoding import DecodingConfig
from models.generator import GenerativeResponder, InputConfig
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.core.data import DialogueExample, write_jsonl
from training.eval.safety import (
    add_ratios,
    evaluate_bundle,
    markdown_table,
    paired_unsafe_test,
    run_safety_evaluation,
    sample_replies,
    unique_contexts,
    unsafe_rates,
)


class WordJudge:
    """Fake classifier: a reply is unsafe when it contains ``word``; P(unsafe) is 0.9 or 0.1."""

    bundle_id = "fake@0"
    threshold = 0.5

    def __init__(self, word: str = "bad") -> None:
        self.word = word
        self.calls = 0

    def unsafe_probability(self, contexts: Sequence[str], responses: Sequence[str]) -> list[float]:
        assert len(contexts) == len(responses)
        self.calls += 1
        return [0.9 if self.word in r.split() else 0.1 for r in responses]

    def is_unsafe(self, contexts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        return [p >= self.threshold for p in self.unsafe_probability(contexts, responses)]


def test_unique_contexts_keeps_first_seen_order_and_category() -> None:
    contexts, categories = unique_contexts(["a", "b", "a", "c"], ["x", "y", "z", "x"])
    assert (contexts, categories) == (["a", "b", "c"], ["x", "y", "x"])


def test_unsafe_rate_counts_contexts_with_at_least_one_unsafe_reply() -> None:
    replies = [["ok", "a bad one", "ok"], ["ok", "fine", "ok"], ["bad", "bad", "ok"]]
    rates = unsafe_rates(WordJudge(), ["c1", "c2", "c3"], replies, ["t", "t", "u"])
    assert rates["unsafe_rate"] == pytest.approx(2 / 3)  # c1 and c3
    assert rates["reply_unsafe_rate"] == pytest.approx(3 / 9)
    assert rates["mean_unsafe_probability"] == pytest.approx((3 * 0.9 + 6 * 0.1) / 9)
    assert rates["unsafe_rate_by_category"] == {"t": 0.5, "u": 1.0}
    assert rates["unsafe_flags"] == "101"


def test_paired_test_is_exact_mcnemar() -> None:
    # 5 contexts unsafe under a only, 1 under b only: P(X <= 1 | n=6, 1/2) = 7/64, two-sided 14/64
    a, b = "1111100" + "1", "0000010" + "1"
    result = paired_unsafe_test(a, b)
    assert (result["a_only"], result["b_only"]) == (5, 1)
    assert result["p_value"] == pytest.approx(14 / 64)
    assert paired_unsafe_test("0101", "0101")["p_value"] == 1.0


@pytest.fixture(scope="module")
def tiny_responder() -> GenerativeResponder:
    texts = ["hello there", "how are you", "i am fine", "that is bad", "good morning to you"]
    tok = DialogueTokenizer.train(texts * 4, vocab_size=60)
    torch.manual_seed(0)
    model = Seq2SeqTransformer(
        Seq2SeqConfig(
            vocab_size=tok.vocab_size,
            d_model=16,
            n_heads=2,
            d_ff=32,
            n_encoder_layers=1,
            n_decoder_layers=1,
            dropout=0.0,
            max_positions=32,
        )
    ).eval()
    inputs = InputConfig(max_context_turns=1, max_source_len=12, max_target_len=8)
    return GenerativeResponder(model, tok, inputs, DecodingConfig(max_length=6))


def test_sampled_replies_are_n_per_context_and_repeat_with_the_seed(tiny_responder) -> None:
    decoding = tiny_responder.decoding.with_overrides(strategy="sample", num_return_sequences=5)
    contexts = ["hello there", "how are you", "i am fine"]
    first = sample_replies(tiny_responder, contexts, decoding, seed=3, batch_size=2)
    assert [len(r) for r in first] == [5, 5, 5]
    assert sample_replies(tiny_responder, contexts, decoding, seed=3, batch_size=2) == first
    other = sample_replies(tiny_responder, contexts, decoding, seed=4, batch_size=2)
    assert other != first


def test_evaluate_bundle_and_ratios_against_the_first_bundle(tiny_responder) -> None:
    pairs = [DialogueExample(("hello there",), "how are you"), DialogueExample(("hi",), "fine")]
    result = evaluate_bundle(
        tiny_responder, WordJudge(), ["hello there", "how are you"], ["a", "b"], pairs, seed=0
    )
    assert result["contexts"] == 2 and result["samples_per_context"] == 5
    assert 1.0 < result["perplexity"] < float("inf")
    assert 0.0 <= result["div-1"] <= 1.0 and 0.0 <= result["div-2"] <= 1.0
    assert len(result["examples"]) == 2 and len(result["examples"][0]["replies"]) == 5
    other = dict(result, unsafe_rate=0.5, perplexity=result["perplexity"] * 1.1)
    results = {"base": dict(result, unsafe_rate=0.25), "tuned": other}
    add_ratios(results)
    assert results["base"]["ratio_perplexity"] == 1.0
    assert results["tuned"]["ratio_unsafe_rate"] == pytest.approx(2.0)
    assert results["tuned"]["ratio_perplexity"] == pytest.approx(1.1)
    table = markdown_table(results)
    assert "| tuned |" in table and "2.000" in table and "| a | b |" in table


def test_run_safety_evaluation_writes_json_and_markdown(
    tiny_responder, shared_data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    import models.safety

    dd = tmp_path / "dd"  # a three-split JSONL corpus stands in for DailyDialog
    for i, split in enumerate(("train", "validation", "test")):
        write_jsonl([DialogueExample((f"hello {i}",), "how are you")], dd / f"{split}.jsonl")
    bundle = tmp_path / "gen"
    tiny_responder.save(bundle, name="gen", training={"method": "mle"}, metrics={})
    judges: list[WordJudge] = []

    def load_judge(*args: object, **kwargs: object) -> WordJudge:
        judges.append(WordJudge())
        return judges[-1]

    monkeypatch.setattr(models.safety.SafetyClassifier, "load", load_judge)

    def run() -> dict:
        return run_safety_evaluation(
            bundles=[("base", bundle), ("again", bundle)],
            classifier_dir=tmp_path / "unused",
            safety_data=shared_data_dir,
            dailydialog=dd,
            out=tmp_path / "report",
            max_contexts=6,
            device="cpu",
            command="test",
            experts=(bundle, bundle),
            cache_dir=tmp_path / "cache",
        )

    report = run()
    assert judges[0].calls > 0 and len(list((tmp_path / "cache").glob("*.json"))) == 2
    assert run()["results"] == report["results"] and judges[1].calls == 0  # all from the cache
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["results"]["base"]["contexts"] == 6
    # the same bundle, seed and contexts give the same replies: every ratio is 1
    assert saved["results"]["again"]["ratio_div-2"] == pytest.approx(1.0)
    assert report["classifier"] == "fake@0"
    base = saved["results"]["base"]  # both "experts" are the bundle itself: JS = 0, no gradient
    assert base["js_toxic"] == base["js_clean"] == pytest.approx(0.0, abs=1e-6)
    assert base["safety_grad_sq"] == pytest.approx(0.0, abs=1e-9)
    assert "| again | mle |" in (tmp_path / "report.md").read_text()

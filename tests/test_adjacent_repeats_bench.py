"""``python -m benchmarks.adjacent_repeats`` end to end on a random-weight bundle and a small JSONL
corpus (seconds; the real-data run is the report's own command)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks import adjacent_repeats
from models.decoding import DecodingConfig
from models.generator import GenerativeResponder, InputConfig
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.methods.g2r.filter import has_adjacent_repeat

THINGS = ["tea", "coffee", "music", "films", "books", "dogs", "cats", "rain"]
PEOPLE = ["tom", "mary", "jack", "anna", "li", "sam"]


def _corpus(root: Path) -> list[str]:
    texts = []
    for split, people in (("train", PEOPLE[:4]), ("validation", PEOPLE[4:]), ("test", PEOPLE)):
        pairs = [
            {
                "context": ["hello .", f"do you like {thing} , {person} ?"],
                "response": f"yes , {person} likes {thing} very much .",
            }
            for person in people
            for thing in THINGS
        ]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        texts += [t for p in pairs for t in (*p["context"], p["response"])]
    return texts


def test_has_adjacent_repeat_counts_words_not_punctuation() -> None:
    assert has_adjacent_repeat(["about", "about", "about", "a", "few", "days", "."])
    assert has_adjacent_repeat(["a", "little", "little", "bit"])
    assert not has_adjacent_repeat(["well", ".", ".", ".", "i", "see", "!"])
    assert not has_adjacent_repeat(["i", "think", "i", "will", "."])


def test_the_benchmark_decodes_with_and_without_the_rule_against_its_baseline(
    tmp_path: Path,
) -> None:
    texts = _corpus(tmp_path)
    tokenizer = DialogueTokenizer.train(texts, vocab_size=400, min_frequency=1)
    torch.manual_seed(0)
    model = Seq2SeqTransformer(
        Seq2SeqConfig(
            vocab_size=tokenizer.vocab_size,
            d_model=16,
            n_heads=2,
            d_ff=32,
            n_encoder_layers=1,
            n_decoder_layers=1,
            dropout=0.0,
            max_positions=48,
        )
    ).eval()
    inputs = InputConfig(max_context_turns=1, max_source_len=24, max_target_len=12)
    decoding = DecodingConfig(max_length=12, min_length=10, anti_lm=0.5, anti_lm_steps=2)
    GenerativeResponder(model, tokenizer, inputs, decoding).save(
        tmp_path / "gen", name="gen", training={"method": "mle"}, metrics={}
    )
    out = tmp_path / "report"
    assert (
        adjacent_repeats.main(
            ["--bundle", str(tmp_path / "gen"), "--data", str(tmp_path), "--out", str(out)]
        )
        == 0
    )
    result = json.loads(out.with_suffix(".json").read_text())
    rows = result["rows"]
    assert [(r["decoding"], r["block_adjacent_repeats"]) for r in rows] == [
        ("as served", False),
        ("as served", True),
        ("plain greedy", False),
        ("plain greedy", True),
    ]
    assert rows[0]["anti_lm"] == [0.5, 2] and rows[2]["anti_lm"][0] == 0.0
    assert rows[0]["stutter"] > 0  # random weights stutter: the rule has work to do
    # The rule is per token (tests/test_decoding.py): random weights also spell a word twice
    # from pieces ("ja" "c" "ja" "c"), which it does not block, so the rates here only show the
    # plumbing; on DailyDialog the stuttered words are single tokens (5.5% -> 0, the report).
    assert rows[1]["replies_changed"] > 0 and rows[1]["changed"]
    assert all(has_adjacent_repeat(c["before"].split()) for c in rows[1]["changed"])
    assert rows[1]["stutter_ratio"] == rows[1]["stutter"] / rows[0]["stutter"]
    assert rows[0]["dist-2_ratio"] == 1.0 and rows[1]["dist-2_ratio"] is not None
    assert 0 < result["meta"]["n"] <= len(PEOPLE) * len(THINGS)  # less the pairs in train
    assert "| as served | on |" in out.with_suffix(".md").read_text()

"""The safety classifier and blocklist (models/safety.py) and their training (training/methods/safety_classifier/job.py):
whole-token blocklist matching, metrics on hand-computed cases, a tiny train/save/load round trip
on a synthetic DiaSafety-format corpus, corrupt bundles refused, the CLI and the pipeline stage;
the readability rule (a context the classifier cannot read is judged as empty), the risk detector,
the threshold cap and the figures of benchmarks/safety_filter_fit.py on hand-made data."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.safety_filter_fit import (
    Pair,
    block_summary,
    flag_metrics,
    load_probes,
    parse_run,
    summaries_by_kind,
    turn_caused,
)
from models.bundle import BundleError, read_manifest
from models.safety import (
    BLOCKLIST_FILE,
    DEFAULT_RISK_PHRASES,
    WORDS_FILE,
    BagOfNgramsClassifier,
    Blocklist,
    CrossEncoderClassifier,
    RiskDetector,
    SafetyClassifier,
    SafetyClassifierConfig,
    is_link,
    known_words,
    load_blocklist,
    readable_turn,
)
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.config import get_preset
from training.core.safety_data import SafetyExample, load_diasafety
from training.eval.classification import (
    benign_floor,
    best_f1_threshold,
    binary_metrics,
    capped_f1_threshold,
    evaluate_split,
    roc_auc,
)
from training.methods.g2r.data import ResponseFilter
from training.methods.safety_classifier.data import (
    find_diasafety,
    reply_only_examples,
    stratified_holdout,
)
from training.methods.safety_classifier.job import build_stage, train_safety_classifier

TINY = get_preset("tiny").safety
assert TINY is not None

CATEGORIES = ("Toxicity Agreement", "Risk Ignorance", "Offending User")
TOXIC = ["you people are all idiots .", "i hate them all .", "they deserve to suffer ."]
HARMLESS = ["i like my new garden .", "the weather is nice today .", "i baked a cake ."]
AGREE = ["yes , you are right .", "totally agree with you .", "exactly , i think so too ."]
OTHER = ["that sounds lovely .", "what kind of flowers ?", "enjoy your day ."]


def _synthetic_records(n: int, seed: int) -> list[dict[str, str]]:
    """DiaSafety-shaped records whose label depends on the context: agreeing with a toxic
    context is unsafe, the same agreement after a harmless one is safe."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        toxic, agree = rng.random() < 0.5, rng.random() < 0.5
        records.append(
            {
                "context": rng.choice(TOXIC if toxic else HARMLESS),
                "response": rng.choice(AGREE if agree else OTHER),
                "category": CATEGORIES[i % len(CATEGORIES)],
                "label": "Unsafe" if toxic and agree else "Safe",
            }
        )
    return records


@pytest.fixture(scope="module")
def diasafety_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "diasafety"
    root.mkdir()
    (root / "train.json").write_text(json.dumps(_synthetic_records(240, seed=0)))
    (root / "val.json").write_text(json.dumps(_synthetic_records(60, seed=1)))
    (root.parent / "blocklist").mkdir()
    (root.parent / "blocklist" / "en.txt").write_text("# offensive\nidiots\nhot pocket\n\n")
    return root


@pytest.fixture(scope="module")
def trained(diasafety_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bundles") / "safety-classifier"
    preset = replace(TINY, max_train_examples=0)
    report = train_safety_classifier(
        preset,
        diasafety_dir.parent,
        out,
        architecture="both",
        blocklist=diasafety_dir.parent / "blocklist" / "en.txt",
    )
    return out, report


# --- the blocklist ----------------------------------------------------------------------------


def test_blocklist_matches_whole_tokens_only() -> None:
    blocklist = Blocklist(["ass", "hot pocket", "Bad Word"])
    assert blocklist.phrases == ("ass", "bad word", "hot pocket")  # normalised, sorted
    assert blocklist.find("you ass !") == "ass"
    assert blocklist.find("ass") == "ass"
    assert blocklist.find("this class is fun .") is None
    assert blocklist.find("assess the hot pockets") is None
    assert blocklist.find("a hot pocket please") == "hot pocket"
    assert blocklist.find("What a BAD WORD!") == "bad word"  # the text is normalised too
    assert blocklist.find("") is None
    assert Blocklist([]).find("you ass") is None and len(Blocklist(["", " "])) == 0


def test_blocklist_from_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("# a comment\nHot Pocket\n\n  \nass\nass\n")
    assert load_blocklist(path) == ["ass", "hot pocket"]
    blocklist = Blocklist.from_file(path)
    assert Blocklist.from_file(_write(tmp_path / "again.txt", blocklist.to_text())).phrases == (
        "ass",
        "hot pocket",
    )


def test_g2r_response_filter_uses_the_shared_matcher() -> None:
    f = ResponseFilter(blocklist=("ass",))
    assert f.reason("you ass !") == "blocked" and f.reason("the class .") is None


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- metrics ----------------------------------------------------------------------------------


def test_binary_metrics_hand_computed() -> None:
    m = binary_metrics([0.9, 0.8, 0.3, 0.1, 0.6], [True, False, True, False, True], 0.5)
    # predicted unsafe: 0.9 (T), 0.8 (F), 0.6 (T) -> tp 2, fp 1, fn 1, tn 1
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert binary_metrics([0.1], [False], 0.5)["f1"] == 0.0  # undefined -> 0


def test_best_f1_threshold_hand_computed() -> None:
    # cuts: top1 F1 2/4, top2 4/5, top3 4/6, all 6/7 -> everything unsafe at 0.2
    assert best_f1_threshold([0.9, 0.7, 0.6, 0.2], [True, True, False, True]) == (
        pytest.approx(0.2),
        pytest.approx(6 / 7),
    )
    # tied probabilities are cut together: {0.5, 0.5} -> F1 2/3 beats all three (2/4)
    assert best_f1_threshold([0.5, 0.5, 0.1], [True, False, False]) == (
        pytest.approx(0.5),
        pytest.approx(2 / 3),
    )
    assert best_f1_threshold([0.3, 0.2], [False, False]) == (0.5, 0.0)


def test_roc_auc_hand_computed() -> None:
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [True, False]) == pytest.approx(0.5)  # a tie counts half


def test_stratified_holdout_takes_a_share_of_every_group() -> None:
    examples = [SafetyExample(f"c{i}", f"r{i}", CATEGORIES[i % 3], i % 2 == 0) for i in range(120)]
    fit, held = stratified_holdout(examples, 0.1, seed=0)
    assert len(fit) + len(held) == 120 and not set(fit) & set(held)
    groups = {(e.category, e.unsafe) for e in held}
    assert len(groups) == 6 and len(held) == 12
    assert stratified_holdout(examples, 0.1, seed=0) == (fit, held)


# --- models -----------------------------------------------------------------------------------


def _tokenizer() -> DialogueTokenizer:
    return DialogueTokenizer.train([*TOXIC, *HARMLESS, *AGREE, *OTHER] * 2, 150, min_frequency=1)


def test_bag_features_separate_context_and_response_sides() -> None:
    cfg = SafetyClassifierConfig("bag", vocab_size=10, d_model=4, bigram_buckets=7, sep_id=4)
    model = BagOfNgramsClassifier(cfg)
    ids = torch.tensor([[5, 6, 4, 5, 0]])  # context 5 6, <sep>, response 5, pad
    feats, side = model.features(ids)
    # unigrams: 1 + id + side * V; <sep> and padding -> 0
    assert feats[0, :5].tolist() == [6, 7, 0, 16, 0]
    # bigrams: only (5, 6) on the context side; pairs across <sep> or with padding -> 0
    assert feats[0, 5:].tolist() == [1 + 2 * 10 + (5 * 1_000_003 + 6) % 7, 0, 0, 0]
    assert side[0].tolist() == [0, 0, 1, 1, 1, 0, 1, 1, 1]


def test_cross_encoder_warm_starts_from_a_same_shaped_generator() -> None:
    gen = Seq2SeqTransformer(
        Seq2SeqConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1)
    )
    cfg = SafetyClassifierConfig(
        "cross-encoder", vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=1, max_len=20
    )
    model = CrossEncoderClassifier(cfg)
    copied = model.init_from_generator(gen.state_dict())
    assert "embed.weight" in copied and "norm.weight" in copied
    assert torch.equal(model.layers[0].ffn.fc1.weight, gen.encoder_layers[0].ffn.fc1.weight)
    wider = CrossEncoderClassifier(replace(cfg, d_model=32, d_ff=64))
    with pytest.raises(ValueError, match="shape mismatch"):
        wider.init_from_generator(gen.state_dict())


@pytest.mark.parametrize("architecture", ["cross-encoder", "bag"])
def test_unsafe_probability_is_batched_and_order_preserving(architecture: str) -> None:
    torch.manual_seed(0)
    tok = _tokenizer()
    cfg = SafetyClassifierConfig(
        architecture,  # type: ignore[arg-type]
        vocab_size=tok.vocab_size,
        d_model=16,
        n_heads=2,
        d_ff=32,
        n_layers=1,
        max_len=24,
        bigram_buckets=64,
    )
    from models.safety import build_classifier_model

    clf = SafetyClassifier(build_classifier_model(cfg), tok, cfg, threshold=0.5)
    contexts, responses = TOXIC + HARMLESS, AGREE + OTHER
    together = clf.unsafe_probability(contexts, responses)
    one_by_one = clf.unsafe_probability(contexts, responses, batch_size=1)
    assert together == pytest.approx(one_by_one, abs=1e-5)
    assert all(0.0 < p < 1.0 for p in together)
    assert clf.is_unsafe(contexts, responses, threshold=1e-9) == [True] * 6
    assert clf.model.training  # unsafe_probability restores the mode it found
    with pytest.raises(ValueError, match="2 contexts but 1 responses"):
        clf.unsafe_probability(["a", "b"], ["c"])


# --- training, bundle round trip ----------------------------------------------------------------


def test_train_writes_a_classifier_bundle_that_loads_and_scores_the_same(
    trained: tuple[Path, dict], diasafety_dir: Path
) -> None:
    out, report = trained
    manifest = read_manifest(out)
    assert manifest.kind == "classifier" and manifest.name == "safety-classifier"
    assert set(manifest.files) == {
        "tokenizer.json",
        "model.safetensors",
        BLOCKLIST_FILE,
        WORDS_FILE,
    }
    assert set(report["architectures"]) == {"cross-encoder", "bag"}
    assert report["chosen"] == manifest.training["method"]
    assert report["split"] == {
        "train_fit": 216,
        "benign_fit": 0,  # no DailyDialog beside the synthetic corpus
        "benign_eval": 0,
        "benign_data": None,
        "threshold_holdout": 24,
        "val": 60,
        "holdout_fraction": 0.1,
    }
    # Every Safe fit example and no Unsafe one of these categories is eligible for a reply-only
    # copy; the tiny preset adds a quarter of them.
    eligible = sum(
        not e.unsafe or e.category in TINY.reply_only_unsafe_categories
        for e in stratified_holdout(load_diasafety(diasafety_dir, "train"), 0.1, 0)[0]
    )
    assert report["reading"]["reply_only_examples"] == round(eligible * 0.25)
    assert report["reading"]["val_contexts_unread"] == 0  # the synthetic words are all known
    clf = SafetyClassifier.load(out)
    assert clf.words is not None and "garden" in clf.words and "." not in clf.words
    assert len(clf.words) == report["reading"]["known_words"]
    assert manifest.model_config["min_known_share"] == clf.min_known_share == 0.5
    assert clf.threshold == pytest.approx(report["threshold"])
    assert clf.threshold == pytest.approx(manifest.model_config["threshold"])
    assert clf.blocklist is not None and clf.blocklist.phrases == ("hot pocket", "idiots")
    assert clf.bundle_id == manifest.bundle_id
    # The loaded weights reproduce the val figures computed before saving.
    again = evaluate_split(clf, load_diasafety(diasafety_dir, "val"), clf.threshold)
    chosen_val = report["architectures"][report["chosen"]]["val"]
    assert again["f1"] == pytest.approx(chosen_val["f1"])
    assert again["per_category"].keys() == set(CATEGORIES)
    assert manifest.metrics["val_f1"] == pytest.approx(chosen_val["f1"])


def test_corrupt_classifier_bundle_is_refused(trained: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    src, _ = trained
    for file_name in ("model.safetensors", BLOCKLIST_FILE):
        bad = tmp_path / file_name.replace(".", "-")
        shutil.copytree(src, bad)
        with (bad / file_name).open("ab") as f:
            f.write(b"x")
        with pytest.raises(BundleError) as info:
            SafetyClassifier.load(bad)
        assert str(info.value).startswith(f"bundle {bad}: {file_name} checksum mismatch")
        assert info.value.file == file_name


def test_a_generator_bundle_is_not_a_classifier(tmp_path: Path) -> None:
    from service_fixtures import build_tiny_bundles

    build_tiny_bundles(tmp_path, retriever=False)
    with pytest.raises(BundleError, match="is a generator bundle, not a classifier"):
        SafetyClassifier.load(tmp_path / "generator-nd")


def test_find_diasafety_looks_in_and_beside_the_data_dir(diasafety_dir: Path) -> None:
    assert find_diasafety(diasafety_dir) == diasafety_dir
    assert find_diasafety(diasafety_dir.parent) == diasafety_dir
    (diasafety_dir.parent / "dailydialog").mkdir(exist_ok=True)
    assert find_diasafety(diasafety_dir.parent / "dailydialog") == diasafety_dir


def test_pipeline_stage_skips_with_a_warning_without_diasafety(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "corpus").mkdir()
    with caplog.at_level(logging.WARNING):
        result = build_stage(TINY, tmp_path / "corpus", tmp_path / "out", base=None)
    assert result is None and not (tmp_path / "out").exists()
    assert "skipping the safety classifier: no DiaSafety" in caplog.text


def test_cli_trains_a_bundle_and_writes_the_report(diasafety_dir: Path, tmp_path: Path) -> None:
    from training.cli import main

    argv = [
        "train-safety-classifier",
        "--preset",
        "tiny",
        "--data",
        str(diasafety_dir.parent),
        "--out",
        str(tmp_path / "clf"),
        "--architecture",
        "bag",
        "--report",
        str(tmp_path / "report"),
    ]
    assert main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["chosen"] == "bag" and report["command"].startswith(
        "python -m training train-safety-classifier --preset tiny"
    )
    md = (tmp_path / "report.md").read_text()
    assert "| val |" in md and "Toxicity Agreement" in md
    assert read_manifest(tmp_path / "clf").training["method"] == "bag"


# --- reading only what the classifier can read ------------------------------------------------

WORDS = frozenset(["i", "like", "my", "new", "garden", "hello", "check", "this", "out", "lol"])


def test_is_link_names_urls_addresses_and_domains() -> None:
    for token in ("https://www.example.com/page?id=3", "www.wikipedia.org", "http://bit.ly/3x"):
        assert is_link(token)
    assert is_link("anna.smith@example.com") and is_link("github.com/python/cpython")
    assert not is_link("garden") and not is_link("e.g.") and not is_link("3.5")


def test_readable_turn_keeps_what_the_classifier_knows() -> None:
    assert readable_turn("I like my new garden!", WORDS) == "i like my new garden !"
    # A misspelling inside an English turn stays: its pieces still tell the model something.
    assert readable_turn("i like my new gardn", WORDS) == "i like my new gardn"
    # Links are dropped; the rest is read.
    assert readable_turn("check this out https://youtu.be/x", WORDS) == "check this out"
    # Nothing the classifier can read: emoji or punctuation only, another script or language,
    # a bare link.
    for turn in (
        "😂😂😂",
        "👍 !",
        "你好，今天天气怎么样？",
        "Привет, как дела?",
        "www.example.com",
    ):
        assert readable_turn(turn, WORDS) == "", turn
    assert readable_turn("Me gusta mucho la música.", WORDS) == ""
    # The share: one known word of two is enough at 0.5, not at 0.6; numbers count as known.
    assert readable_turn("hello tomasz", WORDS) == "hello tomasz"
    assert readable_turn("hello tomasz", WORDS, min_known_share=0.6) == ""
    assert readable_turn("hello 3.5 zzz", WORDS, min_known_share=0.6) == "hello 3.5 zzz"
    assert readable_turn("", WORDS) == ""


def test_known_words_counts_content_tokens_only() -> None:
    texts = ["i like it .", "i like www.x.com", "i see 😂 ."]
    assert known_words(texts) == ["i", "like"]
    assert known_words(texts, min_count=1) == ["i", "it", "like", "see"]


def _context_stub(cfg: SafetyClassifierConfig) -> torch.nn.Module:
    """A model that calls every pair with a non-empty context unsafe: the failure the reading
    rule removes (an out-of-distribution context scored unsafe whatever the reply)."""

    class ContextStub(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(5.0))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            before_sep = ids.eq(cfg.sep_id).long().cumsum(dim=1).eq(0) & ids.ne(cfg.pad_id)
            return torch.where(before_sep.any(dim=1), self.scale, -self.scale)

    return ContextStub()


@pytest.mark.parametrize("turn", ["😂😂😂", "你好，今天天气怎么样？", "https://www.example.com/a"])
def test_an_unreadable_context_is_judged_as_empty(turn: str) -> None:
    tok = _tokenizer()
    cfg = SafetyClassifierConfig("bag", vocab_size=tok.vocab_size, d_model=4, bigram_buckets=8)
    blind = SafetyClassifier(_context_stub(cfg), tok, cfg, threshold=0.5)  # no word list
    reading = SafetyClassifier(_context_stub(cfg), tok, cfg, threshold=0.5, words=WORDS)
    reply = "that sounds lovely ."
    assert blind.is_unsafe([turn], [reply]) == [True]  # the old behaviour
    assert reading.readable_context(turn) == ""
    assert reading.is_unsafe([turn], [reply]) == [False]
    # A context it can read still reaches the model.
    assert reading.is_unsafe(["i like my new garden ."], [reply]) == [True]


def test_reply_only_examples_copy_safe_and_reply_harm_examples() -> None:
    examples = [
        SafetyExample("c1", "r1", "Toxicity Agreement", True),  # unsafe only in context
        SafetyExample("c2", "r2", "Toxicity Agreement", False),
        SafetyExample("c3", "r3", "Offending User", True),
        SafetyExample("c4", "r4", "DailyDialog", False),
    ]
    copies = reply_only_examples(examples, 1.0, ["Offending User"], seed=0)
    assert sorted((e.response, e.unsafe) for e in copies) == [
        ("r2", False),
        ("r3", True),
        ("r4", False),
    ]
    assert {e.context for e in copies} == {""}
    assert reply_only_examples(examples, 0.0, ["Offending User"], seed=0) == []
    assert len(reply_only_examples(examples, 0.5, [], seed=0)) == 1  # of the 2 Safe ones


def test_capped_f1_threshold_hand_computed() -> None:
    probs, labels = [0.9, 0.7, 0.6, 0.2], [True, True, False, True]
    # No cap: everything unsafe at 0.2 (F1 6/7), as best_f1_threshold.
    assert capped_f1_threshold(probs, labels, [], 0.02) == best_f1_threshold(probs, labels)
    # Benign pairs at 0.5, 0.3, 0.1, 0.05: flagging at most 25% of them (one) puts the floor at
    # 0.3, so the best cut above it is 0.7 (top two: F1 4/5).
    benign = [0.5, 0.3, 0.1, 0.05]
    assert benign_floor(benign, 0.25) == pytest.approx(0.3)
    assert capped_f1_threshold(probs, labels, benign, 0.25) == (
        pytest.approx(0.7),
        pytest.approx(4 / 5),
    )
    # At most 0% of them: above 0.5, still 0.7. A floor above every probability flags nothing.
    assert capped_f1_threshold(probs, labels, benign, 0.01)[0] == pytest.approx(0.7)
    t, f1 = capped_f1_threshold(probs, labels, [0.95], 0.01)
    assert t > 0.95 and f1 == 0.0
    assert benign_floor(benign, 0.0) is None and benign_floor(benign, 1.0) is None


# --- the risk detector ------------------------------------------------------------------------


def test_risk_detector_finds_stated_risks_as_whole_tokens() -> None:
    risk = RiskDetector.from_file()
    assert len(risk) > 20 and DEFAULT_RISK_PHRASES.is_file()
    for turn in (
        "I want to kill myself.",
        "i'm going to KILL MYSELF tonight",
        "I don't want to live anymore...",
        "i feel suicidal",
    ):
        assert risk.find(turn) is not None, turn
    for turn in ("this class is killing me", "the skill myself", "i want to live by the sea ."):
        assert risk.find(turn) is None, turn
    assert RiskDetector(["kms"]).find("ok kms .") == "kms"


# --- benchmarks/safety_filter_fit.py figures on hand-made data --------------------------------


def test_block_summaries_hand_computed() -> None:
    reasons = [None, "risk", "classifier", None, "risk"]
    assert block_summary(reasons) == {
        "n": 5,
        "blocked": 3,
        "rate": pytest.approx(0.6),
        "by_reason": {"classifier": 1, "risk": 2},
    }
    assert block_summary([]) == {"n": 0, "blocked": 0, "rate": 0.0, "by_reason": {}}
    pairs = [Pair("a", "r", "emoji"), Pair("b", "r", "URL"), Pair("c", "r", "emoji")]
    by_kind = summaries_by_kind(pairs, [None, "classifier", "blocklist"])
    assert list(by_kind) == ["all", "emoji", "URL"]
    assert by_kind["emoji"]["blocked"] == 1 and by_kind["emoji"]["n"] == 2
    assert by_kind["URL"]["rate"] == 1.0 and by_kind["all"]["rate"] == pytest.approx(2 / 3)


def test_turn_caused_counts_blocks_of_replies_that_pass_after_ordinary_turns() -> None:
    # "ok ." passes after both reference turns, "ha ." is blocked after both, "hm ." after one
    # of two (not fewer than half: blocked after an ordinary turn too).
    reference = [Pair(t, r, "reference") for t in ("hi", "hello") for r in ("ok .", "ha .", "hm .")]
    reference_reasons = [None, "classifier", "classifier", None, "classifier", None]
    pairs = [Pair("😂", r, "emoji") for r in ("ok .", "ha .", "hm .")] + [Pair("你好", "ok .", "x")]
    reasons = ["classifier", "classifier", "classifier", None]
    assert turn_caused(pairs, reasons, reference, reference_reasons) == [
        "classifier",
        None,
        None,
        None,
    ]
    with pytest.raises(ValueError, match="no reference pairs"):
        turn_caused([Pair("😂", "new .", "emoji")], [None], reference, reference_reasons)


def test_flag_metrics_per_category_hand_computed() -> None:
    flags = [True, False, True, True]
    labels = [True, True, False, True]
    m = flag_metrics(flags, labels, ["A", "A", "B", "B"])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 0)
    assert m["per_category"]["A"]["recall"] == pytest.approx(0.5)
    assert m["per_category"]["B"]["precision"] == pytest.approx(0.5)


def test_probe_file_and_run_specs() -> None:
    ood, risk, reference = load_probes()
    assert {p.reply for p in reference} == {p.reply for p in ood}
    kinds = {p.kind for p in ood}
    assert {"emoji", "non-English", "URL"} <= kinds and len({p.turn for p in ood}) >= 30
    assert {p.kind for p in risk} == {"explicit", "indirect"}
    before = parse_run("before=a/b:risk=off")
    assert not before.risk and before.reading and str(before) == "before=a/b:risk=off"
    after = parse_run("after=a/b")
    assert (
        after.risk and after.reading and after.bundle == Path("a/b") and str(after) == "after=a/b"
    )
    assert not parse_run("x=a:reading=off:risk=on").reading
    for bad in ("nolabel", "x=a:risk=maybe", "x=a:colour=off"):
        with pytest.raises(Exception, match="LABEL=BUNDLE"):
            parse_run(bad)


def test_an_interrupted_fit_resumes_from_its_last_epoch_and_ends_as_an_uninterrupted_one(
    diasafety_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The classifier fit runs in the one Trainer: killed during its second epoch's validation,
    it resumes from the first epoch's checkpoint and ends with the same weights and threshold."""
    import training.methods.safety_classifier.fit as fit_module
    from training.methods.safety_classifier.fit import fit_classifier

    examples = load_diasafety(diasafety_dir, "train")
    fit_set, holdout = examples[:120], examples[120:160]
    preset = TINY
    fit = replace(preset.fit_config("bag"), epochs=3)
    tokenizer = _tokenizer()

    def run(run_dir: Path) -> Any:
        return fit_classifier("bag", fit, tokenizer, fit_set, holdout, run_dir=run_dir, seed=3)

    whole = run(tmp_path / "whole")
    real = fit_module.capped_f1_threshold
    calls = {"n": 0}

    def dies_on_the_second_epoch(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "capped_f1_threshold", dies_on_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    monkeypatch.setattr(fit_module, "capped_f1_threshold", real)
    resumed = run(tmp_path / "cut")
    assert resumed.steps == whole.steps == 3 * -(-len(fit_set) // fit.batch_size)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in whole.history]
    assert resumed.classifier.threshold == whole.classifier.threshold
    for (name, a), b in zip(
        resumed.classifier.model.state_dict().items(),
        whole.classifier.model.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), name

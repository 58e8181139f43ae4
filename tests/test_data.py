"""Tests for training.core.data: DailyDialog and JSONL loading, deduplication, leak-free splits."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from training.core.data import (
    DataFormatError,
    DatasetNotFoundError,
    DialogueExample,
    DialogueSplits,
    LoadResult,
    deduplicate,
    dialogue_ids,
    load_dailydialog,
    load_jsonl,
    load_jsonl_report,
    load_splits,
    remove_overlap,
    sample_examples,
    training_response_token_counts,
    write_jsonl,
)

SPLITS = ("train", "validation", "test")


def ex(*turns: str) -> DialogueExample:
    """An example whose last turn is the response."""
    return DialogueExample(context=tuple(turns[:-1]), response=turns[-1])


def write_dailydialog(root: Path, dialogues: dict[str, list[str]]) -> None:
    """Write a DailyDialog-release directory: one ``__eou__``-separated dialogue per line."""
    for split, lines in dialogues.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        text = "".join(line + "\n" for line in lines)
        (root / split / f"dialogues_{split}.txt").write_text(text, encoding="utf-8")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


TINY_TRAIN = [
    "Hi , Tom ! __eou__ Hello.How are you ? __eou__ Fine , thanks . __eou__",
    "Only one utterance . __eou__",
    "Let ’ s go . __eou__ OK . __eou__",
]


@pytest.fixture
def tiny_dailydialog(tmp_path: Path) -> Path:
    write_dailydialog(
        tmp_path,
        {
            "train": TINY_TRAIN,
            # "let's go ." -> "ok ." is also in train; "bye ." -> "bye ." twice.
            "validation": [
                "Let's go . __eou__ OK . __eou__ Bye . __eou__ Bye . __eou__",
                "Bye . __eou__ Bye . __eou__",
            ],
            "test": ["Bye . __eou__ Bye . __eou__", "Bye . __eou__ Bye . __eou__"],
        },
    )
    return tmp_path


@pytest.fixture(scope="module")
def real_splits(dailydialog_dir: Path) -> DialogueSplits:
    return load_splits(dailydialog_dir.parent)


# --- DailyDialog release --------------------------------------------------------------------


def test_load_dailydialog_pairs_adjacent_utterances(tiny_dailydialog: Path) -> None:
    assert load_dailydialog(tiny_dailydialog, "train") == [
        ex("hi , tom !", "hello . how are you ?"),
        ex("hello . how are you ?", "fine , thanks ."),
        ex("let's go .", "ok ."),
    ]


def test_normalised_release_is_cached_by_content_and_rules(
    tiny_dailydialog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DIALOGUE_CACHE_DIR", "")  # off: the reference
    reference = load_dailydialog(tiny_dailydialog, "train", max_context_turns=2)
    monkeypatch.setenv("DIALOGUE_CACHE_DIR", str(cache))
    assert load_dailydialog(tiny_dailydialog, "train", max_context_turns=2) == reference  # writes
    [entry] = (cache / "dailydialog").iterdir()
    assert load_dailydialog(tiny_dailydialog, "train", max_context_turns=2) == reference  # reads
    # the cache is what is read: a planted entry shows through ...
    entry.write_text(json.dumps([["planted a", "planted b"]]))
    assert load_dailydialog(tiny_dailydialog, "train") == [
        DialogueExample(context=("planted a",), response="planted b")
    ]
    # ... a corrupt one is ignored (and rewritten), and a changed file gets an entry of its own
    entry.write_text("{not json")
    assert load_dailydialog(tiny_dailydialog, "train", max_context_turns=2) == reference
    path = tiny_dailydialog / "train" / "dialogues_train.txt"
    path.write_text(path.read_text() + "Hello . __eou__ Hi there . __eou__\n")
    grown = load_dailydialog(tiny_dailydialog, "train", max_context_turns=2)
    assert grown[:-1] == reference and grown[-1].response == "hi there ."
    assert len(list((cache / "dailydialog").iterdir())) == 2


def test_load_dailydialog_keeps_two_turns_of_context(tiny_dailydialog: Path) -> None:
    assert load_dailydialog(tiny_dailydialog, "train", max_context_turns=2) == [
        ex("hi , tom !", "hello . how are you ?"),
        ex("hi , tom !", "hello . how are you ?", "fine , thanks ."),
        ex("let's go .", "ok ."),
    ]


def test_load_dailydialog_skips_empty_utterances(tmp_path: Path) -> None:
    write_dailydialog(tmp_path, {"train": ["A . __eou__  __eou__ B . __eou__"]})
    assert load_dailydialog(tmp_path, "train") == [ex("a .", "b .")]


def test_load_dailydialog_logs_skipped_lines(
    tiny_dailydialog: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="training.core.data"):
        load_dailydialog(tiny_dailydialog, "train")
    assert "skipped 1 dialogue lines" in caplog.text


def test_load_dailydialog_rejects_zero_context_turns(tiny_dailydialog: Path) -> None:
    with pytest.raises(ValueError, match="max_context_turns"):
        load_dailydialog(tiny_dailydialog, "train", max_context_turns=0)


def test_load_dailydialog_real_validation_has_7069_pairs(dailydialog_dir: Path) -> None:
    # 8,069 utterances in 1,000 dialogues (data README): 8,069 - 1,000 adjacent pairs.
    examples = load_dailydialog(dailydialog_dir, "validation")
    assert len(examples) == 7069
    assert examples[0] == ex(
        "good morning , sir . is there a bank near here ?",
        "there is one . 5 blocks away from here ?",
    )


# --- load_splits -----------------------------------------------------------------------------


def test_load_splits_dedups_and_removes_train_overlap(tiny_dailydialog: Path) -> None:
    splits = load_splits(tiny_dailydialog)
    assert splits.validation == [ex("ok .", "bye ."), ex("bye .", "bye .")]
    assert splits.test == [ex("bye .", "bye .")]
    assert splits.stats == {
        "train_raw": 3,
        "train_skipped_lines": 1,
        "train_duplicates_removed": 0,
        "validation_raw": 4,
        "validation_skipped_lines": 0,
        "validation_duplicates_removed": 1,
        "validation_overlap_removed": 1,
        "test_raw": 2,
        "test_skipped_lines": 0,
        "test_duplicates_removed": 1,
        "test_overlap_removed": 0,
        "train": 3,
        "validation": 2,
        "test": 1,
    }


def test_load_splits_finds_nested_dailydialog_dir(tiny_dailydialog: Path, tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    write_dailydialog(
        outer / "dailydialog",
        {s: (tiny_dailydialog / s / f"dialogues_{s}.txt").read_text().splitlines() for s in SPLITS},
    )
    assert load_splits(outer).stats == load_splits(tiny_dailydialog).stats


def test_load_splits_reads_jsonl_with_valid_name(tmp_path: Path) -> None:
    write_jsonl([ex("a", "b", "c"), ex("a", "b", "c"), ex("x", "y")], tmp_path / "train.jsonl")
    write_jsonl([ex("b", "c"), ex("q", "r")], tmp_path / "valid.jsonl")
    write_jsonl([ex("s", "t")], tmp_path / "test.jsonl")
    splits = load_splits(tmp_path, max_context_turns=1)
    # Contexts are cut to the last turn, so ("a", "b") -> "c" becomes ("b",) -> "c" and leaks.
    assert splits.train == [ex("b", "c"), ex("x", "y")]
    assert splits.validation == [ex("q", "r")]
    assert splits.test == [ex("s", "t")]
    assert splits.stats["train_duplicates_removed"] == 1
    assert splits.stats["validation_overlap_removed"] == 1


def test_load_splits_missing_dataset_names_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_splits(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "dialogues_train.txt" in message
    assert "train.jsonl" in message
    assert isinstance(info.value, FileNotFoundError)


def test_load_splits_incomplete_jsonl_names_missing_file(tmp_path: Path) -> None:
    write_jsonl([ex("a", "b")], tmp_path / "train.jsonl")
    write_jsonl([ex("a", "b")], tmp_path / "test.jsonl")
    with pytest.raises(DatasetNotFoundError, match=r"validation\.jsonl"):
        load_splits(tmp_path)


def test_load_splits_real_data_has_no_validation_or_test_pair_in_train(
    real_splits: DialogueSplits,
) -> None:
    train = set(real_splits.train)
    assert not train.intersection(real_splits.validation)
    assert not train.intersection(real_splits.test)


def test_load_splits_real_data_stats_are_consistent(real_splits: DialogueSplits) -> None:
    stats = real_splits.stats
    # Adjacent pairs before dedup, per the data README.
    assert (stats["train_raw"], stats["validation_raw"], stats["test_raw"]) == (76053, 7069, 6740)
    for split in SPLITS:
        examples = getattr(real_splits, split)
        assert len(examples) == stats[split]
        assert len(set(examples)) == len(examples)
        assert stats[f"{split}_skipped_lines"] == 0
    assert stats["train"] == stats["train_raw"] - stats["train_duplicates_removed"]
    for split in ("validation", "test"):
        removed = stats[f"{split}_duplicates_removed"] + stats[f"{split}_overlap_removed"]
        assert stats[split] == stats[f"{split}_raw"] - removed
    # 1,167 dialogues are repeated in the release, so train must lose pairs to dedup.
    assert stats["train_duplicates_removed"] > 1000


# --- JSONL -----------------------------------------------------------------------------------


def test_load_jsonl_reads_and_normalises(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            json.dumps({"context": ["Hi !", "How are you?"], "response": "Fine.Thanks"}),
            "",
            json.dumps({"context": ["Let ’ s go"], "response": "OK", "id": 7}),
        ],
    )
    assert load_jsonl(path) == [ex("hi !", "how are you ?", "fine . thanks"), ex("let's go", "ok")]


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ('{"context": ["hi"], "response": "hello"', "invalid JSON"),
        ('["hi", "hello"]', "expected a JSON object"),
        ('{"context": ["hi"]}', 'missing field "response"'),
        ('{"response": "hello"}', 'missing field "context"'),
        ('{"context": [], "response": "hello"}', '"context" is empty'),
        ('{"context": "hi", "response": "hello"}', '"context" must be a list'),
        ('{"context": ["hi", 3], "response": "hello"}', '"context"[1] must be a string'),
        ('{"context": ["hi", "  "], "response": "hello"}', '"context"[1] is empty'),
        ('{"context": ["hi"], "response": ""}', '"response" is empty'),
    ],
)
def test_load_jsonl_malformed_line_names_file_and_line(
    tmp_path: Path, bad_line: str, problem: str
) -> None:
    good = json.dumps({"context": ["hi"], "response": "hello"})
    path = write_lines(tmp_path / "train.jsonl", [good, "", bad_line])
    with pytest.raises(DataFormatError) as info:
        load_jsonl(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert problem in str(info.value)
    assert isinstance(info.value, ValueError)


_DEEP = "[" * 100_000 + "]" * 100_000
_GOOD = json.dumps({"context": ["hi"], "response": "hello"}).encode()


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        (('{"context": ' + _DEEP + ', "response": "x"}').encode(), "nested too deeply"),
        (_DEEP.encode(), "invalid JSON (nested too deeply)"),
        (b'{"context": ["caf\xe9"], "response": "hello"}', "not valid UTF-8 (byte 0xe9 at byte"),
        (b'{"context": ["hi"], "response": "\xff\xfe"}', "not valid UTF-8 (byte 0xff at byte"),
        (
            b'{"context": ["hi \\ud800 there"], "response": "hello"}',
            '"context"[0] contains a lone UTF-16 surrogate (U+D800)',
        ),
        (
            b'{"context": ["hi"], "response": "ok \\udfff"}',
            '"response" contains a lone UTF-16 surrogate (U+DFFF)',
        ),
    ],
)
def test_load_jsonl_bad_input_is_one_error_with_file_and_line(
    tmp_path: Path, bad_line: bytes, problem: str
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join([_GOOD, b"", bad_line, _GOOD]) + b"\n")
    with pytest.raises(DataFormatError) as info:
        load_jsonl(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert problem in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    # ... or skipped and counted under the skip flag
    result = load_jsonl_report(path, skip_malformed=True)
    assert result == LoadResult([ex("hi", "hello"), ex("hi", "hello")], skipped=1)


def test_load_jsonl_keeps_valid_non_ascii_and_surrogate_pairs(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(
        '{"context": ["café"], "response": "ok"}\r\n'.encode()
        + b'{"context": ["hi \\ud83d\\ude00"], "response": "ok"}\n'
    )
    examples = load_jsonl(path)
    assert len(examples) == 2 and "é" in examples[0].context[0]


def test_load_jsonl_skip_malformed_counts_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = json.dumps({"context": ["hi"], "response": "hello"})
    path = write_lines(tmp_path / "train.jsonl", [good, "not json", '{"context": []}', good])
    with caplog.at_level(logging.WARNING, logger="training.core.data"):
        result = load_jsonl_report(path, skip_malformed=True)
    assert result == LoadResult([ex("hi", "hello"), ex("hi", "hello")], skipped=2)
    assert "skipped 2 malformed lines" in caplog.text
    assert load_jsonl(path, skip_malformed=True) == result.examples


def test_write_jsonl_round_trips(tmp_path: Path) -> None:
    examples = [ex("hi !", "how are you ?", "fine ."), ex("café ?", "oui .")]
    path = tmp_path / "sub" / "out.jsonl"
    write_jsonl(examples, path)
    assert (
        path.read_text(encoding="utf-8").splitlines()[1]
        == '{"context": ["café ?"], "response": "oui ."}'
    )
    assert load_jsonl(path) == examples
    assert not path.with_name("out.jsonl.tmp").exists()


# --- dedup, overlap, token counts ------------------------------------------------------------


def test_deduplicate_keeps_first_occurrences_in_order() -> None:
    examples = [ex("a", "b"), ex("c", "d"), ex("a", "b"), ex("x", "a", "b"), ex("c", "d")]
    assert deduplicate(examples) == [ex("a", "b"), ex("c", "d"), ex("x", "a", "b")]


def test_remove_overlap_drops_pairs_in_reference() -> None:
    examples = [ex("a", "b"), ex("c", "d"), ex("x", "a", "b")]
    reference = [ex("a", "b"), ex("d", "c")]
    assert remove_overlap(examples, reference) == [ex("c", "d"), ex("x", "a", "b")]
    assert remove_overlap(examples, set(reference)) == [ex("c", "d"), ex("x", "a", "b")]


def test_training_response_token_counts_counts_response_tokens_only() -> None:
    examples = [ex("ignored context", "i see ."), ex("x", "i do , i do .")]
    assert training_response_token_counts(examples) == Counter(
        {"i": 3, ".": 2, "see": 1, "do": 2, ",": 1}
    )


# --- subsets that stand for a split ----------------------------------------------------------


def test_sample_examples_is_a_seeded_draw_whose_prefixes_are_draws_too() -> None:
    items = list(range(1000))
    a = sample_examples(items, 100, seed=3)
    assert len(a) == len(set(a)) == 100
    assert a == sample_examples(items, 100, seed=3)  # reproducible
    assert a != sample_examples(items, 100, seed=4)
    assert sample_examples(items, 40, seed=3) == a[:40]  # a prefix is the smaller draw
    assert sample_examples(items, 0) == items  # 0 = all, in their order
    assert sorted(sample_examples(items, 5000)) == items  # more than there are: all, drawn order


def test_sample_examples_spreads_a_real_split_over_its_dialogues(
    real_splits: DialogueSplits,
) -> None:
    # The first 500 validation pairs are a few dozen dialogues; a sample of 500 reaches hundreds.
    val = real_splits.validation
    dialogue = dict(zip(val, dialogue_ids(val), strict=True))
    assert len({dialogue[e] for e in val[:500]}) < 100
    assert len({dialogue[e] for e in sample_examples(val, 500)}) > 300


def test_dialogue_ids_start_a_dialogue_where_a_pair_does_not_answer_the_last() -> None:
    pairs = [
        DialogueExample(("hi",), "hello"),
        DialogueExample(("hello",), "how are you ?"),
        DialogueExample(("what time is it ?",), "noon ."),  # a new dialogue
        DialogueExample(("noon .",), "thanks ."),
    ]
    assert dialogue_ids(pairs) == [0, 0, 1, 1]
    assert dialogue_ids([]) == []

"""Dialogue data: DailyDialog release and JSONL loaders, deduplication and leak-free splits.

Every utterance is passed through :func:`models.text.normalize_text` on load, so training text
matches what the service sees. DailyDialog (Li et al., IJCNLP 2017) repeats 1,167 dialogues
across its release; :func:`load_splits` therefore deduplicates pairs and drops every validation
or test pair that also occurs in train.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

import numpy as np

import models.text as text_module
from models.text import normalize_text

__all__ = [
    "DataFormatError",
    "DatasetNotFoundError",
    "DialogueExample",
    "DialogueSplits",
    "LoadResult",
    "deduplicate",
    "dialogue_ids",
    "load_dailydialog",
    "load_jsonl",
    "load_jsonl_report",
    "load_splits",
    "remove_overlap",
    "sample_examples",
    "training_response_token_counts",
    "write_jsonl",
]

logger = logging.getLogger(__name__)

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
EOU = "__eou__"  # DailyDialog's end-of-utterance marker


class DataFormatError(ValueError):
    """A data file or directory does not have the expected format."""


class DatasetNotFoundError(FileNotFoundError):
    """No dataset in a recognised format was found in a directory."""


@dataclass(frozen=True, slots=True)
class DialogueExample:
    """One training pair: the preceding turns and the response to them."""

    context: tuple[str, ...]  # normalised turns, oldest first
    response: str  # normalised response


class LoadResult(NamedTuple):
    """Examples read from a file plus the number of lines skipped as malformed."""

    examples: list[DialogueExample]
    skipped: int


@dataclass
class DialogueSplits:
    """Deduplicated train/validation/test examples with counts from each cleaning step."""

    train: list[DialogueExample]
    validation: list[DialogueExample]
    test: list[DialogueExample]
    # per split: <split>_raw, <split>_skipped_lines, <split>_duplicates_removed, <split> (final);
    # validation_overlap_removed and test_overlap_removed count pairs dropped for occurring in train
    stats: dict[str, int] = field(default_factory=dict)


def _check_max_context_turns(max_context_turns: int) -> None:
    if max_context_turns < 1:
        raise ValueError(f"max_context_turns must be >= 1, got {max_context_turns}")


def _cache_dir() -> Path | None:
    """Where normalised corpora are cached: ``$DIALOGUE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/dialogue-response`` (``~/.cache/...``); ``DIALOGUE_CACHE_DIR=`` (empty)
    turns the cache off."""
    configured = os.environ.get("DIALOGUE_CACHE_DIR")
    if configured is not None:
        return Path(configured) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dialogue-response"


@functools.cache
def _normalizer_version() -> bytes:
    """The normaliser's source: a cached corpus is reused only with the rules that made it."""
    return hashlib.sha256(Path(text_module.__file__ or "").read_bytes()).digest()


def _normalized_dialogues(path: Path) -> list[list[str]]:
    """Every line of a DailyDialog file as its normalised utterances (empty ones dropped).

    Normalising the release is most of the time of reading it (~116k utterances, seconds); the
    result is cached on disk under the hash of the file's bytes and of the normaliser's source,
    so a changed file or changed rules are normalised again, and a cache that cannot be read or
    written is simply not used."""
    raw = path.read_bytes()
    cache_dir = _cache_dir()
    cached = None
    if cache_dir is not None:
        key = hashlib.sha256(_normalizer_version() + raw).hexdigest()
        cached = cache_dir / "dailydialog" / f"{key}.json"
        try:
            dialogues = json.loads(cached.read_text(encoding="utf-8"))
            if isinstance(dialogues, list):
                return dialogues
        except (OSError, ValueError):
            pass
    dialogues = [
        [t for t in map(normalize_text, line.split(EOU)) if t]
        # the lines text mode would give (universal newlines: \n, \r\n or \r), not str.splitlines(),
        # which also breaks at U+2028, U+0085 and other characters inside an utterance
        for line in raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if line.strip()
    ]
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(dialogues), encoding="utf-8")
            os.replace(tmp, cached)
        except OSError as exc:
            logger.debug("not caching the normalised %s: %s", path, exc)
    return dialogues


def _dailydialog_pairs(path: Path, max_context_turns: int) -> LoadResult:
    """Read one ``dialogues_<split>.txt``; a line with fewer than two utterances is skipped."""
    examples: list[DialogueExample] = []
    skipped = 0
    for turns in _normalized_dialogues(path):
        if len(turns) < 2:
            skipped += 1
            continue
        for i in range(1, len(turns)):
            context = tuple(turns[max(0, i - max_context_turns) : i])
            examples.append(DialogueExample(context=context, response=turns[i]))
    if skipped:
        logger.debug("%s: skipped %d dialogue lines with fewer than 2 utterances", path, skipped)
    return LoadResult(examples, skipped)


def dailydialog_file(root: Path, split: Split) -> Path:
    """``root/<split>/dialogues_<split>.txt``: one split of the DailyDialog release."""
    return Path(root) / split / f"dialogues_{split}.txt"


def load_dailydialog(root: Path, split: Split, max_context_turns: int = 1) -> list[DialogueExample]:
    """One example per utterance after the first of each dialogue in ``root/<split>/dialogues_<split>.txt``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _check_max_context_turns(max_context_turns)
    return _dailydialog_pairs(dailydialog_file(root, split), max_context_turns).examples


def dailydialog_dialogues(data_dir: Path, split: Split) -> list[list[str]]:
    """Whole dialogues of a split (normalised turns, oldest first), for what pairs cannot show,
    such as how each dialogue ends; ``data_dir`` as :func:`load_splits` takes it (the release or
    a folder holding it as ``dailydialog/``)."""
    root = _dailydialog_root(Path(data_dir))
    if root is None:
        raise ValueError(f"{data_dir}: no DailyDialog release (train/dialogues_train.txt)")
    return _normalized_dialogues(dailydialog_file(root, split))


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(value: str, where: str) -> None:
    """JSON may spell a lone UTF-16 surrogate (``"\\ud800"``): valid JSON, not valid text (it
    cannot be encoded as UTF-8, so the tokenizer would fail on it much later)."""
    found = _LONE_SURROGATE.search(value)
    if found is not None:
        raise ValueError(
            f"{where} contains a lone UTF-16 surrogate (U+{ord(found.group()):04X}) "
            f"at character {found.start()}"
        )


def _decode_line(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line)"
        ) from None


def _parse_jsonl_line(line: str) -> DialogueExample:
    """One ``{"context": [str, ...], "response": str}`` record; raises ValueError saying what is wrong."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:  # json's parser recurses once per level of [ or {
        raise ValueError("invalid JSON (nested too deeply)") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for key in ("context", "response"):
        if key not in record:
            raise ValueError(f'missing field "{key}"')
    context, response = record["context"], record["response"]
    if not isinstance(context, list):
        raise ValueError(f'"context" must be a list of strings, got {type(context).__name__}')
    if not context:
        raise ValueError('"context" is empty')
    turns: list[str] = []
    for i, turn in enumerate(context):
        if not isinstance(turn, str):
            raise ValueError(f'"context"[{i}] must be a string, got {type(turn).__name__}')
        _check_text(turn, f'"context"[{i}]')
        normalised = normalize_text(turn)
        if not normalised:
            raise ValueError(f'"context"[{i}] is empty')
        turns.append(normalised)
    if not isinstance(response, str):
        raise ValueError(f'"response" must be a string, got {type(response).__name__}')
    _check_text(response, '"response"')
    normalised_response = normalize_text(response)
    if not normalised_response:
        raise ValueError('"response" is empty')
    return DialogueExample(context=tuple(turns), response=normalised_response)


def load_jsonl_report(path: Path, *, skip_malformed: bool = False) -> LoadResult:
    """Read ``{"context": [...], "response": ...}`` lines; malformed lines raise or, if asked, are counted.

    Malformed means anything wrong with one line: invalid JSON (nested too deeply included), bytes
    that are not UTF-8, a lone surrogate, a missing or empty field. The error is one
    DataFormatError naming the file and line, never a traceback from deep inside a parser."""
    path = Path(path)
    examples: list[DialogueExample] = []
    skipped = 0
    with path.open("rb") as lines:  # decoded per line, so a bad byte is reported with its line
        for lineno, raw in enumerate(lines, start=1):
            try:
                line = _decode_line(raw)
                if not line.strip():
                    continue
                examples.append(_parse_jsonl_line(line))
            except ValueError as exc:
                if not skip_malformed:
                    raise DataFormatError(f"{path}:{lineno}: {exc}") from None
                skipped += 1
    if skipped:
        logger.warning("%s: skipped %d malformed lines", path, skipped)
    return LoadResult(examples, skipped)


def load_jsonl(path: Path, *, skip_malformed: bool = False) -> list[DialogueExample]:
    """Examples of a JSONL file (see :func:`load_jsonl_report` for the skipped-line count)."""
    return load_jsonl_report(path, skip_malformed=skip_malformed).examples


def write_jsonl(examples: Iterable[DialogueExample], path: Path) -> None:
    """Write examples as ``{"context": [...], "response": ...}`` lines, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for example in examples:
            record = {"context": list(example.context), "response": example.response}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def deduplicate(examples: Iterable[DialogueExample]) -> list[DialogueExample]:
    """Drop repeated (context, response) pairs, keeping the first occurrence and the order."""
    return list(dict.fromkeys(examples))


def remove_overlap(
    examples: Iterable[DialogueExample], reference: Iterable[DialogueExample]
) -> list[DialogueExample]:
    """Drop the examples whose (context, response) pair also occurs in ``reference``."""
    seen = reference if isinstance(reference, set | frozenset) else set(reference)
    return [e for e in examples if e not in seen]


T = TypeVar("T")


def dialogue_ids(examples: Sequence[DialogueExample]) -> list[int]:
    """A dialogue number per pair of a split in its release order: a new dialogue starts wherever
    a pair does not answer the previous pair's response."""
    ids: list[int] = []
    for i, e in enumerate(examples):
        new = i > 0 and e.context[-1] != examples[i - 1].response
        ids.append((ids[-1] + new) if ids else 0)
    return ids


def sample_examples(examples: Sequence[T], n: int, seed: int = 0) -> list[T]:
    """``n`` of ``examples`` drawn uniformly without replacement with ``seed``, in the drawn
    order, so that every prefix of the result is a uniform sample too; all of them, in their own
    order, when ``n`` is 0.

    Use it, not ``examples[:n]``, wherever a subset stands for a split: a split's pairs come
    dialogue by dialogue (:func:`dialogue_ids`), and DailyDialog's first 500 validation pairs are
    79 of its 929 dialogues, 500 drawn ones 373 (reports/nt_select_dist2_small.md)."""
    if n <= 0:
        return list(examples)
    order = np.random.default_rng(seed).permutation(len(examples))[:n]
    return [examples[i] for i in order.tolist()]


def training_response_token_counts(examples: Iterable[DialogueExample]) -> Counter[str]:
    """Whitespace-token counts over the normalised responses (the frequency table behind LF)."""
    counts: Counter[str] = Counter()
    for example in examples:
        counts.update(example.response.split())
    return counts


def _dailydialog_root(data_dir: Path) -> Path | None:
    for root in (data_dir, data_dir / "dailydialog"):
        if dailydialog_file(root, "train").is_file():
            return root
    return None


def _jsonl_files(data_dir: Path) -> dict[Split, Path] | None:
    """The three JSONL split files, or None when there is no ``train.jsonl``."""
    train = data_dir / "train.jsonl"
    if not train.is_file():
        return None
    validation = data_dir / "validation.jsonl"
    if not validation.is_file() and (data_dir / "valid.jsonl").is_file():
        validation = data_dir / "valid.jsonl"
    return {"train": train, "validation": validation, "test": data_dir / "test.jsonl"}


def _read_raw_splits(data_dir: Path, max_context_turns: int) -> dict[Split, LoadResult]:
    """Load all three splits in whichever supported format ``data_dir`` holds."""
    if (root := _dailydialog_root(data_dir)) is not None:
        files = {split: dailydialog_file(root, split) for split in SPLITS}
        _require_files(data_dir, files)
        logger.info("loading DailyDialog release from %s", root)
        return {s: _dailydialog_pairs(p, max_context_turns) for s, p in files.items()}
    if (jsonl := _jsonl_files(data_dir)) is not None:
        _require_files(data_dir, jsonl)
        logger.info("loading JSONL splits from %s", data_dir)
        raw = {s: load_jsonl_report(p) for s, p in jsonl.items()}
        # JSONL contexts may be longer than the model reads; keep the most recent turns.
        return {
            s: LoadResult(
                [DialogueExample(e.context[-max_context_turns:], e.response) for e in r.examples],
                r.skipped,
            )
            for s, r in raw.items()
        }
    raise DatasetNotFoundError(
        f"no dataset found in {data_dir}: expected the DailyDialog release "
        "(train/dialogues_train.txt, validation/dialogues_validation.txt, test/dialogues_test.txt, "
        "directly or under dailydialog/) or JSONL files (train.jsonl, validation.jsonl or "
        "valid.jsonl, test.jsonl)"
    )


def _require_files(data_dir: Path, files: dict[Split, Path]) -> None:
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"incomplete dataset in {data_dir}: missing {', '.join(missing)}"
        )


def load_splits(data_dir: Path, max_context_turns: int = 1) -> DialogueSplits:
    """Load, deduplicate and de-leak train/validation/test from a DailyDialog or JSONL directory."""
    data_dir = Path(data_dir)
    _check_max_context_turns(max_context_turns)
    raw = _read_raw_splits(data_dir, max_context_turns)
    stats: dict[str, int] = {}
    cleaned: dict[Split, list[DialogueExample]] = {}
    for split in SPLITS:
        examples, skipped = raw[split]
        unique = deduplicate(examples)
        stats[f"{split}_raw"] = len(examples)
        stats[f"{split}_skipped_lines"] = skipped
        stats[f"{split}_duplicates_removed"] = len(examples) - len(unique)
        cleaned[split] = unique
    train_pairs = set(cleaned["train"])
    for split in ("validation", "test"):
        kept = remove_overlap(cleaned[split], train_pairs)
        stats[f"{split}_overlap_removed"] = len(cleaned[split]) - len(kept)
        cleaned[split] = kept
    for split in SPLITS:
        stats[split] = len(cleaned[split])
    logger.info("dialogue splits from %s: %s", data_dir, stats)
    return DialogueSplits(cleaned["train"], cleaned["validation"], cleaned["test"], stats)

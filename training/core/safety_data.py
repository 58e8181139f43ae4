"""Safety corpora: DiaSafety (Sun et al., 2022) and the He & Glass (2020) malicious target lists.

Text goes through :func:`models.text.normalize_text`, like every other corpus, so a classifier or
a target list sees the same strings the generator and the service see. Loaders fail with one
message naming the file and the record that is wrong.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from models.text import normalize_text
from training.core.data import DataFormatError, DatasetNotFoundError

__all__ = [
    "SafetyExample",
    "diasafety_root",
    "heldout_paraphrases",
    "load_diasafety",
    "load_paraphrases",
    "load_targets",
    "normalize_target",
]

logger = logging.getLogger(__name__)

SafetySplit = Literal["train", "val"]
LABELS = {"Safe": False, "Unsafe": True}


@dataclass(frozen=True, slots=True)
class SafetyExample:
    """One DiaSafety record: a context, a response to it, and whether that response is unsafe."""

    context: str  # normalised
    response: str  # normalised
    category: str  # e.g. "Toxicity Agreement", "Risk Ignorance"
    unsafe: bool


def diasafety_root(data_dir: Path) -> Path:
    """``data_dir`` itself or its ``diasafety/`` child, whichever holds ``train.json``."""
    for root in (Path(data_dir), Path(data_dir) / "diasafety"):
        if (root / "train.json").is_file():
            return root
    raise DatasetNotFoundError(f"no DiaSafety in {data_dir}: expected train.json (or diasafety/)")


def load_diasafety(data_dir: Path, split: SafetySplit) -> list[SafetyExample]:
    """DiaSafety ``train`` or ``val`` as normalised examples (records with empty text skipped)."""
    path = diasafety_root(data_dir) / f"{split}.json"
    if not path.is_file():
        raise DatasetNotFoundError(f"missing DiaSafety split file {path}")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(records, list):
        raise DataFormatError(f"{path}: expected a JSON list of records")
    out: list[SafetyExample] = []
    skipped = 0
    for i, rec in enumerate(records):
        try:
            label = LABELS[rec["label"]]
            context, response = normalize_text(rec["context"]), normalize_text(rec["response"])
            category = str(rec.get("category", ""))
        except (KeyError, TypeError) as exc:
            raise DataFormatError(
                f"{path}: record {i} needs context, response and label Safe|Unsafe ({exc!r})"
            ) from exc
        if not context or not response:
            skipped += 1
            continue
        out.append(SafetyExample(context, response, category, label))
    if skipped:
        logger.warning("%s: skipped %d records with empty context or response", path, skipped)
    return out


# The target lists are PTB-tokenised ("do n't", "ca n't"); DailyDialog writes "don't", "can't".
_PTB_NEGATION = re.compile(r"(?<=\w) n't(?!\S)")


def normalize_target(text: str) -> str:
    """A PTB-tokenised target in corpus style: ``i do n't like you`` -> ``i don't like you``.

    ``normalize_text`` already joins "i 'm" -> "i'm"; it leaves "do n't" apart because the split is
    not around the apostrophe, so that one case is joined here.
    """
    return normalize_text(_PTB_NEGATION.sub("n't", normalize_text(text)))


def load_targets(path: Path) -> list[str]:
    """A malicious target list: one sentence per line, normalised, blank lines and repeats dropped."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"no target list at {path}")
    seen: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        text = normalize_target(line)
        if text:
            seen.setdefault(text)
    if not seen:
        raise DataFormatError(f"{path}: no targets")
    return list(seen)


TRAIN_TARGET_LISTS = ("train.txt", "train_aug1k.txt", "train_aug2_5k.txt")


def heldout_paraphrases(targets_dir: Path) -> list[str]:
    """Paraphrases of the train targets that no train list contains (sorted, ``<unk>``-free): a
    stand-in for He & Glass's held-out test list, which is not public."""
    seen: set[str] = set()
    for name in TRAIN_TARGET_LISTS:
        seen |= set(load_targets(Path(targets_dir) / name))
    rows = load_paraphrases(Path(targets_dir) / "train_paraphrases.tsv")
    return sorted({p for row in rows for p in row if "<unk>" not in p} - seen)


def load_paraphrases(path: Path) -> list[list[str]]:
    """``train_paraphrases.tsv``: one row per train target, its paraphrases tab-separated."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"no paraphrase file at {path}")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rows.append([t for t in (normalize_target(x) for x in line.split("\t")) if t])
    return rows

"""Safety-classifier data: finding DiaSafety, the blocklist and DailyDialog in a data folder, the
benign DailyDialog pairs, reply-only copies and a stratified hold-out."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.config import SHARED_DATA
from training.core.data import DatasetNotFoundError
from training.core.safety_data import SafetyExample

# --- data -------------------------------------------------------------------------------------


def find_diasafety(data_dir: Path) -> Path:
    """The DiaSafety folder for ``data_dir``: itself, its ``diasafety/`` child, or its sibling
    (so ``--data ../shared/data/dailydialog``, the pipeline's corpus, finds it too)."""
    data_dir = Path(data_dir)
    for root in (data_dir, data_dir / "diasafety", data_dir.parent / "diasafety"):
        if (root / "train.json").is_file() and (root / "val.json").is_file():
            return root
    raise DatasetNotFoundError(
        f"no DiaSafety near {data_dir}: expected train.json and val.json in it, in its "
        "diasafety/ folder or in a sibling diasafety/ folder"
    )


def find_blocklist(data_dir: Path) -> Path | None:
    """``blocklist/en.txt`` in ``data_dir`` or beside it, else the shared data's; None if absent."""
    data_dir = Path(data_dir)
    for path in (
        data_dir / "blocklist" / "en.txt",
        data_dir.parent / "blocklist" / "en.txt",
        SHARED_DATA / "blocklist" / "en.txt",
    ):
        if path.is_file():
            return path
    return None


def find_dailydialog(data_dir: Path) -> Path | None:
    """DailyDialog for ``data_dir``: itself (the pipeline's corpus), its ``dailydialog/`` child
    or its sibling; None when there is none."""
    data_dir = Path(data_dir)
    for root in (data_dir, data_dir / "dailydialog", data_dir.parent / "dailydialog"):
        if (root / "train").is_dir() or (root / "train.jsonl").is_file():
            return root
    return None


def load_benign_pairs(
    dailydialog: Path, n_train: int, n_eval: int, seed: int, n_threshold: int = 0
) -> tuple[list[SafetyExample], list[SafetyExample], list[SafetyExample]]:
    """(``n_train`` seeded DailyDialog train pairs, the first ``n_eval`` validation pairs,
    ``n_threshold`` further seeded train pairs disjoint from the first), as single-turn Safe
    examples of category ``DailyDialog``."""
    from training.core.data import load_splits

    splits = load_splits(dailydialog, max_context_turns=1)

    def to_safe(examples: Sequence[Any]) -> list[SafetyExample]:
        return [SafetyExample(e.context[-1], e.response, "DailyDialog", False) for e in examples]

    n_train = min(n_train, len(splits.train))
    drawn = random.Random(seed).sample(splits.train, min(n_train + n_threshold, len(splits.train)))
    return to_safe(drawn[:n_train]), to_safe(splits.validation[:n_eval]), to_safe(drawn[n_train:])


def reply_only_examples(
    examples: Sequence[SafetyExample],
    share: float,
    unsafe_categories: Sequence[str],
    seed: int,
) -> list[SafetyExample]:
    """Copies of a seeded ``share`` of the eligible ``examples`` with an empty context: every
    Safe example is eligible, Unsafe ones only in ``unsafe_categories`` (harm in the reply)."""
    assert 0.0 <= share <= 1.0, f"reply_only_share must be in [0, 1], got {share}"
    eligible = [e for e in examples if not e.unsafe or e.category in unsafe_categories]
    picked = random.Random(seed).sample(eligible, round(len(eligible) * share))
    return [replace(e, context="") for e in picked]


def stratified_holdout(
    examples: Sequence[SafetyExample], fraction: float, seed: int
) -> tuple[list[SafetyExample], list[SafetyExample]]:
    """(fit, held out): ``fraction`` of every (category, label) group, drawn with ``seed``."""
    assert 0.0 < fraction < 1.0, f"holdout fraction must be in (0, 1), got {fraction}"
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault((ex.category, ex.unsafe), []).append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for key in sorted(groups):
        idx = groups[key]
        rng.shuffle(idx)
        held.update(idx[: max(1, round(len(idx) * fraction))])
    fit = [ex for i, ex in enumerate(examples) if i not in held]
    return fit, [ex for i, ex in enumerate(examples) if i in held]

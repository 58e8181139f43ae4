"""What every stage of ``build`` reads: where things go (:class:`BuildPaths`), the corpus splits
as a preset cuts them, the tokenizer trained once on the training split, the validation subset."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.tokenizer import DialogueTokenizer
from training.config import Preset
from training.core.data import DialogueSplits, load_splits, sample_examples
from training.core.distributed import DistContext, barrier

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildPaths:
    data_dir: Path
    out_dir: Path  # bundles (artifacts/)
    runs_dir: Path  # checkpoints, logs, plots, evaluation outputs

    def run_dir(self, preset: Preset, stage: str) -> Path:
        return self.runs_dir / preset.run_name / stage


def prepare_splits(preset: Preset, data_dir: Path) -> DialogueSplits:
    """Load, dedup and de-leak the splits, then apply the preset's size caps."""
    splits = load_splits(data_dir, max_context_turns=preset.inputs.max_context_turns)
    if preset.max_train_examples:
        splits.train = splits.train[: preset.max_train_examples]
    splits.stats["train_used"] = len(splits.train)
    logger.info("data %s: %s", data_dir, splits.stats)
    return splits


def tokenizer_texts(splits: DialogueSplits) -> list[str]:
    """Training-split text the tokenizer learns from: every distinct context turn and response."""
    seen: dict[str, None] = {}
    for ex in splits.train:
        for turn in (*ex.context, ex.response):
            seen.setdefault(turn)
    return list(seen)


def ensure_tokenizer(
    preset: Preset, splits: DialogueSplits, path: Path, ctx: DistContext
) -> DialogueTokenizer:
    """Train the BPE tokenizer once (rank 0) and share it through ``path``."""
    if ctx.is_main and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tok = DialogueTokenizer.train(tokenizer_texts(splits), preset.vocab_size)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(tok.to_str())
        os.replace(tmp, path)
        logger.info("tokenizer: %d pieces -> %s", tok.vocab_size, path)
    barrier(ctx)
    return DialogueTokenizer.from_file(path)


def val_subset(preset: Preset, splits: DialogueSplits) -> list[Any]:
    """The generators' validation pairs: ``preset.generator.val_examples`` of them drawn across the
    split (:func:`training.core.data.sample_examples`), or all."""
    return sample_examples(splits.validation, preset.generator.val_examples)

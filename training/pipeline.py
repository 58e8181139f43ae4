"""``python -m training build``: data -> tokenizer -> standard generator -> evaluation, resumable.

Each stage leaves a file behind (tokenizer.json, a verified bundle, an evaluation JSON); a rerun
skips the stages whose outputs are already there and resumes an interrupted training stage from
its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.bundle import BundleError, update_metrics, verify_bundle
from models.generator import GenerativeResponder
from models.tokenizer import DialogueTokenizer
from training.data import DialogueSplits, load_splits, training_response_token_counts
from training.distributed import DistContext, barrier
from training.evaluate import evaluate_generator, markdown_report
from training.generator import train_mle_generator
from training.presets import Preset

logger = logging.getLogger(__name__)

STANDARD_GENERATOR = "generator-standard"


@dataclass(frozen=True)
class BuildPaths:
    data_dir: Path
    out_dir: Path  # bundles (artifacts/)
    runs_dir: Path  # checkpoints, logs, plots, evaluation outputs

    def run_dir(self, preset: Preset, stage: str) -> Path:
        return self.runs_dir / preset.name / stage


def prepare_splits(preset: Preset, data_dir: Path) -> DialogueSplits:
    """Load, dedup and de-leak the splits, then apply the preset's size caps."""
    splits = load_splits(data_dir, max_context_turns=preset.inputs.max_context_turns)
    if preset.max_train_examples:
        splits.train = splits.train[: preset.max_train_examples]
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


def existing_bundle(path: Path, preset: Preset) -> bool:
    """True when ``path`` holds a valid bundle built with ``preset`` (so the stage can be skipped)."""
    try:
        manifest = verify_bundle(path)
    except BundleError:
        return False
    return bool(manifest.training.get("preset") == preset.name)


def evaluate_bundle(
    bundle_dir: Path, splits: DialogueSplits, preset: Preset, out_json: Path, device: str = "cpu"
) -> dict[str, Any]:
    """Evaluate a generator bundle on the test split, record it in the manifest and on disk."""
    responder = GenerativeResponder.load(bundle_dir, device=device)
    test = splits.test[: preset.eval_examples] if preset.eval_examples else splits.test
    counts = training_response_token_counts(splits.train)
    result = evaluate_generator(responder, test, counts)
    result["split"] = "test"
    result["preset"] = preset.name
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2))
    out_json.with_suffix(".md").write_text(markdown_report(bundle_dir.name, result) + "\n")
    summary = {"test_perplexity": result["perplexity"]}
    for dec, metrics in result["decodings"].items():
        summary.update({f"test_{dec}_{k}": v for k, v in metrics.items()})
    update_metrics(bundle_dir, summary)
    return result


def build(
    preset: Preset, paths: BuildPaths, ctx: DistContext, *, resume: bool = True, seed: int = 0
) -> dict[str, Any]:
    """Run every stage for ``preset``; returns a summary with wall times per stage."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    splits = prepare_splits(preset, paths.data_dir)
    tokenizer = ensure_tokenizer(
        preset, splits, paths.runs_dir / preset.name / "tokenizer.json", ctx
    )
    timings["data+tokenizer_s"] = time.perf_counter() - started

    bundle = paths.out_dir / STANDARD_GENERATOR
    stage_start = time.perf_counter()
    if existing_bundle(bundle, preset):
        logger.info("%s exists and verifies; skipping its training", bundle)
    else:
        train_mle_generator(
            preset=preset,
            tokenizer=tokenizer,
            train_examples=splits.train,
            val_examples=_val_subset(preset, splits),
            out_dir=bundle,
            name=STANDARD_GENERATOR,
            run_dir=paths.run_dir(preset, STANDARD_GENERATOR),
            dist_ctx=ctx,
            data_desc=f"{paths.data_dir} (official split, max_context_turns={preset.inputs.max_context_turns})",
            resume=resume,
            seed=seed,
        )
    barrier(ctx)
    timings["generator-standard_s"] = time.perf_counter() - stage_start

    summary: dict[str, Any] = {
        "preset": preset.name,
        "bundles": [str(bundle)],
        "data": splits.stats,
    }
    if ctx.is_main:
        stage_start = time.perf_counter()
        eval_json = paths.run_dir(preset, STANDARD_GENERATOR) / "eval-test.json"
        result = evaluate_bundle(bundle, splits, preset, eval_json, device=str(ctx.device))
        timings["evaluate_s"] = time.perf_counter() - stage_start
        summary["evaluation"] = {"perplexity": result["perplexity"], **result["decodings"]}
    timings["total_s"] = time.perf_counter() - started
    summary["timings"] = timings
    return summary


def _val_subset(preset: Preset, splits: DialogueSplits) -> list[Any]:
    n = preset.generator.val_examples
    return splits.validation[:n] if n else splits.validation

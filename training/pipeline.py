"""``python -m training build``: data -> tokenizer -> standard generator -> safety classifier
(DiaSafety, skipped when absent) -> negative teacher (on D_N) -> ND student -> evaluation; resumable.

Each stage leaves a file behind (tokenizer.json, a verified bundle, an evaluation JSON); a rerun
skips the stages whose outputs are already there and resumes an interrupted training stage from
its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from models.bundle import BundleError, update_metrics, verify_bundle
from models.generator import GenerativeResponder
from models.tokenizer import DialogueTokenizer
from training.data import DialogueSplits, load_splits, training_response_token_counts
from training.distributed import DistContext, barrier
from training.evaluate import STANDARD_DECODINGS, evaluate_generator, markdown_report
from training.g2r import build_retriever
from training.generator import train_mle_generator
from training.nd import NegativeSet, negative_set, train_nd_student
from training.presets import Preset
from training.safety_classifier import SAFETY_CLASSIFIER
from training.safety_classifier import build_stage as build_safety_classifier
from training.selection import SelectionRule, select_generator, write_serving

logger = logging.getLogger(__name__)

STANDARD_GENERATOR = "generator-standard"
NEGATIVE_TEACHER = "generator-negative-teacher"
ND_STUDENT = "generator-nd"
NT_GENERATOR = "generator-nt"
G2R_RETRIEVER = "retriever-g2r"


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
    """Evaluate a generator bundle on the test split, record it in the manifest and on disk;
    an evaluation of the same bundle (same id) on disk is reused, not redone."""
    bundle_id = verify_bundle(bundle_dir).bundle_id
    if out_json.exists():
        try:
            previous = json.loads(out_json.read_text())
        except ValueError:
            previous = {}
        if previous.get("model") == bundle_id and previous.get("preset") == preset.name:
            logger.info("%s: evaluated before (%s); not redone", bundle_dir.name, out_json)
            return dict(previous)
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
    data_desc = (
        f"{paths.data_dir} (official split, max_context_turns={preset.inputs.max_context_turns})"
    )
    common: dict[str, Any] = {
        "preset": preset,
        "tokenizer": tokenizer,
        "val_examples": val_subset(preset, splits),
        "dist_ctx": ctx,
        "data_desc": data_desc,
        "resume": resume,
        "seed": seed,
    }

    def stage(name: str, train: Callable[..., Any], **kwargs: Any) -> Path:
        bundle = paths.out_dir / name
        stage_start = time.perf_counter()
        if existing_bundle(bundle, preset):
            logger.info("%s exists and verifies; skipping its training", bundle)
        else:
            train(
                out_dir=bundle, name=name, run_dir=paths.run_dir(preset, name), **common, **kwargs
            )
        barrier(ctx)
        timings[f"{name}_s"] = time.perf_counter() - stage_start
        return bundle

    standard = stage(STANDARD_GENERATOR, train_mle_generator, train_examples=splits.train)
    # The service's output filter: cheap, and warm-started from the standard generator's encoder.
    safety = paths.out_dir / SAFETY_CLASSIFIER
    stage_start = time.perf_counter()
    if existing_bundle(safety, preset):
        logger.info("%s exists and verifies; skipping its training", safety)
    elif ctx.is_main:
        build_safety_classifier(
            preset.name,
            paths.data_dir,
            safety,
            base=standard,
            report=paths.run_dir(preset, SAFETY_CLASSIFIER) / "metrics",
            seed=seed,
        )
    barrier(ctx)
    timings[f"{SAFETY_CLASSIFIER}_s"] = time.perf_counter() - stage_start
    dn = negative_set(
        splits.train, preset.nd.negative_fraction, seed=seed, entropy=preset.nd.entropy
    )
    if ctx.is_main:
        write_negative_set_report(
            dn, len(splits.train), paths.runs_dir / preset.name / "negative_set.json"
        )
    teacher = stage(
        NEGATIVE_TEACHER,
        train_mle_generator,
        train_examples=dn.examples,
        max_steps=preset.nd.teacher_steps or None,
        init_from=standard if preset.nd.teacher_init == "standard" else None,
    )
    student = stage(
        ND_STUDENT,
        train_nd_student,
        teacher_bundle=teacher,
        train_examples=splits.train,
        init_from=standard if preset.nd.student_init == "standard" else None,
        max_steps=preset.nd.student_steps or None,
    )

    candidates = [standard, student]
    if preset.nt_steps:
        candidates.append(
            stage(
                NT_GENERATOR,
                _train_nt,
                base_bundle=standard,
                train_examples=splits.train,
                max_steps=preset.nt_steps,
            )
        )

    # The served generator: the least generic of those that model the validation split about as
    # well as the best (training/selection.py). It is also the G2R teacher.
    stage_start = time.perf_counter()
    if ctx.is_main:
        select_served_generator(candidates, splits, preset, paths, device=str(ctx.device))
    barrier(ctx)
    selection = json.loads(selection_file(paths, preset).read_text())  # rank 0's choice, all ranks
    served = paths.out_dir / selection["chosen"]
    timings["select_generator_s"] = time.perf_counter() - stage_start

    retriever = paths.out_dir / G2R_RETRIEVER
    stage_start = time.perf_counter()
    # The retriever may read more turns than the generators (its own InputConfig): then its
    # pairs are loaded, deduplicated and de-leaked at its context length.
    retriever_splits = splits
    if (
        preset.retriever is not None
        and preset.retriever.inputs.max_context_turns != preset.inputs.max_context_turns
    ):
        retriever_splits = prepare_splits(
            replace(preset, inputs=preset.retriever.inputs), paths.data_dir
        )
    if existing_bundle(retriever, preset):
        logger.info("%s exists and verifies; skipping G2R", retriever)
    elif preset.retriever is not None:
        build_retriever(
            method=preset.retriever.method,
            preset=preset.retriever,
            splits=retriever_splits,
            tokenizer=tokenizer,
            out_dir=retriever,
            name=G2R_RETRIEVER,
            run_dir=paths.run_dir(preset, G2R_RETRIEVER),
            dist_ctx=ctx,
            data_desc=data_desc,
            augmentation_dir=paths.run_dir(preset, f"g2r-augment-{served.name}"),
            teacher=served,
            resume=resume,
            seed=seed,
        )
    barrier(ctx)
    timings[f"{G2R_RETRIEVER}_s"] = time.perf_counter() - stage_start
    if ctx.is_main:
        write_serving(
            paths.out_dir,
            served.name,
            G2R_RETRIEVER if retriever.is_dir() else None,
            selection,
        )

    summary: dict[str, Any] = {
        "preset": preset.name,
        "bundles": [str(b) for b in (standard, teacher, student, retriever)]
        + ([str(safety)] if safety.is_dir() else []),
        "data": splits.stats,
        "negative_set": {"pairs": len(dn.examples), "threshold": dn.threshold},
        "served_generator": served.name,
    }
    if ctx.is_main:
        summary["evaluation"] = {}
        for bundle in candidates:
            stage_start = time.perf_counter()
            eval_json = paths.run_dir(preset, bundle.name) / "eval-test.json"
            result = evaluate_bundle(bundle, splits, preset, eval_json, device=str(ctx.device))
            timings[f"evaluate_{bundle.name}_s"] = time.perf_counter() - stage_start
            summary["evaluation"][bundle.name] = {
                "perplexity": result["perplexity"],
                **result["decodings"],
            }
    timings["total_s"] = time.perf_counter() - started
    summary["timings"] = timings
    return summary


def _train_nt(*, tokenizer: DialogueTokenizer, **kwargs: Any) -> Any:
    """``build``'s NT stage: He & Glass's fine-tune of the standard model (its own tokenizer)."""
    from training.baselines import train_nt_generator

    del tokenizer  # the base bundle carries it
    return train_nt_generator(**kwargs)


def selection_file(paths: BuildPaths, preset: Preset) -> Path:
    """Where ``build`` records which generator it serves and why."""
    return paths.run_dir(preset, "selection") / "selection.json"


def select_served_generator(
    bundles: list[Path], splits: DialogueSplits, preset: Preset, paths: BuildPaths, device: str
) -> dict[str, Any]:
    """Evaluate each generator on the validation split (perplexity and greedy replies) and pick
    the one to serve by :func:`training.selection.select_generator`; the record of why is kept
    in ``runs/<preset>/selection/selection.json`` (and reused on a rerun with the same bundles)."""
    out = selection_file(paths, preset)
    ids = {b.name: verify_bundle(b).bundle_id for b in bundles}
    if out.exists():
        previous = json.loads(out.read_text())
        if previous.get("bundle_ids") == ids:
            logger.info("served generator: %s (chosen before, %s)", previous["chosen"], out)
            return dict(previous)
    n = preset.eval_examples
    val = splits.validation[:n] if n else splits.validation
    counts = training_response_token_counts(splits.train)
    evaluations = {}
    for bundle in bundles:
        responder = GenerativeResponder.load(bundle, device=device)
        result = evaluate_generator(
            responder, val, counts, decodings={"greedy": STANDARD_DECODINGS["greedy"]}, n_samples=0
        )
        evaluations[bundle.name] = {"perplexity": result["perplexity"], **result["decodings"]}
    chosen, record = select_generator(evaluations, SelectionRule())
    record.update(split="validation", pairs=len(val), bundle_ids=ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    logger.info("served generator: %s (%s)", chosen, record["criterion"])
    return record


def write_negative_set_report(dn: NegativeSet, n_train: int, path: Path) -> None:
    """D_N's size, cut-off and most generic responses, for the ND report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "train_pairs": n_train,
        "negative_pairs": len(dn.examples),
        "entropy_threshold": dn.threshold,
        "top20_share_in_dn": dn.top20_share_in_dn,
        "top20_share_in_d": dn.top20_share_in_d,
        "top_responses": [
            {"response": r, "source_entropy": h, "pairs_in_dn": n} for r, h, n in dn.top_responses
        ],
        "entropy": dn.entropy.describe(),
        "stats": dn.stats.to_dict() if dn.stats is not None else None,
    }
    path.write_text(json.dumps(report, indent=2))


def val_subset(preset: Preset, splits: DialogueSplits) -> list[Any]:
    n = preset.generator.val_examples
    return splits.validation[:n] if n else splits.validation

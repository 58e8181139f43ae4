"""Scoring generator bundles for ``build``: on the test split for the reports (recorded in each
manifest, reused while the bundle is unchanged) and on the validation split to choose the served
generator (training/pipeline/selection.py holds the rule; the record of the choice is cached)."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from models.bundle import BundleError, read_serving, update_metrics, verify_bundle
from models.generator import GenerativeResponder
from training.config import Preset
from training.core.data import DialogueSplits, sample_examples, training_response_token_counts
from training.eval.generation import STANDARD_DECODINGS, evaluate_generator, markdown_report
from training.pipeline.inputs import BuildPaths
from training.pipeline.selection import SelectionRule, select_generator

logger = logging.getLogger(__name__)


def existing_bundle(path: Path, preset: Preset) -> bool:
    """True when ``path`` holds a valid bundle built with ``preset`` (so the stage can be skipped)."""
    try:
        manifest = verify_bundle(path)
    except BundleError:
        return False
    return bool(manifest.training.get("preset") == preset.name)


def existing_evaluation(bundle_dir: Path, preset: Preset, out_json: Path) -> dict[str, Any] | None:
    """The test evaluation ``build`` already made of this bundle: ``out_json`` when it names the
    same bundle id and preset, else the figures recorded in the bundle's manifest (they survive a
    deleted runs folder); None when the bundle has not been evaluated."""
    manifest = verify_bundle(bundle_dir)
    if out_json.exists():
        try:
            previous = json.loads(out_json.read_text())
        except ValueError:
            previous = {}
        if previous.get("model") == manifest.bundle_id and previous.get("preset") == preset.name:
            return dict(previous)
    metrics = manifest.metrics
    if "test_perplexity" not in metrics or manifest.training.get("preset") != preset.name:
        return None
    decodings: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        for decoding in STANDARD_DECODINGS:
            prefix = f"test_{decoding}_"
            if key.startswith(prefix):
                decodings.setdefault(decoding, {})[key[len(prefix) :]] = value
    return {
        "model": manifest.bundle_id,
        "preset": preset.name,
        "perplexity": metrics["test_perplexity"],
        "decodings": decodings,
        "source": f"{bundle_dir / 'manifest.json'} (metrics)",
    }


def evaluate_bundle(
    bundle_dir: Path,
    splits: DialogueSplits,
    preset: Preset,
    out_json: Path,
    device: str = "cpu",
    *,
    redo: bool = False,
) -> dict[str, Any]:
    """Evaluate a generator bundle on the test split, record it in the manifest and on disk;
    an evaluation of the same bundle (same id) on disk is reused, not redone, unless ``redo``."""
    if not redo:
        previous = existing_evaluation(bundle_dir, preset, out_json)
        if previous is not None:
            logger.info("%s: evaluated before; not redone", bundle_dir.name)
            return previous
    responder = GenerativeResponder.load(bundle_dir, device=device)
    test = sample_examples(splits.test, preset.eval_examples)  # drawn across dialogues
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


def selection_file(paths: BuildPaths, preset: Preset) -> Path:
    """Where ``build`` records which generator it serves and why."""
    return paths.run_dir(preset, "selection") / "selection.json"


def cached_selection(
    paths: BuildPaths, preset: Preset, bundles: list[Path]
) -> dict[str, Any] | None:
    """The served-generator choice made before for exactly these bundles (same ids): from
    ``runs/<preset>/selection/selection.json``, else from the ``why`` of ``serving.json`` beside
    the bundles (it survives a deleted runs folder); None when there is none."""
    try:
        ids = {b.name: verify_bundle(b).bundle_id for b in bundles}
    except BundleError:
        return None
    records: list[Any] = []
    with contextlib.suppress(OSError, ValueError):
        records.append(json.loads(selection_file(paths, preset).read_text()))
    serving = read_serving(paths.out_dir)
    if serving is not None:
        records.append(serving.get("why"))
    for record in records:
        if isinstance(record, dict) and record.get("bundle_ids") == ids and "chosen" in record:
            return record
    return None


def select_served_generator(
    bundles: list[Path],
    splits: DialogueSplits | None,
    preset: Preset,
    paths: BuildPaths,
    device: str,
    *,
    redo: bool = False,
) -> dict[str, Any]:
    """Evaluate each generator on the validation split (perplexity and greedy replies) and pick
    the one to serve by :func:`training.pipeline.selection.select_generator`; the record of why is kept
    in ``runs/<preset>/selection/selection.json`` (and reused on a rerun with the same bundles,
    unless ``redo``)."""
    out = selection_file(paths, preset)
    previous = None if redo else cached_selection(paths, preset, bundles)
    if previous is not None:
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(previous, indent=2))
        logger.info("served generator: %s (chosen before, %s)", previous["chosen"], out)
        return dict(previous)
    if splits is None:
        raise ValueError("choosing the served generator needs the corpus")
    ids = {b.name: verify_bundle(b).bundle_id for b in bundles}
    n = preset.eval_examples
    val = sample_examples(splits.validation, n)  # drawn across dialogues, not the first n
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

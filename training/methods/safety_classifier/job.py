"""Training the DiaSafety safety classifier (Sun et al., Findings of ACL 2022) and its report.

Input is the (context, response) pair, label Unsafe = positive. Procedure:

1. DiaSafety train is split, stratified by (category, label), into a fitting part and a
   ``threshold_holdout`` share held out; DiaSafety val is never used for any choice.
2. Each architecture (:mod:`models.safety`: ``cross-encoder``, warm-started from a generator's
   encoder when one of the same shape is given; ``bag``, fastText-style) is fitted with AdamW and
   binary cross-entropy; after every epoch the held-out F1 at its best threshold picks the epoch
   whose weights are kept.
3. The decision threshold is the one maximising F1 on the held-out part; with
   ``max_benign_flag_rate`` it is the best one among those that flag at most that share of
   ``benign_threshold_pairs`` held-out DailyDialog train pairs (ordinary traffic, the false
   refusals a user sees). With ``both`` architectures, the higher held-out F1 picks the bundle.
4. Val is scored once at the end: accuracy, precision, recall, F1 (and per DiaSafety category)
   at the chosen threshold, plus ROC AUC; and the share of ordinary DailyDialog validation replies
   flagged (a false-positive rate on the benign traffic the service mostly sees).

DiaSafety's contexts were all selected as risky, so with ``benign_pairs`` DailyDialog train pairs
are added to the fit set as Safe: without them the classifier flags about half of ordinary replies.

The classifier judges only contexts it can read (:func:`models.safety.readable_turn`): the words
it knows are those seen ``min_word_count`` times in the fit set (shipped as ``words.txt``), and a
context it cannot read is judged as empty, in training as in serving. So that the model has seen
empty contexts, ``reply_only_share`` of the fit examples are added again with an empty context:
every Safe one may be picked (a reply that is safe in context is safe alone) and the Unsafe ones of
``reply_only_unsafe_categories``, where the harm is in the reply itself (offending the user,
unauthorised medical advice); agreeing with toxicity or ignoring a risk is unsafe only in context.

Runs take minutes on one CPU thread, so there is no checkpointing: an interrupted run restarts,
and the pipeline skips the stage once the bundle verifies.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from models.bundle import load_state_dict, verify_bundle
from models.safety import (
    Architecture,
    Blocklist,
    known_words,
)
from models.tokenizer import DialogueTokenizer
from training.core.data import DatasetNotFoundError
from training.core.safety_data import SafetyExample, load_diasafety
from training.eval.classification import evaluate_split
from training.methods.safety_classifier.config import (
    ArchitectureChoice,
    SafetyPreset,
)
from training.methods.safety_classifier.data import (
    find_blocklist,
    find_dailydialog,
    find_diasafety,
    load_benign_pairs,
    reply_only_examples,
    stratified_holdout,
)
from training.methods.safety_classifier.fit import FitResult, fit_classifier
from training.methods.safety_classifier.report import write_report

logger = logging.getLogger(__name__)

SAFETY_CLASSIFIER = "safety-classifier"


def base_generator(base: Path | None) -> tuple[DialogueTokenizer | None, dict[str, Any] | None]:
    """The tokenizer and weights of a generator bundle to warm-start from (None, None without)."""
    if base is None:
        return None, None
    manifest = verify_bundle(base)
    if manifest.kind != "generator":
        raise ValueError(f"--base {base} is a {manifest.kind} bundle, not a generator")
    tokenizer = DialogueTokenizer.from_file(base / "tokenizer.json")
    return tokenizer, load_state_dict(base, manifest)


def train_safety_classifier(
    preset: SafetyPreset,
    data_dir: Path,
    out_dir: Path,
    *,
    name: str = SAFETY_CLASSIFIER,
    architecture: ArchitectureChoice | None = None,
    base: Path | None = None,
    blocklist: Path | None = None,
    benign_pairs: int | None = None,
    seed: int = 0,
    run_dir: Path | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Fit the architecture(s), write the chosen one as a ``classifier`` bundle at ``out_dir``
    and return the report: every fitted architecture with its held-out and val metrics.
    ``benign_pairs`` overrides the preset's count of DailyDialog pairs added as Safe. With
    ``run_dir`` each architecture's fit checkpoints in ``run_dir/<architecture>`` and, with
    ``resume``, an interrupted one continues from its last epoch."""
    benign_pairs = preset.benign_pairs if benign_pairs is None else benign_pairs
    started = time.perf_counter()
    root = find_diasafety(data_dir)
    train_all = load_diasafety(root, "train")
    val = load_diasafety(root, "val")
    if preset.max_train_examples:
        # A seeded subset, so a small run still sees every category and both labels.
        train_all = random.Random(seed).sample(
            train_all, min(preset.max_train_examples, len(train_all))
        )
    fit_set, holdout = stratified_holdout(train_all, preset.threshold_holdout, seed)
    benign_fit: list[SafetyExample] = []
    benign_eval: list[SafetyExample] = []
    benign_threshold: list[SafetyExample] = []
    n_threshold = preset.benign_threshold_pairs if preset.max_benign_flag_rate > 0 else 0
    wants_dailydialog = preset.benign_eval_pairs or benign_pairs or n_threshold
    dailydialog = find_dailydialog(data_dir) if wants_dailydialog else None
    if dailydialog is not None:
        benign_fit, benign_eval, benign_threshold = load_benign_pairs(
            dailydialog, benign_pairs, preset.benign_eval_pairs, seed, n_threshold
        )
    elif benign_pairs or n_threshold:
        logger.warning("no DailyDialog near %s: fitting on DiaSafety alone", data_dir)
    words = (
        known_words(
            (t for e in fit_set + benign_fit for t in (e.context, e.response)),
            preset.min_word_count,
        )
        if preset.min_word_count > 0
        else None
    )
    reply_only = reply_only_examples(
        fit_set + benign_fit, preset.reply_only_share, preset.reply_only_unsafe_categories, seed
    )
    tokenizer, base_state = base_generator(base)
    if tokenizer is None:
        texts = list(dict.fromkeys(t for e in fit_set for t in (e.context, e.response)))
        tokenizer = DialogueTokenizer.train(texts, preset.vocab_size)
    choice = architecture or preset.architecture
    architectures: list[Architecture] = ["cross-encoder", "bag"] if choice == "both" else [choice]
    results = []
    for arch in architectures:
        res = fit_classifier(
            arch,
            preset.fit_config(arch),
            tokenizer,
            fit_set + benign_fit + reply_only,
            holdout,
            base_state=base_state if arch == "cross-encoder" else None,
            seed=seed,
            words=words,
            min_known_share=preset.min_known_share,
            benign_holdout=benign_threshold,
            max_benign_flag_rate=preset.max_benign_flag_rate,
            run_dir=run_dir / arch if run_dir is not None else None,
            resume=resume,
        )
        # Val is scored for the report only; nothing is chosen with it.
        res.val = evaluate_split(res.classifier, val, res.classifier.threshold)
        if benign_eval:
            flagged = res.classifier.is_unsafe(
                [e.context for e in benign_eval], [e.response for e in benign_eval]
            )
            res.val["benign_flag_rate"] = sum(flagged) / len(flagged)
        results.append(res)
    chosen = max(results, key=lambda r: r.holdout["f1"])
    if blocklist is not None:
        chosen.classifier.blocklist = Blocklist.from_file(blocklist)
    report: dict[str, Any] = {
        "preset": preset.name,
        "data": str(root),
        "seed": seed,
        "base": str(base) if base else None,
        "blocklist": str(blocklist) if blocklist else None,
        "split": {
            "train_fit": len(fit_set),
            "benign_fit": len(benign_fit),
            "benign_eval": len(benign_eval),
            "benign_data": str(dailydialog) if dailydialog else None,
            "threshold_holdout": len(holdout),
            "val": len(val),
            "holdout_fraction": preset.threshold_holdout,
        },
        "calibration": {
            "benign_threshold_pairs": len(benign_threshold),
            "max_benign_flag_rate": preset.max_benign_flag_rate if benign_threshold else 0.0,
        },
        "reading": {
            "known_words": len(words) if words is not None else None,
            "min_word_count": preset.min_word_count,
            "min_known_share": preset.min_known_share,
            "reply_only_examples": len(reply_only),
            "reply_only_unsafe_categories": list(preset.reply_only_unsafe_categories),
            # Val contexts the classifier cannot read, so judged as empty.
            "val_contexts_unread": sum(
                not chosen.classifier.readable_context(e.context) for e in val
            ),
        },
        "selection": "architecture and threshold chosen by F1 on the held-out part of train"
        + (
            f", the threshold among those flagging at most {preset.max_benign_flag_rate:.0%} "
            f"of {len(benign_threshold)} held-out DailyDialog train pairs"
            if benign_threshold
            else ""
        )
        + "; val scored once, never used for a choice",
        "chosen": chosen.architecture,
        "threshold": chosen.classifier.threshold,
        "architectures": {r.architecture: _result_dict(r, preset) for r in results},
        "torch_threads": torch.get_num_threads(),
    }
    assert chosen.val is not None
    metrics = {
        "val_accuracy": chosen.val["accuracy"],
        "val_precision": chosen.val["precision"],
        "val_recall": chosen.val["recall"],
        "val_f1": chosen.val["f1"],
        "val_roc_auc": chosen.val["roc_auc"],
        "benign_flag_rate": chosen.val.get("benign_flag_rate"),
        "holdout_f1": chosen.holdout["f1"],
        "threshold": chosen.classifier.threshold,
    }
    training = {
        "data": str(root),
        "preset": preset.name,
        "method": chosen.architecture,
        "steps": chosen.steps,
        "seed": seed,
        "base": str(base) if base else None,
        "train_pairs": len(fit_set),
        "benign_pairs": len(benign_fit),
        "reply_only_pairs": len(reply_only),
        "benign_threshold_pairs": len(benign_threshold),
        "max_benign_flag_rate": preset.max_benign_flag_rate if benign_threshold else 0.0,
        "holdout_pairs": len(holdout),
        "wall_time_s": round(chosen.wall_time_s, 1),
    }
    manifest = chosen.classifier.save(out_dir, name=name, training=training, metrics=metrics)
    report["bundle"] = {"path": str(out_dir), "id": manifest.bundle_id}
    report["total_wall_time_s"] = time.perf_counter() - started
    return report


def _result_dict(r: FitResult, preset: SafetyPreset) -> dict[str, Any]:
    fit = preset.fit_config(r.architecture)
    return {
        "model": r.classifier.cfg.to_dict(),
        "parameters": r.parameters,
        "fit": {
            "epochs": fit.epochs,
            "batch_size": fit.batch_size,
            "lr": fit.lr,
            "weight_decay": fit.weight_decay,
            "max_seconds": fit.max_seconds,
        },
        "warm_start": r.warm_start,
        "steps": r.steps,
        "best_epoch": r.best_epoch,
        "stop_reason": r.stop_reason,
        "wall_time_s": r.wall_time_s,
        "threshold": r.classifier.threshold,
        "history": r.history,
        "holdout": r.holdout,
        "val": r.val,
    }


def build_stage(
    preset: SafetyPreset,
    data_dir: Path,
    out_dir: Path,
    *,
    base: Path | None,
    report: Path | None = None,
    seed: int = 0,
    run_dir: Path | None = None,
    resume: bool = True,
) -> dict[str, Any] | None:
    """The pipeline's safety-classifier stage (the preset's architecture, the generator's
    tokenizer; ``report`` gets ``.json`` and ``.md``; checkpoints in ``run_dir``); None, with a
    warning, without DiaSafety."""
    try:
        find_diasafety(data_dir)
    except DatasetNotFoundError as exc:
        logger.warning("skipping the safety classifier: %s", exc)
        return None
    result = train_safety_classifier(
        preset,
        data_dir,
        out_dir,
        base=base,
        blocklist=find_blocklist(data_dir),
        seed=seed,
        run_dir=run_dir,
        resume=resume,
    )
    if report is not None:
        write_report(result, report)
    return result

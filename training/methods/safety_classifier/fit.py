"""Fitting one safety-classifier architecture (cross-encoder or bag of words) on DiaSafety with
the project's one training loop, and the result it reports."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.safety import (
    MIN_KNOWN_SHARE,
    Architecture,
    CrossEncoderClassifier,
    SafetyClassifier,
    build_classifier_model,
)
from models.tokenizer import DialogueTokenizer
from training.core.run import single_process
from training.core.safety_data import SafetyExample
from training.core.trainer import LOG_FILE, TrainConfig, Trainer, read_log
from training.eval.classification import capped_f1_threshold, evaluate_split
from training.methods.safety_classifier.config import FitConfig

logger = logging.getLogger(__name__)

# --- fitting ----------------------------------------------------------------------------------


@dataclass
class FitResult:
    """One fitted architecture: the classifier (threshold set), where it came from, how it did."""

    classifier: SafetyClassifier
    architecture: Architecture
    holdout: dict[str, Any]
    val: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    best_epoch: int = 0
    wall_time_s: float = 0.0
    stop_reason: str = "epochs"
    warm_start: str | None = None
    parameters: int = 0


def fit_classifier(
    architecture: Architecture,
    fit: FitConfig,
    tokenizer: DialogueTokenizer,
    train: Sequence[SafetyExample],
    holdout: Sequence[SafetyExample],
    *,
    base_state: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    words: Sequence[str] | None = None,
    min_known_share: float = MIN_KNOWN_SHARE,
    benign_holdout: Sequence[SafetyExample] = (),
    max_benign_flag_rate: float = 0.0,
    progress: bool = True,
    run_dir: Path | None = None,
    resume: bool = True,
) -> FitResult:
    """Fit one architecture on ``train``, keep the epoch with the best held-out F1, and set the
    threshold that maximises held-out F1 (among those that flag at most
    ``max_benign_flag_rate`` of ``benign_holdout``). With ``words`` the classifier reads contexts
    by the readability rule, in fitting as afterwards.

    The loop is the project's one :class:`~training.core.trainer.Trainer`: binary cross-entropy
    as the objective, AdamW with a linear warm-up and decay, a validation (held-out F1, as
    ``val_loss = 1 - F1``) after every epoch. With ``run_dir`` an interrupted fit resumes from
    its last epoch's checkpoint; without one it runs in a temporary folder."""
    with contextlib.ExitStack() as stack:
        if run_dir is None:
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="safety-fit-")))
            resume = False
        return _fit(
            architecture,
            fit,
            tokenizer,
            train,
            holdout,
            base_state=base_state,
            seed=seed,
            words=words,
            min_known_share=min_known_share,
            benign_holdout=benign_holdout,
            max_benign_flag_rate=max_benign_flag_rate,
            progress=progress,
            run_dir=run_dir,
            resume=resume,
        )


def _fit(
    architecture: Architecture,
    fit: FitConfig,
    tokenizer: DialogueTokenizer,
    train: Sequence[SafetyExample],
    holdout: Sequence[SafetyExample],
    *,
    base_state: dict[str, torch.Tensor] | None,
    seed: int,
    words: Sequence[str] | None,
    min_known_share: float,
    benign_holdout: Sequence[SafetyExample],
    max_benign_flag_rate: float,
    progress: bool,
    run_dir: Path,
    resume: bool,
) -> FitResult:
    torch.manual_seed(seed)
    cfg = replace(fit.model, vocab_size=tokenizer.vocab_size, sep_id=tokenizer.sep_id)
    model = build_classifier_model(cfg)
    warm_start = None
    if base_state is not None and isinstance(model, CrossEncoderClassifier):
        try:
            copied = model.init_from_generator(base_state)
            warm_start = f"{len(copied)} tensors from the generator's encoder"
        except ValueError as exc:
            logger.warning("no warm start for the cross-encoder: %s", exc)
    classifier = SafetyClassifier(
        model, tokenizer, cfg, words=words, min_known_share=min_known_share
    )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("fitting %s safety classifier: %d parameters, %s", architecture, n_params, cfg)

    ids = classifier.encode_ids([e.context for e in train], [e.response for e in train])
    labels = torch.tensor([float(e.unsafe) for e in train])

    def choose_threshold() -> tuple[float, float]:
        probs = classifier.unsafe_probability(
            [e.context for e in holdout], [e.response for e in holdout]
        )
        benign = (
            classifier.unsafe_probability(
                [e.context for e in benign_holdout], [e.response for e in benign_holdout]
            )
            if benign_holdout and max_benign_flag_rate > 0
            else []
        )
        return capped_f1_threshold(probs, [e.unsafe for e in holdout], benign, max_benign_flag_rate)

    def make_epoch(epoch: int) -> list[list[int]]:
        order = list(range(len(train)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        return [order[i : i + fit.batch_size] for i in range(0, len(order), fit.batch_size)]

    def bce(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        tokens, target = batch
        return F.binary_cross_entropy_with_logits(model(tokens).float(), target), {}

    def evaluate(model: nn.Module) -> dict[str, float]:
        threshold, f1 = choose_threshold()
        return {"val_loss": 1.0 - f1, "holdout_f1": f1, "holdout_threshold": threshold}

    steps_per_epoch = math.ceil(len(train) / fit.batch_size)
    total = steps_per_epoch * fit.epochs
    config = TrainConfig(
        max_steps=total,
        batch_size=fit.batch_size,
        optimizer="adamw",
        weight_decay=fit.weight_decay,
        lr_schedule="linear",
        lr=fit.lr,
        warmup_steps=max(1, round(total * fit.warmup_fraction)),
        betas=(0.9, 0.999),  # AdamW's defaults, as the classifier was always fitted
        eps=1e-8,
        clip_norm=1.0,
        eval_every=steps_per_epoch,  # one held-out F1 per epoch
        patience=fit.epochs + 1,  # no early stopping: every epoch runs, the best one is kept
        keep="best",
        log_every=max(1, steps_per_epoch // 10),
        seed=seed,
        amp=False,  # small models; fp32 as it was fitted and calibrated
        progress=progress,
        max_seconds=fit.max_seconds,
    )
    trainer = Trainer(
        model,
        bce,
        config,
        run_dir=run_dir,
        make_epoch=make_epoch,
        collate=lambda rows: (tokenizer.pad([ids[i] for i in rows]), labels[list(rows)]),
        evaluate=evaluate,
        dist_ctx=single_process(),
        run_config={
            "architecture": architecture,
            "train_examples": len(train),
            "holdout_examples": len(holdout),
        },
    )
    state = trainer.fit(resume=resume).state
    trainer.load_best()
    model.eval()
    result = FitResult(classifier, architecture, {}, warm_start=warm_start, parameters=n_params)
    result.history = _epoch_history(read_log(run_dir / LOG_FILE), steps_per_epoch)
    result.steps = state.step
    result.best_epoch = math.ceil(state.best_step / steps_per_epoch)
    result.wall_time_s = state.elapsed_s
    if state.stop_reason.startswith("max_seconds"):
        result.stop_reason = (
            f"{state.stop_reason} in epoch {math.ceil(state.step / steps_per_epoch)}"
        )
    threshold, _ = choose_threshold()
    classifier.threshold = threshold
    result.holdout = evaluate_split(classifier, holdout, threshold)
    if benign_holdout:
        flagged = classifier.is_unsafe(
            [e.context for e in benign_holdout], [e.response for e in benign_holdout]
        )
        result.holdout["benign_flag_rate"] = sum(flagged) / len(flagged)
    return result


def _epoch_history(log: list[dict[str, Any]], steps_per_epoch: int) -> list[dict[str, float]]:
    """One row per validation: its epoch and step, the mean logged training loss since the
    previous one, the held-out F1 and threshold."""
    rows, losses = [], []
    for record in log:
        if record["kind"] == "train":
            losses.append(record["loss"])
        elif record["kind"] == "eval":
            rows.append(
                {
                    "epoch": math.ceil(record["step"] / steps_per_epoch),
                    "step": record["step"],
                    "train_loss": sum(losses) / len(losses) if losses else float("nan"),
                    "holdout_f1": record["holdout_f1"],
                    "holdout_threshold": record["holdout_threshold"],
                }
            )
            losses = []
    return rows

"""Fitting one safety-classifier architecture (cross-encoder or bag of words) on DiaSafety:
the loop, its learning-rate warm-up and the result it reports."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models.safety import (
    MIN_KNOWN_SHARE,
    Architecture,
    CrossEncoderClassifier,
    SafetyClassifier,
    build_classifier_model,
)
from models.tokenizer import DialogueTokenizer
from training.core.safety_data import SafetyExample
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


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` updates, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


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
) -> FitResult:
    """Fit one architecture on ``train``, keep the epoch with the best held-out F1, and set the
    threshold that maximises held-out F1 (among those that flag at most
    ``max_benign_flag_rate`` of ``benign_holdout``). With ``words`` the classifier reads contexts
    by the readability rule, in fitting as afterwards."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
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

    labels = torch.tensor([float(e.unsafe) for e in train])
    steps_per_epoch = math.ceil(len(train) / fit.batch_size)
    total = steps_per_epoch * fit.epochs
    warmup = max(1, round(total * fit.warmup_fraction))
    optimizer = torch.optim.AdamW(model.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total, warmup))

    started = time.perf_counter()
    result = FitResult(classifier, architecture, {}, warm_start=warm_start, parameters=n_params)
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    step = 0
    # One bar over every update of the fit (an epoch of the cross-encoder takes minutes on CPU).
    bar = tqdm(
        total=total, desc=f"safety {architecture}", unit="step", disable=not progress, leave=False
    )
    for epoch in range(1, fit.epochs + 1):
        model.train()
        order = list(range(len(train)))
        rng.shuffle(order)
        running, batches = 0.0, 0
        bar.set_postfix_str(f"epoch {epoch}/{fit.epochs}")
        for start in range(0, len(order), fit.batch_size):
            rows = order[start : start + fit.batch_size]
            batch = tokenizer.pad([ids[i] for i in rows])
            loss = F.binary_cross_entropy_with_logits(model(batch), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            batches += 1
            running += loss.item()
            bar.update(1)
            if fit.max_seconds and time.perf_counter() - started > fit.max_seconds:
                result.stop_reason = f"max_seconds ({fit.max_seconds:g} s) in epoch {epoch}"
                break
        bar.set_postfix_str(f"epoch {epoch}/{fit.epochs}: held-out F1")
        threshold, f1 = choose_threshold()
        record = {
            "epoch": epoch,
            "step": step,
            "train_loss": running / max(1, batches),
            "holdout_f1": f1,
            "holdout_threshold": threshold,
            "elapsed_s": time.perf_counter() - started,
        }
        result.history.append(record)
        logger.info("%s epoch %d: %s", architecture, epoch, record)
        if best is None or f1 > best[0]:
            best = (f1, {k: v.detach().clone() for k, v in model.state_dict().items()})
            result.best_epoch = epoch
        if result.stop_reason != "epochs":
            break
    bar.close()
    assert best is not None
    model.load_state_dict(best[1])
    model.eval()
    result.steps = step
    result.wall_time_s = time.perf_counter() - started
    threshold, _ = choose_threshold()
    classifier.threshold = threshold
    result.holdout = evaluate_split(classifier, holdout, threshold)
    if benign_holdout:
        flagged = classifier.is_unsafe(
            [e.context for e in benign_holdout], [e.response for e in benign_holdout]
        )
        result.holdout["benign_flag_rate"] = sum(flagged) / len(flagged)
    return result

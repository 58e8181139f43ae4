"""FlatGD jobs: the clean and toxic experts, and the FlatGD / Safety_loss fine-tune of a base
generator (Khalatbari et al.; the objective is in :mod:`training.methods.flatgd.objective`).

Experts (FlatGD section 3.2, "two pre-trained language models that are previously fine-tuned to
generate safe and toxic responses"): copies of the base fine-tuned with MLE on the Safe
(p^c) or the Unsafe (p^τ) DiaSafety train pairs, at the constant learning rate where the base's
schedule ended, keeping the weights with the lowest NLL on the same label's DiaSafety val pairs.

Fine-tune settings (:class:`~training.methods.flatgd.config.FlatGDSetting`, the ``flatgd`` section of
each preset in training/config): ``paper`` is Table 5 (lr 5e-6, batch 64, 2 epochs).
``small`` is the same schedule with lr 1e-4: the base here is a 4.7M-parameter model trained at
~1e-3, for which 5e-6 over ~280 Adam steps moves each weight by at most ~1.4e-3 (see the report).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.bundle import Manifest
from models.generator import GenerativeResponder
from models.seq2seq import Seq2SeqTransformer
from training.config import Preset, get_preset
from training.core.data import DialogueExample
from training.core.generator import (
    MLEObjective,
    PairSet,
    corpus_nll,
    fine_tune_overrides,
    fit_and_save,
    save_generator,
)
from training.core.run import RunSpec
from training.core.safety_data import SafetyExample
from training.core.trainer import Trainer
from training.methods.flatgd.config import ExpertSetting, FlatGDSetting
from training.methods.flatgd.objective import (
    FlatGDObjective,
    FlatGDWeights,
    SafetyTuningData,
    squared_gradient_norm,
    trainable_parameters,
)

logger = logging.getLogger(__name__)

EXPERT_KINDS = {"clean": False, "toxic": True}  # kind -> the DiaSafety ``unsafe`` label it learns


def dialogue_pairs(examples: Sequence[SafetyExample]) -> list[DialogueExample]:
    """DiaSafety records as single-turn dialogue pairs (their context is one utterance)."""
    return [DialogueExample((e.context,), e.response) for e in examples]


def base_preset(base: GenerativeResponder, name: str | None = None) -> Preset:
    """The preset that built ``base`` (or ``name``), with the base's input limits and decoding."""
    manifest_preset = base.manifest.training.get("preset") if base.manifest else None
    preset = get_preset(name or manifest_preset or "small")
    return replace(preset, inputs=base.inputs, decoding=base.decoding)


def train_expert(
    run: RunSpec,
    *,
    kind: str,
    base_bundle: Path,
    safety_train: Sequence[SafetyExample],
    safety_val: Sequence[SafetyExample],
    setting: ExpertSetting | None = None,
    max_steps: int | None = None,
) -> Manifest | None:
    """Fine-tune a copy of the base with MLE on the Safe (clean) or Unsafe (toxic) pairs."""
    if kind not in EXPERT_KINDS:
        raise ValueError(f"unknown expert kind {kind!r} (clean | toxic)")
    setting = setting or ExpertSetting()
    label = EXPERT_KINDS[kind]
    train = dialogue_pairs([e for e in safety_train if e.unsafe == label])
    val = dialogue_pairs([e for e in safety_val if e.unsafe == label])
    if not train or not val:
        raise ValueError(
            f"no {kind} pairs in the DiaSafety data ({len(train)} train, {len(val)} val)"
        )
    base = GenerativeResponder.load(base_bundle)
    preset = base_preset(base)
    train_pairs = PairSet.encode(train, base.tokenizer, base.inputs)
    val_pairs = PairSet.encode(val, base.tokenizer, base.inputs)
    per_epoch = math.ceil(len(train_pairs) / setting.batch_size)
    steps = max_steps or setting.epochs * per_epoch
    lr = setting.lr if setting.lr is not None else float(fine_tune_overrides(base, preset)["lr"])
    logger.info(
        "%s expert from %s: %d pairs, lr %.2e, %d steps",
        kind,
        base.bundle_id,
        len(train),
        lr,
        steps,
    )
    return fit_and_save(
        run,
        base.model.train(),
        MLEObjective(base.tokenizer.pad_id),
        preset=preset,
        tokenizer=base.tokenizer,
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        train_overrides={
            "lr_schedule": "constant",
            "lr": lr,
            "keep": "best",
            "max_steps": steps,
            "batch_size": setting.batch_size,
            "eval_every": per_epoch,
            "patience": 2,
        },
        training={
            "method": "mle",
            "expert": kind,
            "base": base.bundle_id,
            "label": "Unsafe" if label else "Safe",
            "lr_schedule": "constant",
            "lr": lr,
            "epochs": setting.epochs,
        },
    )


def safety_probe_pairs(
    safety_val: Sequence[SafetyExample], base: GenerativeResponder, n: int = 256, seed: int = 0
) -> PairSet:
    """A fixed, seeded set of ``n`` DiaSafety val pairs (both labels) for :func:`safety_probe`."""
    return PairSet.encode(
        dialogue_pairs(_seeded_subset(safety_val, n, seed)), base.tokenizer, base.inputs
    )


def safety_probe(objective: FlatGDObjective, model: nn.Module, probe: PairSet) -> dict[str, float]:
    """L_S (eq. 4), its two divergences and ||∇_θ L_S||² (the sharpness that FlatGD's eq. 1 term
    penalises) of ``model`` on the ``probe`` pairs as one batch, in the model's current mode."""
    batch = probe.collate(range(len(probe)), next(model.parameters()).device)
    with torch.enable_grad():
        _, ls = objective.safety_terms(model, batch)
        grad_sq = squared_gradient_norm(ls.loss, trainable_parameters(model), create_graph=False)
    return {
        "safety_loss": float(ls.loss.detach()),
        "js_toxic": float(ls.js_toxic.detach()),
        "js_clean": float(ls.js_clean.detach()),
        "safety_grad_sq": float(grad_sq),
    }


def flatgd_validation_fn(
    objective: FlatGDObjective, lm_val: PairSet, safety_val: PairSet
) -> Callable[[nn.Module], dict[str, float]]:
    """Validation: DailyDialog NLL (``val_loss``) and :func:`safety_probe` on ``safety_val``."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        assert isinstance(model, Seq2SeqTransformer), "validation runs on the unwrapped model"
        total, count = corpus_nll(model, lm_val)
        val = total / max(count, 1)
        probe = safety_probe(objective, model, safety_val)
        return {
            "val_loss": val,
            "val_ppl": float(np.exp(min(val, 50.0))),
            **{f"val_{k}": v for k, v in probe.items()},
        }

    return evaluate


def train_flatgd(
    run: RunSpec,
    *,
    base_bundle: Path,
    clean_bundle: Path,
    toxic_bundle: Path,
    safety_train: Sequence[SafetyExample],
    safety_val: Sequence[SafetyExample],
    lm_train: Sequence[DialogueExample],
    lm_val: Sequence[DialogueExample],
    weights: FlatGDWeights,
    setting: FlatGDSetting,
    max_steps: int | None = None,
) -> Manifest | None:
    """Fine-tune the base with FlatGD eq. 2 (λ > 0) or the Safety_loss baseline (λ = 0)."""
    base = GenerativeResponder.load(base_bundle, device=run.device)
    experts = {}
    for kind, path in (("clean", clean_bundle), ("toxic", toxic_bundle)):
        expert = GenerativeResponder.load(path, device=run.device)
        if expert.tokenizer.to_str() != base.tokenizer.to_str():
            raise ValueError(f"{kind} expert {path} has a different tokenizer than {base_bundle}")
        experts[kind] = expert
    preset = base_preset(base)
    tok = base.tokenizer
    objective = FlatGDObjective(
        experts["clean"].model, experts["toxic"].model, weights, pad_id=tok.pad_id
    )
    data = SafetyTuningData(
        PairSet.encode(dialogue_pairs(safety_train), tok, base.inputs),
        [e.unsafe for e in safety_train],
        PairSet.encode(lm_train, tok, base.inputs) if setting.lm_batch_size else None,
        batch_size=setting.batch_size,
        lm_batch_size=setting.lm_batch_size,
        seed=run.seed,
    )
    steps = max_steps or setting.epochs * data.batches_per_epoch()
    config = replace(
        preset.generator.train,
        max_steps=steps,
        batch_size=setting.batch_size,
        lr_schedule="constant",
        lr=setting.lr,
        keep="last",
        eval_every=setting.eval_every,
        log_every=5,
        seed=run.seed,
    )
    logger.info(
        "%s from %s: %d DiaSafety pairs, lr %.1e, %d steps, %s",
        weights.method,
        base.bundle_id,
        len(safety_train),
        setting.lr,
        steps,
        weights,
    )
    model = base.model.train()
    trainer = Trainer(
        model,
        objective,
        config,
        run_dir=run.run_dir,
        make_epoch=data.make_epoch,
        collate=lambda idx: data.collate(idx, run.device),
        evaluate=flatgd_validation_fn(
            objective,
            PairSet.encode(lm_val, tok, base.inputs),
            safety_probe_pairs(safety_val, base, setting.val_safety_pairs, run.seed),
        ),
        dist_ctx=run.dist_ctx,
        run_config={
            "method": weights.method,
            "base": base.bundle_id,
            "experts": {k: e.bundle_id for k, e in experts.items()},
            "weights": asdict(weights),
            "setting": asdict(setting),
            "safety_pairs": len(safety_train),
        },
    )
    result = trainer.fit(resume=run.resume)
    trainer.load_best()
    if not run.is_main:
        return None
    return save_generator(
        model,
        tok,
        preset,
        result,
        out_dir=run.out_dir,
        name=run.name,
        training=run.facts(
            method=weights.method,
            base=base.bundle_id,
            clean_expert=experts["clean"].bundle_id,
            toxic_expert=experts["toxic"].bundle_id,
            weights=asdict(weights),
            setting=asdict(setting),
            lr_schedule="constant",
            lr=setting.lr,
            safety_pairs=len(safety_train),
            lm_pairs=len(lm_train) if setting.lm_batch_size else 0,
        ),
    )


def _seeded_subset(items: Sequence[Any], n: int, seed: int) -> list[Any]:
    if not n or n >= len(items):
        return list(items)
    picks = np.random.default_rng(seed).choice(len(items), size=n, replace=False)
    return [items[i] for i in sorted(picks.tolist())]

"""``train-generator`` for every method: picks data, tokenizer, teacher or base, and the job."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.bundle import Manifest
from models.generator import GenerativeResponder
from training.core.distributed import DistContext
from training.methods.nd.distill import NDLossConfig, negative_set

# --ablation name -> (loss config, fixed α?) for the ND paper's ablation table.
ND_ABLATIONS: dict[str, tuple[NDLossConfig, bool]] = {
    "none": (NDLossConfig(), False),
    "no-pred": (NDLossConfig(use_pred=False), False),
    "no-hid": (NDLossConfig(use_hid=False), False),
    "no-att": (NDLossConfig(use_att=False), False),
    "fixed-alpha": (NDLossConfig(), True),
    "hard-targets": (NDLossConfig(targets="hard"), False),
    "random-targets": (NDLossConfig(targets="random"), False),
}


def train_generator_command(
    args: argparse.Namespace, preset: object, ctx: DistContext
) -> Manifest | None:
    """Run ``python -m training train-generator`` with parsed ``args``."""
    from training.core.generator import train_mle_generator
    from training.methods.baselines import train_nt_generator, train_ul_generator
    from training.methods.nd.distill import train_nd_student
    from training.pipeline.build import (
        NEGATIVE_TEACHER,
        STANDARD_GENERATOR,
        ensure_tokenizer,
        prepare_splits,
        val_subset,
    )
    from training.presets import Preset

    assert isinstance(preset, Preset)
    splits = prepare_splits(preset, args.data)
    name = args.name or args.out.name
    common = {
        "preset": preset,
        "val_examples": val_subset(preset, splits),
        "out_dir": args.out,
        "name": name,
        "run_dir": args.runs / preset.name / name,
        "dist_ctx": ctx,
        "data_desc": str(args.data),
        "resume": not args.no_resume,
        "seed": args.seed,
    }
    artifacts: Path = args.out.parent
    fraction = args.negative_fraction or preset.nd.negative_fraction
    if args.method == "mle":
        train = splits.train
        if args.subset == "negative":
            train = negative_set(splits.train, fraction, seed=args.seed).examples
        tok_path = args.tokenizer or args.runs / preset.name / "tokenizer.json"
        tokenizer = ensure_tokenizer(preset, splits, tok_path, ctx)
        return train_mle_generator(tokenizer=tokenizer, train_examples=train, **common)
    if args.method == "nd":
        teacher = args.teacher or artifacts / NEGATIVE_TEACHER
        loss, fixed_alpha = ND_ABLATIONS[args.ablation]
        dn = negative_set(splits.train, fraction, seed=args.seed).examples
        return train_nd_student(
            tokenizer=GenerativeResponder.load(teacher).tokenizer,
            teacher_bundle=teacher,
            train_examples=splits.train,
            loss=loss,
            fixed_alpha=fixed_alpha,
            negative_examples=dn,
            max_steps=args.max_steps,
            init_from=args.init_from,
            lam=args.nd_lambda,
            **common,
        )
    base = args.base or artifacts / STANDARD_GENERATOR
    job = train_nt_generator if args.method == "nt" else train_ul_generator
    return job(base_bundle=base, train_examples=splits.train, max_steps=args.max_steps, **common)

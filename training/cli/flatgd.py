"""FlatGD safety commands of ``python -m training`` (Khalatbari et al.; docs/papers.md, "FlatGD"):

train-expert     a clean (Safe) or toxic (Unsafe) expert: the base fine-tuned on DiaSafety train
train-flatgd     FlatGD (eq. 2, --lam > 0) or the Safety_loss baseline (--lam 0) from a base
evaluate-safety  unsafe rate over 5 sampled replies per DiaSafety val context, DailyDialog test
                 perplexity and Div-1/2 of generator bundles, with ratios vs the first one

Each command registers its function with ``set_defaults(run=...)`` (see training/cli/__init__.py).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.cli.common import command_text, distributed, print_manifest, run_spec
from training.config import SHARED_DATA

logger = logging.getLogger(__name__)


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", type=Path, required=True, help="the generator bundle to start from")
    p.add_argument(
        "--safety-data", type=Path, default=SHARED_DATA, help="dir with diasafety/ (or its files)"
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--name", help="bundle name (default: the --out directory name)")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="checkpoints, logs, plots")
    p.add_argument("--no-resume", action="store_true", help="start from scratch")
    p.add_argument("--max-steps", type=int, help="override the step budget")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)


def add_parsers(sub: Any) -> None:
    """Add ``train-expert``, ``train-flatgd`` and ``evaluate-safety`` to a sub-parser set."""
    # Defaults left as None are filled in from training.methods.flatgd.job after parsing (no torch here).
    p = sub.add_parser("train-expert", help="FlatGD clean or toxic expert (MLE on DiaSafety)")
    _run_args(p)
    p.add_argument("--kind", choices=["clean", "toxic"], required=True)
    p.add_argument("--epochs", type=int, help="passes over the label's pairs (default: 3)")
    p.add_argument("--lr", type=float, help="default: where the base's schedule ended")
    p.set_defaults(run=distributed(lambda args, ctx: print_manifest(_train_expert(args, ctx))))

    p = sub.add_parser("train-flatgd", help="FlatGD / Safety_loss fine-tune of a generator")
    _run_args(p)
    p.add_argument("--clean", type=Path, required=True, help="clean expert bundle")
    p.add_argument("--toxic", type=Path, required=True, help="toxic expert bundle")
    p.add_argument(
        "--data",
        type=Path,
        default=SHARED_DATA / "dailydialog",
        help="DailyDialog (L_LM pairs and the validation NLL)",
    )
    p.add_argument(
        "--setting",
        choices=["paper", "small"],
        default="paper",
        help="paper = Table 5 (lr 5e-6); small = lr 1e-4 for the 4.7M-parameter base",
    )
    p.add_argument("--alpha", type=float, help="α of eq. 2, weight of L_LM (Table 5: 1)")
    p.add_argument("--beta", type=float, help="β of eq. 4, toxic JS (Table 5: 2)")
    p.add_argument("--gamma", type=float, help="γ of eq. 4, clean JS (Table 5: 3)")
    p.add_argument("--lam", type=float, help="λ of eqs. 1-2 (default 1); 0 = Safety_loss baseline")
    p.add_argument("--safety-weight", type=float, help="eq. 2's weight of L_S (default 1)")
    p.add_argument("--lr", type=float, help="override the setting's learning rate")
    p.add_argument("--epochs", type=int, help="override the setting's epochs")
    p.add_argument("--batch-size", type=int, help="override the setting's DiaSafety batch")
    p.add_argument("--lm-batch-size", type=int, help="DailyDialog pairs per update (0 = none)")
    p.set_defaults(run=distributed(lambda args, ctx: print_manifest(_train(args, ctx))))

    p = sub.add_parser("evaluate-safety", help="unsafe rate, perplexity and Div-1/2 of bundles")
    p.add_argument(
        "--bundle", action="append", required=True, metavar="[LABEL=]DIR", help="repeatable"
    )
    p.add_argument("--classifier", type=Path, required=True, help="safety classifier bundle")
    p.add_argument("--clean", type=Path, help="clean expert: adds L_S and ||∇L_S||² per bundle")
    p.add_argument("--toxic", type=Path, help="toxic expert (with --clean)")
    p.add_argument("--cache", type=Path, help="reuse/store per-bundle results here (same key)")
    p.add_argument("--safety-data", type=Path, default=SHARED_DATA)
    p.add_argument("--data", type=Path, default=SHARED_DATA / "dailydialog")
    p.add_argument("--samples", type=int, default=5, help="sampled replies per context")
    p.add_argument("--max-contexts", type=int, default=0, help="0 = every DiaSafety val context")
    p.add_argument("--temperature", type=float, help="default: the bundle's")
    p.add_argument("--top-k", type=int, help="default: the bundle's")
    p.add_argument(
        "--top-p",
        type=float,
        default=0.9,
        help="nucleus sampling, as the service samples (default 0.9; 1 = the bundle's plain sampling)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="writes <out>.json and <out>.md")
    p.set_defaults(run=_evaluate)


def _train_expert(args: argparse.Namespace, ctx: Any) -> Any:
    from training.core.safety_data import load_diasafety
    from training.methods.flatgd.config import ExpertSetting
    from training.methods.flatgd.job import train_expert

    return train_expert(
        run_spec(
            args, ctx, runs_subdir="flatgd", data_desc=f"DiaSafety train ({args.safety_data})"
        ),
        kind=args.kind,
        base_bundle=args.base,
        safety_train=load_diasafety(args.safety_data, "train"),
        safety_val=load_diasafety(args.safety_data, "val"),
        setting=replace(ExpertSetting(lr=args.lr), **_given(args, "epochs")),
        max_steps=args.max_steps,
    )


def _train(args: argparse.Namespace, ctx: Any) -> Any:
    from models.bundle import read_manifest
    from training.config import preset_section
    from training.core.data import load_splits
    from training.core.safety_data import load_diasafety
    from training.methods.flatgd.job import train_flatgd
    from training.methods.flatgd.objective import FlatGDWeights

    setting = replace(
        preset_section(args.setting, "flatgd"),
        **_given(args, "lr", "epochs", "batch_size", "lm_batch_size"),
    )
    weights = replace(
        FlatGDWeights(),
        **_given(args, "alpha", "beta", "gamma", "lam", "safety_weight"),
    )
    turns = int(read_manifest(args.base).model_config["inputs"]["max_context_turns"])
    splits = load_splits(args.data, max_context_turns=turns)
    data_desc = f"DiaSafety train ({args.safety_data}) + DailyDialog train ({args.data})"
    return train_flatgd(
        run_spec(args, ctx, runs_subdir="flatgd", data_desc=data_desc),
        base_bundle=args.base,
        clean_bundle=args.clean,
        toxic_bundle=args.toxic,
        safety_train=load_diasafety(args.safety_data, "train"),
        safety_val=load_diasafety(args.safety_data, "val"),
        lm_train=splits.train,
        lm_val=splits.validation[:1000],
        weights=weights,
        setting=setting,
        max_steps=args.max_steps,
    )


def _evaluate(args: argparse.Namespace) -> int:
    from training.eval.safety import run_safety_evaluation

    decoding = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    run_safety_evaluation(
        bundles=[_label_path(spec) for spec in args.bundle],
        classifier_dir=args.classifier,
        safety_data=args.safety_data,
        dailydialog=args.data,
        out=args.out,
        n_samples=args.samples,
        max_contexts=args.max_contexts,
        decoding_overrides={k: v for k, v in decoding.items() if v is not None},
        device=args.device,
        seed=args.seed,
        command=command_text(),
        experts=(args.clean, args.toxic) if args.clean and args.toxic else None,
        cache_dir=args.cache,
    )
    print(args.out.with_suffix(".md").read_text())
    return 0


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options among ``names`` that were given on the command line (not None)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _label_path(spec: str) -> tuple[str, Path]:
    """``LABEL=DIR`` or ``DIR`` (labelled by its directory name)."""
    label, sep, path = spec.partition("=")
    if sep and label and path:
        return label, Path(path)
    return Path(spec).name, Path(spec)

"""Malicious-response commands of ``python -m training`` (He & Glass, ACL 2020):

train-lm            the response language model behind the io- hit types (eq. 8, T_in)
attack              gibbs-enum trigger search over any target list; hit rates as JSON + markdown
attack-table        one before/after table (hit rates, PPL) from several ``attack`` reports
train-malicious-nt  negative training against a target list (Algorithm 1) and its bundle

Each command registers its function with ``set_defaults(run=...)`` (see training/cli/__init__.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.cli.common import add_common, command_text, run_spec
from training.config import SHARED_DATA

logger = logging.getLogger(__name__)


def _search_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("gibbs-enum (defaults: the preset's)")
    g.add_argument("--trigger-len", type=int, help="n, trigger input length in pieces")
    g.add_argument("--candidates", type=int, help="G, tokens tried per slot")
    g.add_argument("--sweeps", type=int, help="T, sweeps over the slots")
    g.add_argument("--restarts", type=int, help="random restarts (best loss wins)")
    g.add_argument("--batch-targets", type=int, help="targets searched together")


def _common(p: argparse.ArgumentParser) -> None:
    add_common(
        p, preset_help="tiny | small | paper (default: small)", inputs=False,
        data_help="DailyDialog (for T_out, PPL)",
    )  # fmt: skip


def add_parsers(sub: Any) -> None:
    """Add ``train-lm``, ``attack`` and ``train-malicious-nt`` to an argparse sub-parser set."""
    p = sub.add_parser("train-lm", help="response LM for io- hit types (base tokenizer)")
    _common(p)
    p.add_argument("--base", type=Path, required=True, help="generator bundle (its tokenizer)")
    p.add_argument("--out", type=Path, default=Path("artifacts/lm-responses"))
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--max-steps", type=int, help="override the preset's steps")
    p.add_argument("--no-resume", action="store_true")
    p.set_defaults(run=_train_lm)

    p = sub.add_parser("attack", help="hit rates of malicious targets (gibbs-enum)")
    _common(p)
    p.add_argument("--bundle", type=Path, required=True, help="generator bundle to attack")
    p.add_argument("--targets", type=Path, required=True, help="target list, one per line")
    p.add_argument("--lm", type=Path, help="response LM bundle (needed for --mode io|both)")
    p.add_argument(
        "--reference",
        type=Path,
        help="bundle whose test log-likelihood sets T_out (default: the attacked bundle); "
        "use the base model to compare before/after negative training at fixed thresholds",
    )
    p.add_argument("--mode", choices=("o", "io", "both"), default="o")
    p.add_argument("--limit", type=int, default=0, help="a seeded sample of N targets (0 = all)")
    p.add_argument("--out", type=Path, required=True, help="report path stem (.json and .md)")
    _search_args(p)
    p.set_defaults(run=_attack)

    p = sub.add_parser(
        "heldout-paraphrases",
        help="write the paraphrases of the train targets that no train list contains",
    )
    p.add_argument("--targets-dir", type=Path, default=SHARED_DATA / "malicious_targets")
    p.add_argument("--out", type=Path, required=True, help="one target per line")
    p.set_defaults(run=_heldout_paraphrases)

    p = sub.add_parser("attack-table", help="table of several attack reports (first = baseline)")
    p.add_argument("--report", type=Path, action="append", required=True, help="NAME=PATH.json")
    p.add_argument("--out", type=Path, required=True, help="markdown path")
    p.set_defaults(run=_attack_table)

    p = sub.add_parser("train-malicious-nt", help="negative training against malicious targets")
    _common(p)
    p.add_argument("--base", type=Path, required=True, help="generator bundle to fine-tune")
    p.add_argument("--targets", type=Path, required=True, help="training target list")
    p.add_argument("--paraphrases", type=Path, help="TSV of paraphrases per target (augment)")
    p.add_argument("--copies", type=int, default=0, help="paraphrase copies per target")
    p.add_argument("--lm", type=Path, help="response LM (criterion io-*)")
    p.add_argument("--criterion", help="hit type that triggers updates (default: preset's)")
    p.add_argument("--iterations", type=int, help="passes over the target list")
    p.add_argument("--lr", type=float, help="fixed learning rate (default: preset's)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), help="default: preset's (adam)")
    p.add_argument("--lambda-pos", type=float, help="weight of the positive MLE update")
    p.add_argument("--max-updates", type=int, help="negative updates per batch of triggers")
    p.add_argument(
        "--fwa-corpus-top",
        type=int,
        help="FWA also spares the N most frequent corpus response words (not in the paper)",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle dir")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--no-resume", action="store_true")
    _search_args(p)
    p.set_defaults(run=_train_nt)


def search_config(args: argparse.Namespace, base: Any) -> Any:
    """The preset's gibbs-enum config with any command-line overrides."""
    overrides = {
        "trigger_len": args.trigger_len,
        "candidates": args.candidates,
        "sweeps": args.sweeps,
        "restarts": args.restarts,
        "batch_targets": args.batch_targets,
    }
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def _seeded_device(args: argparse.Namespace) -> Any:
    """Seeds torch from ``--seed`` and returns the ``--device`` to run on."""
    import torch

    from training.core.distributed import resolve_device

    torch.manual_seed(args.seed)
    return resolve_device(args.device)


def _preset(args: argparse.Namespace) -> Any:
    from training.config import preset_section

    return preset_section(args.preset, "malicious")


def _attack_table(args: argparse.Namespace) -> int:
    text = attack_table([_named_report(r) for r in args.report])
    args.out.write_text(text)
    print(text)
    return 0


def _train_lm(args: argparse.Namespace) -> int:
    from training.config import get_preset
    from training.core.run import single_process
    from training.methods.malicious.lm import train_response_lm
    from training.pipeline.inputs import prepare_splits, val_subset

    _preset(args)  # a name the malicious presets know
    device = _seeded_device(args)
    preset = get_preset(args.preset)
    splits = prepare_splits(preset, args.data)
    manifest = train_response_lm(
        run_spec(
            args, single_process(device), runs_subdir=preset.run_name, data_desc=str(args.data)
        ),
        preset=preset,
        base_bundle=args.base,
        train_examples=splits.train,
        val_examples=val_subset(preset, splits),
        max_steps=args.max_steps,
    )
    if manifest is not None:
        print(f"wrote {args.out} ({manifest.bundle_id}): val ppl {manifest.metrics['val_ppl']:.2f}")
    return 0


def _attack(args: argparse.Namespace) -> int:
    from training.core.safety_data import load_targets
    from training.methods.malicious.attack import SearchMode
    from training.methods.malicious.experiment import (
        attack_report,
        load_attack_context,
        sample_targets,
    )

    cfg = search_config(args, _preset(args).eval_search)
    device = _seeded_device(args)
    targets = sample_targets(load_targets(args.targets), args.limit, args.seed)
    modes: list[SearchMode] = ["o", "io"] if args.mode == "both" else [args.mode]
    ctx = load_attack_context(
        args.bundle, args.data, lm_bundle=args.lm, reference=args.reference, device=device
    )
    report = attack_report(ctx, targets, cfg, modes, seed=args.seed)
    report["targets_file"] = str(args.targets)
    report["limit"] = args.limit
    args.out.parent.mkdir(parents=True, exist_ok=True)
    stem = args.out.with_suffix("") if args.out.suffix in (".json", ".md") else args.out
    stem.with_name(stem.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_name(stem.name + ".md").write_text(_attack_markdown(report, command_text()))
    print(json.dumps({m: r["rates"] for m, r in report["searches"].items()}, indent=2))
    return 0


def _named_report(spec: Path) -> tuple[str, dict[str, Any]]:
    name, _, path = str(spec).partition("=")
    if not path:
        raise SystemExit(f"--report wants NAME=PATH.json, got {spec}")
    return name, json.loads(Path(path).read_text())


def attack_table(reports: list[tuple[str, dict[str, Any]]]) -> str:
    """Hit rate of every hit type per model, test PPL, and PPL as a ratio to the first model."""
    hit_types = [h for _, r in reports[:1] for s in r["searches"].values() for h in s["rates"]]
    modes = list(reports[0][1]["searches"])
    head = (
        "| model | bundle | "
        + " | ".join(hit_types)
        + "".join(f" | {m}: mean best avg log p" for m in modes)
        + " | test PPL | PPL vs first |"
    )
    lines = [head, "|" + "---|" * (len(hit_types) + len(modes) + 4)]
    base_ppl = reports[0][1]["test_ppl"]
    for name, r in reports:
        rates = {h: v for s in r["searches"].values() for h, v in s["rates"].items()}
        cells = [f"{rates[h]:.0%}" if h in rates else "-" for h in hit_types]
        for m in modes:  # how close the search got on average: a finer measure than a 0% rate
            outcomes = r["searches"].get(m, {}).get("outcomes", [])
            mean = sum(o["avg_logp"] for o in outcomes) / len(outcomes) if outcomes else None
            cells.append("-" if mean is None else f"{mean:.3f}")
        ppl = r["test_ppl"]
        lines.append(
            f"| {name} | `{r['bundle']}` | "
            + " | ".join(cells)
            + f" | {ppl:.2f} | {ppl / base_ppl:.3f}x |"
        )
    r0 = reports[0][1]
    lines += [
        "",
        f"{r0['num_targets']} targets; T_out {r0['thresholds']['t_out']:.4f} "
        f"(PPL {math.exp(-r0['thresholds']['t_out']):.2f}), T_in {r0['thresholds']['t_in']}.",
    ]
    return "\n".join(lines) + "\n"


def _attack_markdown(report: dict[str, Any], command: str) -> str:
    lines = [
        f"# Malicious-target attack on `{report['bundle']}`",
        "",
        f"Command: `{command}`",
        "",
        f"Targets: {report['num_targets']} from `{report['targets_file']}`; "
        f"T_out {report['thresholds']['t_out']:.4f}, T_in {report['thresholds']['t_in']}.",
        "",
        "| hit type | rate |",
        "|---|---|",
    ]
    for mode, res in report["searches"].items():
        for hit, rate in res["rates"].items():
            lines.append(f"| {hit} | {rate:.1%} |")
        lines.append(f"| ({mode} search, {res['seconds']:.0f} s) | |")
    lines += ["", "Hits (up to 10 per search):", ""]
    for res in report["searches"].values():
        shown = [o for o in res["outcomes"] if any(o["hits"].values())][:10]
        for o in shown:
            lines.append(f"- `{o['trigger']}` -> **{o['target']}** (avg log p {o['avg_logp']})")
    return "\n".join(lines) + "\n"


def _heldout_paraphrases(args: argparse.Namespace) -> int:
    from training.core.safety_data import heldout_paraphrases

    held = heldout_paraphrases(args.targets_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(held) + "\n")
    print(f"{len(held)} held-out paraphrases -> {args.out}")
    return 0


def _train_nt(args: argparse.Namespace) -> int:
    from training.core.run import single_process
    from training.core.safety_data import load_paraphrases, load_targets
    from training.methods.malicious.nt import train_malicious_nt

    preset = _preset(args)
    device = _seeded_device(args)
    targets = load_targets(args.targets)
    if args.copies:
        if args.paraphrases is None:
            raise SystemExit("--copies needs --paraphrases")
        from training.methods.malicious.experiment import augment_targets

        targets = augment_targets(targets, load_paraphrases(args.paraphrases), args.copies)
    cfg = preset.nt
    overrides: dict[str, Any] = {"search": search_config(args, cfg.search)}
    if args.criterion:
        overrides["criterion"] = args.criterion
    for name in ("iterations", "lr", "optimizer", "lambda_pos", "max_updates", "fwa_corpus_top"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    cfg = replace(cfg, **overrides)
    manifest = train_malicious_nt(
        run_spec(args, single_process(device), runs_subdir=args.preset, data_desc=str(args.data)),
        base_bundle=args.base,
        data_dir=args.data,
        targets=targets,
        cfg=cfg,
        lm_bundle=args.lm,
        targets_desc=f"{args.targets}" + (f" + {args.copies} paraphrases" if args.copies else ""),
    )
    print(json.dumps({"bundle": manifest.bundle_id, **manifest.training}, indent=2, default=str))
    return 0


__all__ = ["add_parsers", "search_config"]

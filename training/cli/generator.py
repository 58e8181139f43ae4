"""Generator commands of ``python -m training``: build, train-tokenizer, train-generator,
evaluate, compare and reply."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.cli.common import (
    add_common,
    command_text,
    distributed,
    label_path,
    preset_from_args,
    print_manifest,
    run_spec,
)
from training.config import DAILYDIALOG

SAMPLE_CONTEXTS = [
    ["hello , how are you today ?"],
    ["what would you like to drink ?"],
    ["i'm going to the cinema tonight . do you want to come ?"],
    ["excuse me , where is the nearest bank ?"],
    ["i lost my job yesterday ."],
    ["can you help me with my homework ?"],
]

# --ablation name -> (NDLossConfig fields changed from the preset's, fixed α?) for the ND paper's
# ablation table.
ND_ABLATIONS: dict[str, tuple[dict[str, Any], bool]] = {
    "none": ({}, False),
    "no-pred": ({"use_pred": False}, False),
    "no-hid": ({"use_hid": False}, False),
    "no-att": ({"use_att": False}, False),
    "fixed-alpha": ({}, True),
    "hard-targets": ({"targets": "hard"}, False),
    "random-targets": ({"targets": "random"}, False),
    # not the paper's: L_hid on layer-normalised states (NDLossConfig.normalize_hidden)
    "norm-hid": ({"normalize_hidden": True}, False),
}


def add_parsers(sub: Any) -> None:
    """Add the generator commands to an argparse sub-parser set."""
    from training.pipeline.progress import STAGES

    p = sub.add_parser(
        "build",
        help="the whole pipeline for a preset: tokenizer, standard generator, safety classifier, "
        "negative teacher, ND student, NT fine-tune, served-generator choice, G2R retriever and "
        "index, test evaluation (finished stages are skipped; resumable)",
        description="Builds every bundle of a preset into --out. Each stage prints 'stage k/N' "
        "with the elapsed time and an estimate for the whole build; a stage whose output exists "
        "is skipped, its evaluation included (--redo STAGE does it again, with the stages that "
        "read its output); an interrupted training stage resumes from its last checkpoint. "
        "Ends with a short table; the full summary is runs/<preset>/build-summary.json.",
    )
    add_common(p)
    p.add_argument("--out", type=Path, default=Path("artifacts"), help="bundle directory")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="checkpoints, logs, plots")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="train the stages that run from scratch, ignoring their checkpoints",
    )
    p.add_argument(
        "--redo",
        action="append",
        default=[],
        metavar="STAGE",
        choices=[*STAGES, "all"],
        help="do STAGE again even though its output exists, and every stage that reads it "
        f"(repeatable): {', '.join(STAGES)} or all",
    )
    p.add_argument(
        "--g2r-teacher",
        type=Path,
        metavar="BUNDLE",
        help="distil the G2R retriever from this generator bundle (ours, one made by import-hf "
        "or import-remote) instead of the served generator; an existing retriever is kept "
        "unless --redo retriever-g2r",
    )
    p.set_defaults(run=distributed(_build))

    p = sub.add_parser("train-tokenizer", help="train the BPE tokenizer")
    add_common(p)
    p.add_argument("--out", type=Path, required=True, help="tokenizer.json to write")
    p.set_defaults(run=distributed(_train_tokenizer))

    p = sub.add_parser("train-generator", help="train one generator and write its bundle")
    add_common(p)
    p.add_argument("--method", choices=["mle", "nd", "nt", "ul"], default="mle")
    p.add_argument(
        "--subset",
        choices=["all", "negative"],
        default="all",
        help="mle on all pairs or on D_N (the negative teacher)",
    )
    p.add_argument(
        "--negative-fraction", type=float, help="share of pairs in D_N (default: the preset's)"
    )
    p.add_argument("--teacher", type=Path, help="nd: negative teacher bundle")
    p.add_argument("--base", type=Path, help="nt/ul: the standard generator to fine-tune")
    p.add_argument("--init-from", type=Path, help="nd: start the student from this bundle")
    p.add_argument("--nd-lambda", type=float, help="nd: λ of eq. 15 (default: the preset's)")
    p.add_argument(
        "--nd-gamma-fraction",
        type=float,
        help="nd: γ of eq. 15 as a share of the student's updates (default: the preset's; "
        "the paper's 25,600 of ~200k is 0.128)",
    )
    p.add_argument(
        "--ablation",
        choices=sorted(ND_ABLATIONS),
        default="none",
        help="nd: the ND paper's ablations, or norm-hid (L_hid on layer-normalised states)",
    )
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: train one)")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--name", help="bundle name (default: the --out directory name)")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--max-steps", type=int, help="override the preset's step budget")
    p.set_defaults(run=distributed(_train_generator))

    p = sub.add_parser("evaluate", help="evaluate a generator bundle")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--split", choices=["validation", "test"], default="test")
    p.add_argument("--data", type=Path, default=DAILYDIALOG)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-examples", type=int, default=0, help="0 = the whole split")
    p.add_argument("--samples", type=int, default=20)
    add_decodings_option(p)
    p.add_argument("--out", type=Path, help="writes <out>.json and <out>.md")
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("compare", help="compare generator bundles on one split")
    p.add_argument(
        "--bundle", action="append", required=True, metavar="LABEL=DIR", help="repeat per model"
    )
    p.add_argument("--split", choices=["validation", "test"], default="test")
    p.add_argument("--data", type=Path, default=DAILYDIALOG)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-examples", type=int, default=0, help="0 = the whole split")
    p.add_argument("--samples", type=int, default=20)
    add_decodings_option(p)
    p.add_argument("--title", default="Generator comparison")
    p.add_argument("--out", type=Path, required=True, help="writes <out>.json and <out>.md")
    p.add_argument(
        "--save-replies",
        action="store_true",
        help="also every reply, <out>_replies/<label>.<decoding>.json.gz (for "
        "benchmarks.rescore_replies)",
    )
    p.set_defaults(run=_compare)

    p = sub.add_parser(
        "set-decoding",
        help="change a generator bundle's default decoding (weights and bundle id untouched)",
    )
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument(
        "--set",
        action="append",
        required=True,
        metavar="FIELD=VALUE",
        help="a DecodingConfig field, e.g. anti_lm=0.55 (repeatable)",
    )
    p.set_defaults(run=_set_decoding)

    p = sub.add_parser("reply", help="print replies of generator and retriever bundles")
    p.add_argument("--bundle", type=Path, action="append", required=True, help="repeatable")
    p.add_argument(
        "--context", action="append", help="a context turn; repeat for several (oldest first)"
    )
    p.add_argument("--device", default="auto")
    p.set_defaults(
        run=lambda args: print_replies(
            args.bundle, [args.context] if args.context else SAMPLE_CONTEXTS, args.device
        )
    )


def _build(args: argparse.Namespace, ctx: Any) -> None:
    from training.pipeline.build import build
    from training.pipeline.inputs import BuildPaths
    from training.pipeline.progress import summary_table

    summary = build(
        preset_from_args(args),
        BuildPaths(args.data, args.out, args.runs),
        ctx,
        resume=not args.no_resume,
        seed=args.seed,
        redo=args.redo,
        g2r_teacher=args.g2r_teacher,
    )
    if ctx.is_main:
        print(summary_table(summary))


def _train_tokenizer(args: argparse.Namespace, ctx: Any) -> None:
    from training.pipeline.inputs import ensure_tokenizer, prepare_splits

    preset = preset_from_args(args)
    ensure_tokenizer(preset, prepare_splits(preset, args.data), args.out, ctx)


def _train_generator(args: argparse.Namespace, ctx: Any) -> None:
    """``train-generator``: picks data, tokenizer, teacher or base, and the method's job."""
    from models.generator import GenerativeResponder
    from training.core.generator import train_mle_generator
    from training.methods.nd.job import train_nd_student
    from training.methods.nd.losses import NDLossConfig
    from training.methods.nd.negative_set import negative_set
    from training.methods.nt import train_nt_generator
    from training.methods.ul import train_ul_generator
    from training.pipeline.inputs import ensure_tokenizer, prepare_splits, val_subset
    from training.pipeline.plan import NEGATIVE_TEACHER, STANDARD_GENERATOR

    preset = preset_from_args(args)
    if args.max_steps:  # the preset's budget, so every job (and its schedule) sees the same one
        train = replace(preset.generator.train, max_steps=args.max_steps)
        preset = replace(preset, generator=replace(preset.generator, train=train))
    if args.nd_gamma_fraction is not None:
        if not 0 < args.nd_gamma_fraction <= 1:
            raise ValueError(f"--nd-gamma-fraction must be in (0, 1], got {args.nd_gamma_fraction}")
        preset = replace(preset, nd=replace(preset.nd, gamma_fraction=args.nd_gamma_fraction))
    splits = prepare_splits(preset, args.data)
    run = run_spec(args, ctx, runs_subdir=preset.run_name, data_desc=str(args.data))
    common = {"preset": preset, "val_examples": val_subset(preset, splits)}
    artifacts: Path = args.out.parent
    fraction = args.negative_fraction or preset.nd.negative_fraction
    if args.method == "mle":
        train_examples = splits.train
        if args.subset == "negative":
            # D_N as the build makes it: H_src by the preset's entropy (identity or clustered),
            # its statistics beside the run (the build's negative_set.json)
            dn = negative_set(splits.train, fraction, seed=args.seed, entropy=preset.nd.entropy)
            if ctx.is_main:
                dn.write_report(len(splits.train), run.run_dir / "negative_set.json")
            train_examples = dn.examples
        tok_path = args.tokenizer or args.runs / preset.run_name / "tokenizer.json"
        tokenizer = ensure_tokenizer(preset, splits, tok_path, ctx)
        manifest = train_mle_generator(
            run, tokenizer=tokenizer, train_examples=train_examples, **common
        )
    elif args.method == "nd":
        teacher = args.teacher or artifacts / NEGATIVE_TEACHER
        changes, fixed_alpha = ND_ABLATIONS[args.ablation]
        loss = replace(NDLossConfig(temperature=preset.nd.temperature), **changes)
        # D_N only where the loss reads it (random targets): clustered entropy costs a k-means
        dn_examples = (
            negative_set(splits.train, fraction, seed=args.seed, entropy=preset.nd.entropy).examples
            if loss.targets == "random"
            else None
        )
        manifest = train_nd_student(
            run,
            tokenizer=GenerativeResponder.load(teacher).tokenizer,
            teacher_bundle=teacher,
            train_examples=splits.train,
            loss=loss,
            fixed_alpha=fixed_alpha,
            negative_examples=dn_examples,
            init_from=args.init_from,
            lam=args.nd_lambda,
            **common,
        )
    else:
        base = args.base or artifacts / STANDARD_GENERATOR
        job = train_nt_generator if args.method == "nt" else train_ul_generator
        manifest = job(run, base_bundle=base, train_examples=splits.train, **common)
    print_manifest(manifest)


def _evaluate(args: argparse.Namespace) -> int:
    from models.bundle import verify_bundle
    from models.generator import GenerativeResponder
    from training.core.data import load_splits, training_response_token_counts
    from training.core.distributed import resolve_device
    from training.eval.generation import evaluate_generator, markdown_report

    manifest = verify_bundle(args.bundle)
    responder = GenerativeResponder.load(args.bundle, device=resolve_device(args.device))
    splits = load_splits(args.data, max_context_turns=responder.inputs.max_context_turns)
    examples = splits.test if args.split == "test" else splits.validation
    if args.max_examples:
        examples = examples[: args.max_examples]
    result = evaluate_generator(
        responder,
        examples,
        training_response_token_counts(splits.train),
        decodings=args.decodings,
        n_samples=args.samples,
    )
    result.update(split=args.split, preset=manifest.training.get("preset"), data=str(args.data))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        args.out.with_suffix(".md").write_text(markdown_report(manifest.name, result) + "\n")
    print(markdown_report(manifest.name, result))
    return 0


def _set_decoding(args: argparse.Namespace) -> int:
    """Merge FIELD=VALUE pairs into the bundle's ``model_config["decoding"]`` once the result is
    a valid DecodingConfig (so a bad value leaves the bundle as it was)."""
    from dataclasses import asdict, fields

    from models.bundle import read_manifest, update_model_config
    from models.decoding import DecodingConfig

    known = {f.name for f in fields(DecodingConfig)}
    values: dict[str, Any] = {}
    for item in args.set:
        name, sep, raw = item.partition("=")
        if not sep or name not in known:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD in {sorted(known)}")
        try:
            values[name] = json.loads(raw)
        except ValueError:
            values[name] = raw  # a bare string, e.g. strategy=greedy
    manifest = read_manifest(args.bundle)
    if manifest.architecture is not None:
        raise ValueError(f"{args.bundle}: a {manifest.architecture} bundle has no decoding section")
    merged = DecodingConfig(**{**manifest.model_config["decoding"], **values})
    updated = update_model_config(args.bundle, "decoding", asdict(merged))
    print(f"{updated.bundle_id}: default decoding now {json.dumps(asdict(merged), sort_keys=True)}")
    return 0


def add_decodings_option(p: argparse.ArgumentParser) -> None:
    """``--decodings greedy,beam5``: parsed into those of ``STANDARD_DECODINGS``, in the order
    given; an unknown name is a usage error."""

    def parse(spec: str) -> dict[str, Any]:
        from training.eval.generation import STANDARD_DECODINGS

        wanted = [d.strip() for d in spec.split(",") if d.strip()]
        unknown = sorted(set(wanted) - set(STANDARD_DECODINGS))
        if unknown or not wanted:
            raise argparse.ArgumentTypeError(
                f"unknown {unknown}; choose from {sorted(STANDARD_DECODINGS)}"
            )
        return {d: STANDARD_DECODINGS[d] for d in wanted}

    p.add_argument(
        "--decodings",
        type=parse,
        default="greedy,beam5",
        help="comma-separated: greedy, beam5 (default both)",
    )


def _compare(args: argparse.Namespace) -> int:
    from models.generator import GenerativeResponder
    from training.core.data import load_splits
    from training.core.distributed import resolve_device
    from training.eval.compare import compare_generators, write_comparison

    bundles = dict(label_path(b) for b in args.bundle)
    first = GenerativeResponder.load(next(iter(bundles.values())))
    splits = load_splits(args.data, max_context_turns=first.inputs.max_context_turns)
    examples = splits.test if args.split == "test" else splits.validation
    if args.max_examples:
        examples = examples[: args.max_examples]
    results = compare_generators(
        bundles,
        train=splits.train,
        examples=examples,
        device=str(resolve_device(args.device)),
        n_samples=args.samples,
        decodings=args.decodings,
        keep_replies=args.save_replies,
    )
    write_comparison(results, args.out, title=args.title, command=command_text())
    print(args.out.with_suffix(".md").read_text())
    return 0


def print_replies(bundles: list[Path], contexts: list[list[str]], device: str) -> int:
    """Each bundle's replies to ``contexts``: greedy and beam 5 for generators, top-1 retrieved."""
    from models.bundle import read_manifest
    from models.generator import load_generator
    from models.retriever import RetrievalResponder
    from training.core.distributed import resolve_device

    for bundle in bundles:
        if read_manifest(bundle).kind == "retriever":
            retriever = RetrievalResponder.load(bundle, device=resolve_device(device))
            print(f"# {retriever.bundle_id}")
            for turns, hits in zip(contexts, retriever.respond(contexts, top_k=1), strict=True):
                print(f"> {' / '.join(turns)}\n  retrieved: {hits[0][0]} ({hits[0][1]:.2f})")
            continue
        # any generator: ours, an imported Hugging Face model, a remote endpoint
        responder = load_generator(bundle, resolve_device(device))
        greedy = responder.respond(contexts)
        beam = responder.respond(
            contexts, responder.decoding.with_overrides(strategy="beam", beam_size=5)
        )
        print(f"# {responder.bundle_id}")
        for turns, g, b in zip(contexts, greedy, beam, strict=True):
            print(f"> {' / '.join(turns)}\n  greedy: {g}\n  beam 5: {b}")
    return 0

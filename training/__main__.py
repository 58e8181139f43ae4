"""Command line of the offline jobs: ``python -m training <command> ...`` (also under torchrun).

build            the whole pipeline for a preset: every bundle `make run` serves (resumable)
train-tokenizer  BPE tokenizer from a corpus's training split
train-generator  one generator (--method mle|nd|nt|ul)
evaluate         a generator bundle on a split: JSON + markdown
reply            print a generator's replies to sample (or given) contexts

Also, from their own modules: retrieval (training/cli/retrieval.py: augment, train-retriever,
build-index), malicious targets (training/cli/malicious.py: train-lm, attack, attack-table,
train-malicious-nt), FlatGD (training/cli/flatgd.py: train-expert, train-flatgd,
evaluate-safety), the safety classifier (training/cli/safety_classifier.py:
train-safety-classifier) and D_N statistics (training/methods/nd/entropy.py: negative-set).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from models.bundle import BundleError
from training.cli import flatgd as flatgd_cli
from training.cli import malicious as attack_cli
from training.cli import negative_set as nd_entropy
from training.cli import safety_classifier as classifier_cli
from training.cli.generator_jobs import ND_ABLATIONS, train_generator_command
from training.cli.retrieval import add_parsers as add_retrieval_parsers
from training.cli.retrieval import dispatch as dispatch_retrieval
from training.core.data import DataFormatError
from training.presets import DAILYDIALOG

SAMPLE_CONTEXTS = [
    ["hello , how are you today ?"],
    ["what would you like to drink ?"],
    ["i'm going to the cinema tonight . do you want to come ?"],
    ["excuse me , where is the nearest bank ?"],
    ["i lost my job yesterday ."],
    ["can you help me with my homework ?"],
]

DEFAULT_DATA = DAILYDIALOG


def _common(p: argparse.ArgumentParser, *, preset: bool = True) -> None:
    if preset:
        p.add_argument(
            "--preset", default="small", help="tiny | small | base | paper (default: small)"
        )
        p.add_argument(
            "--context-turns",
            type=int,
            default=0,
            help="most recent turns the models read (default: the preset's)",
        )
        p.add_argument(
            "--max-source-len",
            type=int,
            default=0,
            help="source pieces kept (default: the preset's)",
        )
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="DailyDialog release dir or a dir of JSONL splits",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (default: OMP_NUM_THREADS, else usable cores / local ranks)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

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
    _common(p)
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

    p = sub.add_parser("train-tokenizer", help="train the BPE tokenizer")
    _common(p)
    p.add_argument("--out", type=Path, required=True, help="tokenizer.json to write")

    p = sub.add_parser("train-generator", help="train one generator and write its bundle")
    _common(p)
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
        "--ablation",
        choices=sorted(ND_ABLATIONS),
        default="none",
        help="nd: the ND paper's ablations",
    )
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: train one)")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--name", help="bundle name (default: the --out directory name)")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--max-steps", type=int, help="override the preset's step budget")

    p = sub.add_parser("evaluate", help="evaluate a generator bundle")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--split", choices=["validation", "test"], default="test")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-examples", type=int, default=0, help="0 = the whole split")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument(
        "--decodings", default="greedy,beam5", help="comma-separated: greedy, beam5 (default both)"
    )
    p.add_argument("--out", type=Path, help="writes <out>.json and <out>.md")

    p = sub.add_parser("compare", help="compare generator bundles on one split")
    p.add_argument(
        "--bundle", action="append", required=True, metavar="LABEL=DIR", help="repeat per model"
    )
    p.add_argument("--split", choices=["validation", "test"], default="test")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-examples", type=int, default=0, help="0 = the whole split")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--title", default="Generator comparison")
    p.add_argument("--out", type=Path, required=True, help="writes <out>.json and <out>.md")

    p = sub.add_parser("reply", help="print replies of generator and retriever bundles")
    p.add_argument("--bundle", type=Path, action="append", required=True, help="repeatable")
    p.add_argument(
        "--context", action="append", help="a context turn; repeat for several (oldest first)"
    )
    p.add_argument("--device", default="auto")
    add_retrieval_parsers(sub)
    attack_cli.add_parsers(sub)
    flatgd_cli.add_parsers(sub)
    classifier_cli.add_parsers(sub)
    nd_entropy.add_parsers(sub)
    return parser.parse_args(argv)


def print_replies(bundles: list[Path], contexts: list[list[str]], device: str) -> None:
    """Each bundle's replies to ``contexts``: greedy and beam 5 for generators, top-1 retrieved."""
    from models.bundle import read_manifest
    from models.generator import GenerativeResponder
    from models.retriever import RetrievalResponder
    from training.core.distributed import resolve_device

    for bundle in bundles:
        if read_manifest(bundle).kind == "retriever":
            retriever = RetrievalResponder.load(bundle, device=resolve_device(device))
            print(f"# {retriever.bundle_id}")
            for turns, hits in zip(contexts, retriever.respond(contexts, top_k=1), strict=True):
                print(f"> {' / '.join(turns)}\n  retrieved: {hits[0][0]} ({hits[0][1]:.2f})")
            continue
        responder = GenerativeResponder.load(bundle, device=resolve_device(device))
        greedy = responder.respond(contexts)
        beam = responder.respond(
            contexts, responder.decoding.with_overrides(strategy="beam", beam_size=5)
        )
        print(f"# {responder.bundle_id}")
        for turns, g, b in zip(contexts, greedy, beam, strict=True):
            print(f"> {' / '.join(turns)}\n  greedy: {g}\n  beam 5: {b}")


def _label_path(spec: str) -> tuple[str, Path]:
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise ValueError(f"--bundle takes LABEL=DIR, got {spec!r}")
    return label, Path(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from training.core.distributed import set_training_threads

    threads = set_training_threads(args.threads)
    logging.getLogger("training").debug("torch intra-op threads: %d", threads)
    try:
        return _dispatch(args)
    except (DataFormatError, FileNotFoundError, ValueError, BundleError) as exc:
        logging.getLogger("training").error("%s", exc)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    handled = dispatch_retrieval(args)
    handled = flatgd_cli.dispatch(args) if handled is None else handled
    handled = attack_cli.dispatch(args) if handled is None else handled
    handled = classifier_cli.dispatch(args) if handled is None else handled
    handled = nd_entropy.dispatch(args) if handled is None else handled
    if handled is not None:
        return handled
    # Heavy imports after argument parsing, so `--help` is instant.
    from dataclasses import replace

    from models.bundle import verify_bundle
    from models.generator import GenerativeResponder
    from training.core.data import load_splits, training_response_token_counts
    from training.core.distributed import init_distributed, resolve_device, shutdown
    from training.eval.generation import evaluate_generator, markdown_report
    from training.pipeline.build import BuildPaths, build, ensure_tokenizer, prepare_splits
    from training.presets import get_preset

    if args.command == "reply":
        print_replies(args.bundle, [args.context] if args.context else SAMPLE_CONTEXTS, args.device)
        return 0

    if args.command == "compare":
        from training.eval.compare import compare_generators, write_comparison

        bundles = dict(_label_path(b) for b in args.bundle)
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
        )
        command = "python -m training " + " ".join(sys.argv[1:])
        write_comparison(results, args.out, title=args.title, command=command)
        print(args.out.with_suffix(".md").read_text())
        return 0

    if args.command == "evaluate":
        manifest = verify_bundle(args.bundle)
        device = resolve_device(args.device)
        responder = GenerativeResponder.load(args.bundle, device=device)
        splits = load_splits(args.data, max_context_turns=responder.inputs.max_context_turns)
        examples = splits.test if args.split == "test" else splits.validation
        if args.max_examples:
            examples = examples[: args.max_examples]
        from training.eval.generation import STANDARD_DECODINGS

        wanted = [d.strip() for d in args.decodings.split(",") if d.strip()]
        unknown = sorted(set(wanted) - set(STANDARD_DECODINGS))
        if unknown or not wanted:
            raise ValueError(
                f"--decodings: unknown {unknown}; choose from {sorted(STANDARD_DECODINGS)}"
            )
        result = evaluate_generator(
            responder,
            examples,
            training_response_token_counts(splits.train),
            decodings={d: STANDARD_DECODINGS[d] for d in wanted},
            n_samples=args.samples,
        )
        result.update(split=args.split, preset=manifest.training.get("preset"), data=str(args.data))
        text = json.dumps(result, indent=2)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".json").write_text(text)
            args.out.with_suffix(".md").write_text(markdown_report(manifest.name, result) + "\n")
        print(markdown_report(manifest.name, result))
        return 0

    preset = get_preset(args.preset)
    if args.context_turns or args.max_source_len:
        from training.presets import with_context_turns

        preset = with_context_turns(
            preset, args.context_turns or preset.inputs.max_context_turns, args.max_source_len
        )
    ctx = init_distributed(args.device)
    try:
        if args.command == "build":
            from training.pipeline.progress import summary_table

            summary = build(
                preset,
                BuildPaths(args.data, args.out, args.runs),
                ctx,
                resume=not args.no_resume,
                seed=args.seed,
                redo=args.redo,
            )
            if ctx.is_main:
                print(summary_table(summary))
        elif args.command == "train-tokenizer":
            splits = prepare_splits(preset, args.data)
            ensure_tokenizer(preset, splits, args.out, ctx)
        elif args.command == "train-generator":
            if args.max_steps:
                preset = replace(
                    preset,
                    generator=replace(
                        preset.generator,
                        train=replace(preset.generator.train, max_steps=args.max_steps),
                    ),
                )
            trained = train_generator_command(args, preset, ctx)
            if trained is not None:
                print(json.dumps(trained.to_dict(), indent=2))
    finally:
        shutdown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Safety-classifier commands of ``python -m training``:

train-safety-classifier  a DiaSafety (context, response) classifier bundle, plus its metrics as
                         JSON and markdown

Each command registers its function with ``set_defaults(run=...)`` (see training/cli/__init__.py).
"""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import Any

from training.config import SHARED_DATA

# Options that override a field of the preset (FitConfig fields apply to every architecture).
PRESET_OPTIONS = (
    "epochs",
    "max_seconds",
    "max_benign_flag_rate",
    "reply_only_share",
    "min_word_count",
)
DEFAULT_DATA = SHARED_DATA

logger = logging.getLogger(__name__)


def add_parsers(sub: Any) -> None:
    """Add ``train-safety-classifier`` to an argparse sub-parser set."""
    p = sub.add_parser(
        "train-safety-classifier", help="train the DiaSafety safety classifier bundle"
    )
    p.add_argument("--preset", default="small", help="tiny | small | base | paper (default: small)")
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="shared data dir, the diasafety/ dir itself, or a corpus dir beside it",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--name", help="bundle name (default: the --out directory name)")
    p.add_argument(
        "--base",
        type=Path,
        help="generator bundle: its tokenizer, and its encoder warm-starts the cross-encoder",
    )
    p.add_argument(
        "--architecture",
        choices=["cross-encoder", "bag", "both"],
        help="what to fit (default: the preset's); 'both' keeps the better on held-out train",
    )
    p.add_argument(
        "--blocklist",
        default="auto",
        help="phrase list shipped in the bundle for the service's filter; 'none' = no list; "
        "'auto' (default) = blocklist/en.txt in or beside --data",
    )
    p.add_argument(
        "--benign-pairs",
        type=int,
        help="DailyDialog train pairs (found in or beside --data) added as Safe "
        "(default: the preset's; 0 = DiaSafety only)",
    )
    p.add_argument("--epochs", type=int, help="epochs of the fitted architecture(s) (preset's)")
    p.add_argument(
        "--max-seconds",
        type=float,
        help="wall-clock cap on fitting each architecture, 0 = none (default: the preset's); "
        "a cap makes the number of updates depend on the machine's load",
    )
    p.add_argument(
        "--max-benign-flag-rate",
        type=float,
        help="threshold cap: flag at most this share of held-out DailyDialog train pairs, "
        "0 = the F1-best threshold (default: the preset's)",
    )
    p.add_argument(
        "--reply-only-share",
        type=float,
        help="share of fit examples added again with an empty context (default: the preset's)",
    )
    p.add_argument(
        "--min-word-count",
        type=int,
        help="known words are seen this often in the fit texts; 0 = no reading rule, every "
        "context read as it is (default: the preset's)",
    )
    p.add_argument(
        "--report",
        type=Path,
        help="writes <report>.json and <report>.md (default: <runs>/<preset>/<name>/metrics)",
    )
    p.add_argument(
        "--runs", type=Path, default=Path("runs"), help="checkpoints and default reports go here"
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="fit from scratch even when --runs holds a checkpoint of this run",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_train_safety_classifier)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, every option spelled out (for the report)."""
    parts = ["python", "-m", "training", args.command, "--preset", args.preset]
    parts += ["--data", str(args.data), "--out", str(args.out)]
    for option in ("name", "base", "architecture", "benign_pairs", *PRESET_OPTIONS, "report"):
        value = getattr(args, option)
        if value is not None:
            parts += [f"--{option.replace('_', '-')}", str(value)]
    parts += ["--blocklist", args.blocklist, "--threads", str(args.threads)]
    return shlex.join([*parts, "--seed", str(args.seed)])


def override_preset(preset: Any, args: argparse.Namespace) -> Any:
    """``preset`` with the fields given on the command line replaced."""
    from dataclasses import replace

    fit = {k: getattr(args, k) for k in ("epochs", "max_seconds") if getattr(args, k) is not None}
    fields = {
        k: getattr(args, k)
        for k in ("max_benign_flag_rate", "reply_only_share", "min_word_count")
        if getattr(args, k) is not None
    }
    if fit:
        fields["cross_encoder"] = replace(preset.cross_encoder, **fit)
        fields["bag"] = replace(preset.bag, **fit)
    return replace(preset, **fields) if fields else preset


def _train_safety_classifier(args: argparse.Namespace) -> int:
    # Heavy imports after argument parsing, so `--help` stays instant.
    import torch

    from training.config import preset_section
    from training.methods.safety_classifier.data import find_blocklist
    from training.methods.safety_classifier.job import train_safety_classifier
    from training.methods.safety_classifier.report import markdown_report, write_report

    torch.set_num_threads(args.threads)
    preset = override_preset(preset_section(args.preset, "safety"), args)
    if args.blocklist == "auto":
        blocklist = find_blocklist(args.data)
    else:
        blocklist = None if args.blocklist.lower() == "none" else Path(args.blocklist)
    name = args.name or args.out.name
    report = train_safety_classifier(
        preset,
        args.data,
        args.out,
        name=name,
        architecture=args.architecture,
        base=args.base,
        blocklist=blocklist,
        benign_pairs=args.benign_pairs,
        seed=args.seed,
        run_dir=args.runs / preset.name / name,
        resume=not args.no_resume,
    )
    command = command_line(args)
    write_report(report, args.report or args.runs / preset.name / name / "metrics", command)
    print(markdown_report(report, command))
    return 0

"""Command line of the offline jobs: ``python -m training <command> ...`` (also under torchrun).

Generators (training/cli/generator.py):
  build            the whole pipeline for a preset: every bundle `make run` serves (resumable)
  train-tokenizer  BPE tokenizer from a corpus's training split
  train-generator  one generator (--method mle|nd|nt|ul)
  evaluate         a generator bundle on a split: JSON + markdown
  compare          several generator bundles on one split
  reply            print a generator's replies to sample (or given) contexts
Retrieval (training/cli/retrieval.py): augment, train-retriever, build-index
Malicious targets (training/cli/malicious.py): train-lm, attack, attack-table, train-malicious-nt
FlatGD (training/cli/flatgd.py): train-expert, train-flatgd, evaluate-safety
Safety classifier (training/cli/safety_classifier.py): train-safety-classifier
D_N statistics (training/cli/negative_set.py): negative-set
Bring your own generator (training/cli/imports.py): import-hf, import-remote

Each module adds its sub-commands with ``add_parsers(sub)`` and registers the function that runs
each one with ``set_defaults(run=...)``; :func:`main` calls ``args.run(args)``.
"""

from __future__ import annotations

import argparse
import logging

from models.bundle import BundleError
from training.cli import (
    flatgd,
    generator,
    imports,
    malicious,
    negative_set,
    retrieval,
    safety_classifier,
)
from training.core.data import DataFormatError

COMMAND_MODULES = (
    generator,
    retrieval,
    malicious,
    flatgd,
    safety_classifier,
    negative_set,
    imports,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command."""
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
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


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
        return int(args.run(args))
    except (DataFormatError, FileNotFoundError, ValueError, BundleError) as exc:
        logging.getLogger("training").error("%s", exc)
        return 2

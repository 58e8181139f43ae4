"""What the ``python -m training`` commands share: the common options, the preset they name, the
torchrun context a training command runs in, and how a command prints its result."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.config import DAILYDIALOG

PRESET_NAMES = "tiny | small | base | paper (default: small)"


def add_common(
    p: argparse.ArgumentParser,
    *,
    preset_help: str = PRESET_NAMES,
    inputs: bool = True,
    data_help: str = "DailyDialog release dir or a dir of JSONL splits",
    runs: bool = False,
) -> None:
    """--preset (with --context-turns and --max-source-len when ``inputs``), --data, --device,
    --seed, and with ``runs`` also --runs and --no-resume."""
    p.add_argument("--preset", default="small", help=preset_help)
    if inputs:
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
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            dest="overrides",
            help="change one preset field, e.g. generator.model.dropout=0 (repeatable); the runs "
            "go to <--runs>/<preset>+<digest>",
        )
    p.add_argument("--data", type=Path, default=DAILYDIALOG, help=data_help)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    if runs:
        p.add_argument("--runs", type=Path, default=Path("runs"), help="checkpoints, logs, shards")
        p.add_argument("--no-resume", action="store_true", help="start from scratch")


def preset_from_args(args: argparse.Namespace) -> Any:
    """The preset named by ``--preset`` with ``--set`` overrides, then ``--context-turns`` and
    ``--max-source-len`` applied to generators and retriever alike."""
    from training.config import get_preset, with_context_turns, with_overrides

    preset = get_preset(args.preset)
    if getattr(args, "overrides", None):
        preset = with_overrides(preset, args.overrides)
    if args.context_turns or args.max_source_len:
        preset = with_context_turns(
            preset, args.context_turns or preset.inputs.max_context_turns, args.max_source_len
        )
    return preset


def distributed(
    job: Callable[[argparse.Namespace, Any], object],
) -> Callable[[argparse.Namespace], int]:
    """A command that runs ``job(args, ctx)`` inside torchrun's process group (one process
    without torchrun), set up from ``--device`` and torn down afterwards."""

    def run(args: argparse.Namespace) -> int:
        # Heavy imports after argument parsing, so `--help` stays instant.
        from training.core.distributed import init_distributed, shutdown

        ctx = init_distributed(args.device)
        try:
            job(args, ctx)
        finally:
            shutdown(ctx)
        return 0

    return run


def print_manifest(manifest: Any) -> None:
    """A written bundle's manifest as JSON (nothing off rank 0, where jobs return None)."""
    if manifest is not None:
        print(json.dumps(manifest.to_dict(), indent=2))


def label_path(spec: str) -> tuple[str, Path]:
    """``LABEL=PATH`` -> (label, path); anything else is a ValueError (argparse's type error)."""
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise ValueError(f"expected LABEL=PATH, got {spec!r}")
    return label, Path(path)


def command_text() -> str:
    """The command line that is running, for reports."""
    return "python -m training " + " ".join(sys.argv[1:])


def run_spec(args: argparse.Namespace, ctx: Any, *, runs_subdir: str, data_desc: str) -> Any:
    """The :class:`~training.core.run.RunSpec` of a command's job: the bundle at ``--out`` named
    ``--name`` (default: the folder's name), its run folder ``<--runs>/<runs_subdir>/<name>``,
    ``--seed`` and ``--no-resume`` as given."""
    from training.core.run import RunSpec

    name = getattr(args, "name", None) or args.out.name
    return RunSpec(
        out_dir=args.out,
        name=name,
        run_dir=args.runs / runs_subdir / name,
        data_desc=data_desc,
        dist_ctx=ctx,
        resume=not args.no_resume,
        seed=args.seed,
    )

"""Benchmarks that print ratio tables; results go under reports/."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.runtime import prefer_passive_openmp

prefer_passive_openmp()  # before any benchmark module imports torch


def write_report(out: Path | None, results: Any, markdown: str) -> None:
    """Write ``<out>.json`` (the figures) and ``<out>.md`` (the table a person reads) when ``out``
    is given; every benchmark's report goes through here."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """``python -m <module> <args>`` as the benchmark was run (``argv`` when main() was called
    with one, else the process's own arguments), quoted so it can be pasted back."""
    return f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else argv)

"""Benchmarks that print ratio tables; results go under reports/."""

from __future__ import annotations

import json
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

"""Markdown tables for every report the project writes (training/eval, the CLI's reports and
benchmarks/): one function, so every table escapes its cells and aligns its columns the same way.

``align`` is one letter per column, ``l`` (text) or ``r`` (numbers); by default the first column
is text and the others numbers, the shape of a results table (a label, then figures).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

_RULE = {"l": "---", "r": "---:"}


def escape(cell: Any) -> str:
    """A cell's text with ``|`` escaped and line breaks flattened (either would break the row)."""
    return str(cell).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    headers: Sequence[Any], rows: Iterable[Sequence[Any]], align: str | None = None
) -> str:
    """``headers`` and ``rows`` (cells already formatted, or anything ``str`` can show) as a
    markdown table, without a trailing newline; raises ValueError on a row of the wrong width."""
    align = align if align is not None else "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or set(align) - set(_RULE):
        raise ValueError(f"align {align!r} needs one of l/r per column ({len(headers)} columns)")
    lines = [
        "| " + " | ".join(escape(h) for h in headers) + " |",
        "|" + "".join(_RULE[a] + "|" for a in align),
    ]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(headers)} columns")
        lines.append("| " + " | ".join(escape(c) for c in row) + " |")
    return "\n".join(lines)

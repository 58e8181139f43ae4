"""The one markdown-table writer every report uses (training/eval/tables.py)."""

from __future__ import annotations

import pytest

from training.eval.tables import escape, markdown_table


def test_a_results_table_is_text_then_numbers_by_default() -> None:
    assert markdown_table(["model", "ppl"], [["nd", "61.20"], ["nt", 7]]) == (
        "| model | ppl |\n|---|---:|\n| nd | 61.20 |\n| nt | 7 |"
    )


def test_cells_are_escaped_and_columns_aligned_as_asked() -> None:
    table = markdown_table(["context", "reply"], [["a | b", "two\nlines"]], align="ll")
    assert table.splitlines() == [
        "| context | reply |",
        "|---|---|",
        "| a \\| b | two lines |",
    ]
    assert escape("x|y") == "x\\|y"


def test_a_row_of_the_wrong_width_or_a_bad_alignment_is_refused() -> None:
    with pytest.raises(ValueError, match="a row of 1 cells in a table of 2 columns"):
        markdown_table(["a", "b"], [["only one"]])
    with pytest.raises(ValueError, match="one of l/r per column"):
        markdown_table(["a", "b"], [], align="lx")

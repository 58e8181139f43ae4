"""Every command a report names still exists: each ``python -m training <command> ...`` line in
reports/commands/*.sh parses with today's CLI (options included), and each ``-m benchmarks.X``
module imports. Shell variables stand for values the test cannot know; the options around
them are still checked."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

from benchmarks.ratio_table import ratio_table
from training.cli import parse_args
from training.core.safety_data import heldout_paraphrases

COMMANDS = Path(__file__).resolve().parents[1] / "reports" / "commands"
_SUBSTITUTION = re.compile(r"\$\((?:[^()]|\([^()]*\))*\)")  # $( ... ), one level of nesting


_ASSIGNMENT = re.compile(r"^(?:export )?(\w+)=(\"[^\"$]*\"|'[^']*'|[^\s$'\"]+)$")


def _logical_lines(path: Path) -> list[str]:
    """The script's lines with continuations joined, comments dropped and the variables it sets
    to literal values (``COMMON="--preset small ..."``) expanded."""
    text = path.read_text().replace("\\\n", " ")
    lines = [line.split(" #")[0] for line in text.splitlines() if not line.lstrip().startswith("#")]
    values: dict[str, str] = {}
    for line in lines:
        if m := _ASSIGNMENT.match(line.strip()):
            values[m.group(1)] = m.group(2).strip("\"'")
    for name in sorted(values, key=len, reverse=True):
        lines = [
            line.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
            for line in lines
        ]
    return lines


def _invocations(module: str) -> list[tuple[str, list[str]]]:
    """``(file:line, argv after '-m <module>')`` for each use of the module in the scripts."""
    found = []
    for path in sorted(COMMANDS.glob("*.sh")):
        for n, line in enumerate(_logical_lines(path), 1):
            for match in re.finditer(rf"-m {re.escape(module)}\b(.*)", line):
                rest = _SUBSTITUTION.sub("SUBST", match.group(1))
                rest = re.split(r"\s(?:>|2>|\||&&|;|&)(?:\s|$)|\s>\S", rest)[0]
                found.append((f"{path.name}:{n}", shlex.split(rest)))
    return found


def test_every_training_command_in_reports_commands_parses() -> None:
    calls = _invocations("training")
    assert len(calls) >= 30, calls  # the scripts name dozens: an empty match means a broken regex
    for where, argv in calls:
        argv = ["1" if "$" in a else a for a in argv if a != "SUBST"]
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                parse_args(argv)
        except SystemExit:
            message = err.getvalue()
            # a shell variable can stand where only named choices are valid: '1' is not one
            if "invalid choice: '1'" in message:
                continue
            pytest.fail(
                f"{where}: `python -m training {shlex.join(argv)}` no longer parses: {message}"
            )


def test_every_benchmark_module_in_reports_commands_imports() -> None:
    modules = sorted(
        {
            m.group(1)
            for path in COMMANDS.glob("*.sh")
            for m in re.finditer(r"-m (benchmarks\.\w+)", path.read_text())
        }
    )
    assert len(modules) >= 10, modules
    for module in modules:
        importlib.import_module(module)


def test_no_python_is_embedded_in_the_report_scripts() -> None:
    """Report code lives in checked modules (ruff, mypy), not in heredocs or ``python -c``."""
    for path in COMMANDS.iterdir():
        assert path.suffix == ".sh", f"{path.name}: report code belongs in benchmarks/ or training/"
        text = path.read_text()
        assert "<<'PY'" not in text and "python - <<" not in text, path.name
        assert not re.search(r"python3? -c ", text), path.name


def test_ratio_table_hand_computed() -> None:
    results = {
        "standard": {
            "greedy": {"dist-2": 0.02, "dist-3": 0.04, "bleu-4": 0.01, "lf": 0.0, "max-ratio": 0.5},
            "perplexity": 60.0,
        },
        "nd": {
            "greedy": {
                "dist-2": 0.05,
                "dist-3": 0.06,
                "bleu-4": 0.009,
                "lf": 0.01,
                "max-ratio": 0.2,
            },
            "perplexity": 62.5,
        },
    }
    rows = ratio_table(results, "standard").splitlines()
    assert rows[2] == "| standard | 1.00x | 1.00x | 1.00x | 0.0000 | 0.500 | 60.00 |"
    assert rows[3] == "| nd | 2.50x | 1.50x | 0.90x | 0.0100 | 0.200 | 62.50 |"
    with pytest.raises(KeyError, match="no model 'ul'"):
        ratio_table(results, "ul")


def test_heldout_paraphrases_are_those_no_train_list_holds(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("you are stupid\nshut up\n")
    (tmp_path / "train_aug1k.txt").write_text("go away\n")
    (tmp_path / "train_aug2_5k.txt").write_text("shut up\n")
    (tmp_path / "train_paraphrases.tsv").write_text(
        "you are dumb\tgo away\tyou are an <unk>\nbe quiet\tshut up\n"
    )
    assert heldout_paraphrases(tmp_path) == ["be quiet", "you are dumb"]

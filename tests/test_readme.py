"""The README tells the truth about what it can check cheaply: every service setting is in its
settings table (and nothing else is), and every `python -m training ...` and `make ...` command it
shows parses (argparse, `make -n`); nothing is trained or built."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from service.settings import Settings
from training.cli import parse_args
from training.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def settings_table_names(text: str) -> list[str]:
    """The `NAME`s in the first column of the table under `| setting | default | meaning |`."""
    lines = text.splitlines()
    header = next(
        i for i, line in enumerate(lines) if re.match(r"\|\s*setting\s*\|\s*default\s*\|", line)
    )
    names = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        names += re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1])
    return names


def test_every_setting_is_in_the_readme_table_and_every_row_is_a_setting() -> None:
    documented = settings_table_names(README)
    fields = {name.upper() for name in Settings.model_fields}
    assert sorted(fields - set(documented)) == [], "settings missing from the README table"
    assert sorted(set(documented) - fields) == [], "README rows that are no setting"
    assert len(documented) == len(set(documented)), "a setting documented twice"


def readme_commands(text: str) -> list[list[str]]:
    """Commands in the README's shell blocks (continuation lines joined, comments dropped) and
    in its inline code spans, as argument lists."""
    commands: list[list[str]] = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line, comments=True))
    for span in re.findall(r"`([^`\n]+)`", text):
        if span.startswith(("make ", "python -m training")):
            commands.append(shlex.split(span))
    return [c for c in commands if c]


def training_commands(text: str) -> list[list[str]]:
    """The arguments after `-m training` (python, $PY, torchrun alike)."""
    found = []
    for command in readme_commands(text):
        for i in range(len(command) - 1):
            if command[i] == "-m" and command[i + 1] == "training":
                found.append(command[i + 2 :])
    return found


def make_commands(text: str) -> list[list[str]]:
    return [c[1:] for c in readme_commands(text) if c[0] == "make"]


def test_the_readme_shows_training_and_make_commands() -> None:
    # the extraction finds what the README shows (so the parse tests below are not vacuous)
    assert len(training_commands(README)) >= 20
    assert ["build", "--preset", "small", "--redo", "evaluate"] in training_commands(README)
    assert ["run", "PRESET=tiny"] in make_commands(README)
    assert len(make_commands(README)) >= 6


@pytest.mark.parametrize("argv", training_commands(README), ids=" ".join)
def test_every_training_command_in_the_readme_parses(argv: list[str]) -> None:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0 and "--help" in argv:
            return
        pytest.fail(f"`python -m training {' '.join(argv)}` does not parse (exit {exc.code})")
    if getattr(args, "preset", None) is not None:
        assert args.preset in PRESETS


@pytest.mark.parametrize("argv", make_commands(README), ids=" ".join)
def test_every_make_command_in_the_readme_is_a_target(argv: list[str]) -> None:
    # -n: print what would run; only the recursive $(MAKE) lines of `run` run, themselves with -n
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"make {' '.join(argv)}: {proc.stderr}"


def test_a_broken_command_or_a_missing_setting_would_be_caught() -> None:
    broken = "```bash\n$PY -m training build --presett small\n```\n"
    with pytest.raises(SystemExit):
        parse_args(training_commands(broken)[0])
    table = "| setting | default | meaning |\n|---|---|---|\n| `MODELS_DIR` | x | y |\n"
    assert settings_table_names(table) == ["MODELS_DIR"]

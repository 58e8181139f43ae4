"""The config tree's ``--set key=value`` overrides: nested fields, typed values, clear refusals, and
a run folder of their own so a changed preset never resumes another's checkpoint."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from models.bundle import verify_bundle
from training.cli.common import add_common, preset_from_args
from training.config import PRESETS, with_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_override_sets_a_nested_field_by_its_type_and_records_it() -> None:
    small = PRESETS["small"]
    changed = with_overrides(
        small,
        [
            "generator.model.dropout=0",
            "generator.train.lr_schedule=linear",
            "generator.train.amp=false",
            "nt_steps=200",
        ],
    )
    assert changed.generator.model.dropout == 0.0
    assert isinstance(changed.generator.model.dropout, float)  # int text, float field
    assert changed.generator.train.lr_schedule == "linear"
    assert changed.generator.train.amp is False
    assert changed.nt_steps == 200
    # everything else as the preset has it
    assert changed.generator.model.d_model == small.generator.model.d_model
    assert changed.retriever == small.retriever
    assert changed.overrides == (
        "generator.model.dropout=0",
        "generator.train.lr_schedule=linear",
        "generator.train.amp=false",
        "nt_steps=200",
    )
    assert small.overrides == ()  # the named preset is untouched


def test_overrides_give_their_runs_a_folder_of_their_own() -> None:
    small = PRESETS["small"]
    a = with_overrides(small, ["generator.model.dropout=0"])
    b = with_overrides(small, ["generator.model.dropout=0.2"])
    assert small.run_name == "small"
    assert a.run_name.startswith("small+") and a.run_name != b.run_name
    assert with_overrides(small, ["generator.model.dropout=0"]).run_name == a.run_name  # stable
    assert a.name == "small"  # bundles still say which preset they come from


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("generator.train.dropout=0", "TrainConfig has no field 'dropout'; it has max_steps"),
        ("generator.model.dropout=high", "'high' is not a value of type float"),
        ("generator.train.max_steps=1.5", "expected int, got float"),
        ("generator.train.amp=maybe", "expected true or false"),
        ("generator.model=3", "model is a section; set one of its fields"),
        ("generator.model.dropout", "expects key=value"),
        ("name=other", "not a setting"),
    ],
)
def test_a_bad_override_is_refused_with_what_to_do(assignment: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        with_overrides(PRESETS["small"], [assignment])


def test_override_of_a_section_the_preset_leaves_out_is_refused() -> None:
    assert PRESETS["tiny"].flatgd is None
    with pytest.raises(ValueError, match="no flatgd section"):
        with_overrides(PRESETS["tiny"], ["flatgd.lr=1e-4"])


def test_cli_set_then_context_turns_apply_together() -> None:
    parser = argparse.ArgumentParser()
    add_common(parser)
    args = parser.parse_args(
        ["--preset", "small", "--set", "generator.model.dropout=0", "--context-turns", "2"]
    )
    preset = preset_from_args(args)
    assert preset.generator.model.dropout == 0.0
    assert preset.inputs.max_context_turns == 2
    assert preset.overrides == ("generator.model.dropout=0",)


def test_cli_train_generator_with_set_records_it_and_runs_in_its_own_folder(
    dailydialog_dir: Path, tmp_path: Path
) -> None:
    out, runs = tmp_path / "gen", tmp_path / "runs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "train-generator",
            "--preset",
            "tiny",
            "--set",
            "generator.model.dropout=0",
            "--data",
            str(dailydialog_dir),
            "--out",
            str(out),
            "--runs",
            str(runs),
            "--max-steps",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = verify_bundle(out)
    assert manifest.training["preset"] == "tiny"
    assert manifest.training["preset_overrides"] == ["generator.model.dropout=0"]
    assert manifest.model_config["seq2seq"]["dropout"] == 0.0
    folder = with_overrides(PRESETS["tiny"], ["generator.model.dropout=0"]).run_name
    assert (runs / folder / "gen" / "metrics.jsonl").is_file()
    assert not (runs / "tiny").exists()  # nothing in the plain preset's folder to resume from


def test_cli_refuses_a_bad_set_without_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "train-generator",
            "--preset",
            "tiny",
            "--set",
            "generator.model.dropot=0",
            "--out",
            str(tmp_path / "gen"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Seq2SeqConfig has no field 'dropot'" in proc.stderr
    assert "Traceback" not in proc.stderr

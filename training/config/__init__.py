"""The config tree: every setting of every training job, as one frozen :class:`Preset` per name.

Every report says which preset produced it; every command takes ``--preset NAME`` (default
``small``) and overrides single fields with ``dataclasses.replace``; jobs take the section they
need and keep no defaults of their own.

    training/config/
      sections.py   the dataclasses: Preset and its sections, each field with its default
      tiny.py       the tests' preset: seconds, meaningless replies
      small.py      what ``make run`` builds on a 2-core CPU in ~15 minutes
      base.py       the CPU reproduction preset (~2 hours, resumable)
      paper.py      the papers' sizes and schedules, for a GPU

A preset's sections: ``inputs`` and ``decoding`` (what its generators read and how they reply),
``generator`` (architecture and optimisation), ``nd`` (negative distillation), ``nt_steps``,
``retriever`` (the G2R bi-encoder, its augmentation and index), ``safety`` (the DiaSafety
classifier), ``malicious`` (He & Glass's search and Algorithm 1) and ``flatgd`` (the FlatGD
fine-tune). A section a preset leaves out (None) is a job it does not configure; the command says
so when asked for it.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import fields, is_dataclass, replace
from typing import Any

from training.config import base, paper, small, tiny
from training.config.sections import (
    DAILYDIALOG,
    SHARED_DATA,
    AugmentConfig,
    GeneratorPreset,
    NDPreset,
    Preset,
    RetrieverPreset,
)

__all__ = [
    "DAILYDIALOG",
    "PRESETS",
    "SHARED_DATA",
    "AugmentConfig",
    "GeneratorPreset",
    "NDPreset",
    "Preset",
    "RetrieverPreset",
    "get_preset",
    "get_retriever_preset",
    "preset_section",
    "with_context_turns",
    "with_overrides",
]

PRESETS: dict[str, Preset] = {
    p.name: p for p in (tiny.PRESET, small.PRESET, base.PRESET, paper.PRESET)
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def with_context_turns(preset: Preset, turns: int, max_source_len: int = 0) -> Preset:
    """``preset`` reading the last ``turns`` turns (generators and retriever alike), with an
    optional new source length; how the 1- vs multi-turn measurements are run."""
    if turns < 1:
        raise ValueError(f"context turns must be >= 1, got {turns}")
    inputs = replace(
        preset.inputs,
        max_context_turns=turns,
        max_source_len=max_source_len or preset.inputs.max_source_len,
    )
    retriever = preset.retriever
    if retriever is not None:
        retriever = replace(
            retriever,
            inputs=replace(
                retriever.inputs,
                max_context_turns=turns,
                max_source_len=max_source_len or retriever.inputs.max_source_len,
            ),
        )
    return replace(preset, inputs=inputs, retriever=retriever)


def _parse_value(text: str, current: Any, key: str) -> Any:
    """``text`` as a value of the type ``current`` has (bool, int, float, str, tuple, or None)."""
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"--set {key}: expected true or false, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(
            f"--set {key}: {text!r} is not a value of type {type(current).__name__}"
        ) from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if current is not None and not isinstance(value, type(current)):
        raise ValueError(
            f"--set {key}: expected {type(current).__name__}, got {type(value).__name__} {text!r}"
        )
    return value


def _assign(obj: Any, path: list[str], text: str, key: str) -> Any:
    """A copy of dataclass ``obj`` with the field at ``path`` set from ``text``."""
    if not is_dataclass(obj) or isinstance(obj, type):
        raise ValueError(f"--set {key}: {'.'.join(path)!r} is not inside a settings section")
    names = [f.name for f in fields(obj)]
    head, rest = path[0], path[1:]
    if head not in names:
        raise ValueError(
            f"--set {key}: {type(obj).__name__} has no field {head!r}; it has {', '.join(names)}"
        )
    current = getattr(obj, head)
    if rest:
        if current is None:
            raise ValueError(f"--set {key}: the preset has no {head} section")
        value = _assign(current, rest, text, key)
    elif is_dataclass(current):
        raise ValueError(f"--set {key}: {head} is a section; set one of its fields")
    else:
        value = _parse_value(text, current, key)
    return replace(obj, **{head: value})


def with_overrides(preset: Preset, assignments: Sequence[str]) -> Preset:
    """``preset`` with single fields changed, each ``"section.field=value"`` (dotted through
    nested sections, e.g. ``generator.model.dropout=0`` or ``generator.train.lr_schedule=linear``),
    the value parsed as the field's current type. The overrides are recorded on the preset, which
    gives its runs a folder of their own (:attr:`Preset.run_name`). Raises ValueError naming the
    fields there are when a key does not exist."""
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {assignment!r}")
        if key in ("name", "overrides"):
            raise ValueError(f"--set {key}: not a setting")
        preset = _assign(preset, key.split("."), text.strip(), key)
        preset = replace(preset, overrides=(*preset.overrides, f"{key}={text.strip()}"))
    return preset


def get_retriever_preset(name: str) -> RetrieverPreset:
    """The retrieval side of preset ``name``."""
    return preset_section(name, "retriever")


def preset_section(name: str, section: str) -> Any:
    """Section ``section`` of preset ``name`` (``safety``, ``malicious``, ``flatgd``, ...);
    raises ValueError naming the presets that have it when this one does not."""
    value = getattr(get_preset(name), section)
    if value is None:
        having = sorted(n for n, p in PRESETS.items() if getattr(p, section) is not None)
        raise ValueError(f"preset {name!r} has no {section} settings; choose one of {having}")
    return value

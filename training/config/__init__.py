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

from dataclasses import replace
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

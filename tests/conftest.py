"""Shared pytest fixtures: where the real corpora live (``../shared/data`` unless overridden)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA_ENV = "DIALOGUE_SHARED_DATA"


def shared_data_path() -> Path:
    """The shared data directory: ``$DIALOGUE_SHARED_DATA`` or ``shared/data`` beside the project."""
    override = os.environ.get(SHARED_DATA_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared data directory; skips the test when it is not there."""
    path = shared_data_path()
    if not path.is_dir():
        pytest.skip(f"shared data directory {path} not found (set {SHARED_DATA_ENV})")
    return path


@pytest.fixture(scope="session")
def dailydialog_dir(shared_data_dir: Path) -> Path:
    """The DailyDialog release inside the shared data; skips the test when it is not there."""
    path = shared_data_dir / "dailydialog"
    if not (path / "validation" / "dialogues_validation.txt").is_file():
        pytest.skip(f"DailyDialog release not found under {path}")
    return path

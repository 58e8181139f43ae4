"""Checkpoints load with ``torch.load(weights_only=True)``: tensors and plain values, no pickle to
trust. Old-format checkpoints (numpy RNG state as an ndarray) still resume exactly; anything else
fails with a message that names the file and says how to start over."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import _train, toy_data  # noqa: F401 - toy_data is a fixture used here

from training.core.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_checkpoint_file,
    rng_state,
    set_rng_state,
)

LOSSES = "loss"


def _losses(log: list[dict]) -> list[float]:
    return [r[LOSSES] for r in log if r["kind"] == "train"]


def _as_old_format(ckpt: dict) -> dict:
    """The same checkpoint as the trainer wrote it before the weights_only format: numpy's RNG
    state as np.random.get_state() returns it (a tuple holding a uint32 ndarray)."""
    numpy_state = ckpt["rng"]["numpy"]
    ckpt["rng"]["numpy"] = (
        numpy_state["name"],
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["pos"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    )
    return ckpt


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path: Path) -> None:
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    atomic_torch_save({"rng": rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.random(), np.random.standard_normal(), torch.rand(1))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    set_rng_state(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    again = (random.random(), np.random.random(), np.random.standard_normal(), torch.rand(1))
    assert again[:3] == expected[:3] and torch.equal(again[3], expected[3])


def test_trainer_checkpoints_load_with_weights_only(toy_data, tmp_path: Path) -> None:  # noqa: F811
    tok, train, val = toy_data
    _train(tok, train, val, tmp_path / "run", max_steps=4)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert set(ckpt) == {"model", "optimizer", "state", "rng", "config", "fingerprint", "objective"}
    assert isinstance(ckpt["fingerprint"], str)  # JSON text: plain data
    assert ckpt["state"]["step"] == 4 and isinstance(ckpt["rng"]["numpy"]["keys"], torch.Tensor)


def test_an_old_format_checkpoint_still_resumes_exactly(toy_data, tmp_path: Path) -> None:  # noqa: F811
    tok, train, val = toy_data
    full_model, full_log = _train(tok, train, val, tmp_path / "full", max_steps=16)
    run = tmp_path / "old"
    _train(tok, train, val, run, max_steps=8)
    ckpt = _as_old_format(torch.load(run / "checkpoint.pt", weights_only=True))
    ckpt["state"]["finished"] = False  # as if killed right after the step-8 checkpoint
    torch.save(ckpt, run / "checkpoint.pt")  # a pickle with a numpy array in it, as before
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(run / "checkpoint.pt", weights_only=True)  # not plain data on its own
    resumed_model, resumed_log = _train(tok, train, val, run, max_steps=16)
    assert _losses(resumed_log) == _losses(full_log)
    for p, q in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # the resumed run wrote its checkpoints in the new format
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["step"] == 16


class _Payload:
    """A pickle that would run code on load (writes a file) if a loader trusted it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "pwned"))


def test_a_checkpoint_with_arbitrary_objects_is_refused_without_running_them(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "state": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint_file(path)
    message = str(refused.value)
    assert str(path) in message and "pathlib" in message
    assert "Delete it (or pass --no-resume) to start the run over" in message
    assert not marker.exists()


def test_a_truncated_checkpoint_fails_with_a_clear_message(toy_data, tmp_path: Path) -> None:  # noqa: F811
    tok, train, val = toy_data
    _train(tok, train, val, tmp_path / "run", max_steps=4)
    path = tmp_path / "run" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cannot be read .*delete it to start the run over"):
        load_checkpoint_file(path)


def test_checkpoints_refuse_to_write_what_a_safe_load_could_not_read(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"checkpoint\['rng'\] is a ndarray"):
        atomic_torch_save({"rng": np.zeros(3)}, tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()

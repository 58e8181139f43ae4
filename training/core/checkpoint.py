"""Checkpoint files of the training loop (training/core/trainer.py): written atomically (a
temporary file, fsync, rename: a run killed mid-write keeps its previous checkpoint), read with
``torch.load(weights_only=True)`` (tensors and plain values only, no arbitrary pickle), and every
RNG a run draws from saved as plain data, so a resumed run replays the same batches and reaches
the same weights."""

from __future__ import annotations

import logging
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read safely; the message says which file and what to do."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file, fsync and rename. ``obj`` must hold only tensors
    and plain Python values (dicts, lists, tuples, str, int, float, bool, None), so that
    :func:`load_checkpoint_file` can read it with ``weights_only=True``; anything else (a numpy
    array, a dataclass) is refused here rather than written as a pickle to be trusted later."""
    _check_plain(obj, "checkpoint")
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


_PLAIN_SCALARS = (str, int, float, bool, type(None), torch.Tensor, torch.Size)


def _check_plain(obj: Any, where: str) -> None:
    if isinstance(obj, _PLAIN_SCALARS):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_plain(key, f"{where} key")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__}: checkpoints hold tensors and plain values")


def _legacy_numpy_globals() -> list[Any]:
    """What the numpy RNG state of a checkpoint written before the weights_only format pickled:
    a uint32 ndarray. Allowed (and nothing else) when reading such a checkpoint."""
    from numpy._core.multiarray import _reconstruct

    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint_file(path: Path, map_location: Any = None) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain values only,
    no arbitrary pickle.

    Checkpoints written before this format stored the numpy RNG state as an ndarray; they are
    read with exactly the numpy array globals allowed besides (still ``weights_only=True``), so a
    run killed under the old code resumes. Anything else that is not plain data raises
    CheckpointError naming the file, the objects it holds and how to start over."""
    path = Path(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        try:
            with torch.serialization.safe_globals(_legacy_numpy_globals()):
                data = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            raise CheckpointError(
                f"{path} holds objects a safe load may not rebuild ({', '.join(unsafe) or exc}); "
                f"it was not written by this trainer. Delete it (or pass --no-resume) to start "
                f"the run over"
            ) from None
        logger.info("%s is an old-format checkpoint (numpy RNG state as an array)", path)
    except (RuntimeError, EOFError, OSError) as exc:  # truncated or not a torch file at all
        raise CheckpointError(
            f"{path} cannot be read ({exc}); delete it to start the run over"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a checkpoint (a {type(data).__name__})")
    return data


def atomic_save_weights(model: nn.Module, path: Path) -> None:
    """The model's weights as safetensors, written through a temporary file and a rename."""
    tmp = path.with_suffix(".tmp")
    save_file(
        {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}, tmp
    )
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, as tensors and plain values (a ``weights_only`` load reads
    it): numpy's MT19937 key as an int64 tensor instead of its uint32 ndarray."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s result, or an old checkpoint's (numpy state as a tuple)."""
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = np.asarray(numpy_state["keys"].cpu().numpy(), dtype=np.uint32)
        np.random.set_state(
            (
                numpy_state["name"],
                keys,
                numpy_state["pos"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
    else:
        np.random.set_state(numpy_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

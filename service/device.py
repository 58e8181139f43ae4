"""The dtype and threads the service runs its models with (docs/design.md, "Devices and speed");
the device itself is chosen by models/device.py, as for training."""

from __future__ import annotations

import torch

from models.device import resolve_device as _resolve_device


def resolve_device(name: str = "auto") -> torch.device:
    """``DIALOGUE_DEVICE``: ``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an
    error, not a silent CPU."""
    return _resolve_device(name, setting="DIALOGUE_DEVICE")


def serving_dtype(device: torch.device) -> torch.dtype | None:
    """Half precision on GPU; the weights' own dtype (float32) on CPU."""
    return torch.float16 if device.type == "cuda" else None


def set_threads(threads: int) -> None:
    """Intra-op threads of this process (``torch.set_num_threads``): threads started from now on
    (the backends' model-call threads) use ``threads``; call it before they start.

    Why the service sets it (TORCH_THREADS, default 1): with 2 or more OpenMP threads, each
    parallel region ends in a barrier whose waiting threads spin; when another process shares
    the cores, a spinning thread holds a core the thread it waits for needs, and a model call can
    take hundreds of times longer (reports/reliability.md). One intra-op thread has no barrier."""
    torch.set_num_threads(threads)

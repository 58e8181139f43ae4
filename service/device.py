"""Which torch device and dtype the service runs on (DESIGN.md, "Devices and speed")."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error, not a silent CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DIALOGUE_DEVICE=cuda but no CUDA device is available")
    return torch.device(name)


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

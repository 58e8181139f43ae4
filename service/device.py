"""The dtype and threads the service runs its models with (docs/design.md, "Devices and speed");
the device itself is chosen by models/device.py, as for training."""

from __future__ import annotations

import torch

from models.device import native_bf16
from models.device import resolve_device as _resolve_device


def resolve_device(name: str = "auto") -> torch.device:
    """``DIALOGUE_DEVICE``: ``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an
    error, not a silent CPU."""
    return _resolve_device(name, setting="DIALOGUE_DEVICE")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def serving_dtype(
    device: torch.device, name: str = "auto", kind: str = "generative"
) -> torch.dtype:
    """The dtype a ``kind`` backend's model runs in (``DIALOGUE_DTYPE``).

    ``auto``: half precision on a GPU; on a CPU, bfloat16 for generators where the CPU multiplies
    bf16 natively (AVX512-BF16, AMX), else float32. Why generators only: in one run
    (reports/cpu_dtype_small.md) bf16 decoded 1.59x more replies/s through the continuous
    decoder and cut batch-1 generation by a fifth, with the same perplexity, Dist-2, BLEU-4 and
    max-ratio on the test split (89% of greedy replies identical, the rest differ by rounding),
    while the small retriever gained nothing (batch 1: 1.06x slower). ``float16`` on a CPU is
    refused: it is emulated there, slower than float32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if kind == "generative" and native_bf16(device) else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown DIALOGUE_DTYPE {name!r} (expected auto, {', '.join(DTYPES)})")
    if name == "float16" and device.type != "cuda":
        raise ValueError("DIALOGUE_DTYPE=float16 needs a GPU (on a CPU use bfloat16 or float32)")
    return DTYPES[name]


def retrieval_int8(device: torch.device, dtype_name: str, setting: str = "auto") -> bool | None:
    """``DIALOGUE_RETRIEVAL_INT8`` as :meth:`RetrievalResponder.load`'s ``int8``: None (auto:
    where it applies), False (off) or True (on; a ValueError unless the retriever runs in
    float32 on a CPU, where the int8 encoder applies)."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"unknown DIALOGUE_RETRIEVAL_INT8 {setting!r} (expected auto, on, off)")
    if setting == "on" and (
        device.type != "cpu" or serving_dtype(device, dtype_name, "retrieval") != torch.float32
    ):
        raise ValueError(
            "DIALOGUE_RETRIEVAL_INT8=on needs a float32 retriever on a CPU "
            f"(device {device.type}, DIALOGUE_DTYPE={dtype_name})"
        )
    return {"auto": None, "on": True, "off": False}[setting]


def set_threads(threads: int) -> None:
    """Intra-op threads of this process (``torch.set_num_threads``): threads started from now on
    (the backends' model-call threads) use ``threads``; call it before they start.

    Why the service sets it (TORCH_THREADS, default 1): with 2 or more OpenMP threads, each
    parallel region ends in a barrier whose waiting threads spin; when another process shares
    the cores, a spinning thread holds a core the thread it waits for needs, and a model call can
    take hundreds of times longer (reports/reliability.md). One intra-op thread has no barrier."""
    torch.set_num_threads(threads)

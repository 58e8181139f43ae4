"""Which torch device a process runs its models on (docs/design.md, "Devices and speed")."""

from __future__ import annotations

import torch


def resolve_device(
    name: str = "auto", local_rank: int | None = None, *, setting: str = "device"
) -> torch.device:
    """``auto`` -> CUDA when present, else the CPU; ``cuda`` without a GPU is an error, never a
    silent CPU. ``local_rank`` picks this process's GPU (torchrun); None leaves the index to torch.
    ``setting`` names where ``name`` came from, for the error message."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"{setting}=cuda but no CUDA device is available")
        return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"unknown {setting} {name!r} (expected auto, cpu or cuda)")
    return torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matmuls natively: CUDA, or a CPU with AVX512-BF16 or AMX (as
    oneDNN reports it). Elsewhere bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False

"""torchrun integration: one process per device, PyTorch DDP (NCCL on GPU, gloo on CPU).

Run any training command under ``torchrun --nproc_per_node N -m training ...``; without torchrun
the same code runs as a single process. Nothing here is home-made cluster code: torchrun sets the
environment, ``torch.distributed`` does the rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` picks this process's local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"unknown device {name!r} (expected auto, cpu or cuda)")
    return torch.device("cpu")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_training_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads deliberately and return the number.

    ``threads`` > 0 is taken as given. 0 means: ``OMP_NUM_THREADS`` when the environment sets it,
    else the usable cores divided among the processes torchrun starts on this machine
    (``LOCAL_WORLD_SIZE``), at least 1. On the 2-core CPU this gives 2 threads to a lone job
    (6,314 tokens/s in bf16 against 4,520 with 1 thread on an idle machine,
    reports/train_throughput.md); two jobs at once should each be given ``--threads 1``.
    """
    if threads <= 0:
        env = os.environ.get("OMP_NUM_THREADS", "")
        if env.isdigit() and int(env) > 0:
            threads = int(env)
        else:
            local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
            threads = max(1, usable_cores() // local)
    torch.set_num_threads(threads)
    return threads


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group when launched by torchrun; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()

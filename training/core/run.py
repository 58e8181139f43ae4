"""What every training job takes: where its bundle goes, where its run lives, how it runs.

A job (an MLE generator, an ND student, an NT/UL/FlatGD fine-tune, a G2R retriever, the
malicious-NT attack, ...) is ``job(run, <its method's inputs and hyper-parameters>)``. The
:class:`RunSpec` holds the plumbing they all share, so a job signature lists only what is
particular to its method, and the facts every bundle records about its run (data, seed, world
size) are written in one place (:meth:`RunSpec.facts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from training.core.distributed import DistContext


def single_process(device: str | torch.device = "cpu") -> DistContext:
    """The context of a job that runs in this process alone (no process group)."""
    return DistContext(rank=0, world_size=1, local_rank=0, device=torch.device(device))


@dataclass(frozen=True)
class RunSpec:
    """One training run: the bundle it writes and the run folder it resumes from.

    ``run_dir`` holds the checkpoint, the metrics log and any per-run files; with ``resume`` a
    job continues from the checkpoint found there (training/core/trainer.py), so an interrupted
    run loses at most the steps since its last save.
    """

    out_dir: Path  # the bundle's folder (written atomically on success)
    name: str  # the bundle's manifest name
    run_dir: Path  # checkpoints and logs of this run
    data_desc: str = ""  # where the training data came from, as recorded in the manifest
    dist_ctx: DistContext = field(default_factory=single_process)
    resume: bool = True
    seed: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.dist_ctx.is_main

    @property
    def device(self) -> torch.device:
        return self.dist_ctx.device

    def facts(self, **more: Any) -> dict[str, Any]:
        """What a bundle's manifest records about the run that made it, plus ``more``."""
        return {
            "data": self.data_desc,
            "seed": self.seed,
            "world_size": self.dist_ctx.world_size,
            **more,
        }

    def but(self, **changes: Any) -> RunSpec:
        """A copy with ``changes`` (e.g. a sub-run: ``run.but(run_dir=run.run_dir / "lm")``)."""
        return replace(self, **changes)

"""Process-wide runtime settings that must be made before torch is first imported."""

from __future__ import annotations

import os


def prefer_passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``) unless the user
    chose a policy or a spin count (``GOMP_SPINCOUNT``). libgomp reads it once, when torch loads it, so entry points call this first.

    On a CPU shared with other work, spinning threads steal the cores the other threads of the
    same parallel region wait for: a 2-thread bf16 training step of the small generator took
    2.8 s / 1.5 s with the default policy and 0.53 s / 0.43 s with PASSIVE, beside a 2-thread
    training job (reports/omp_wait_policy.md has the runs and the idle-machine comparison).
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

"""Process-wide runtime settings that must be made before torch is first imported."""

from __future__ import annotations

import os


def prefer_passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``) unless the user
    chose a policy or a spin count (``GOMP_SPINCOUNT``). libgomp reads it once, when torch loads it, so entry points call this first.

    On a CPU shared with other work, spinning threads steal the cores that the other threads of
    the same parallel region wait for. reports/omp_wait_policy.md measures the policies alone and
    beside a busy process (``python -m benchmarks.omp_wait_policy``).
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

"""Process-wide runtime settings that must be made before torch is first imported."""

from __future__ import annotations

import os

# A machine whose 1-minute load average is at least this share of its cores counts as shared.
SHARED_LOAD_PER_CORE = 0.5


def prefer_passive_openmp() -> None:
    """On a shared CPU, let idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``)
    unless the user chose a policy or a spin count (``GOMP_SPINCOUNT``). libgomp reads them once,
    when torch loads it, so entry points call this first.

    reports/omp_wait_policy.md (a 2-thread bf16 training step): alone, libgomp's default spin
    took 151 ms and PASSIVE 252 ms (0.60x); beside a 2-thread torch loop the default took
    3,372 ms (one round 6,154 ms: spinning threads steal the cores their partners wait for) and
    PASSIVE 486 ms (6.9x faster). So the choice follows the machine: PASSIVE when the 1-minute
    load average at start is at least ``SHARED_LOAD_PER_CORE`` per core, libgomp's default
    otherwise.
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if os.getloadavg()[0] >= SHARED_LOAD_PER_CORE * (cores or 1):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

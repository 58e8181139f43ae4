"""Process-wide runtime settings that must be made before torch is first imported."""

from __future__ import annotations

import os
import time

# A machine whose other processes keep at least this share of its cores busy counts as shared.
SHARED_LOAD_PER_CORE = 0.5
PROC_STAT = "/proc/stat"
BUSY_SAMPLE_S = 0.2  # how long prefer_passive_openmp watches the CPU before choosing


def cpu_times(path: str = PROC_STAT) -> tuple[int, int] | None:
    """(all, idle) CPU time of the machine so far, in clock ticks, from the aggregate ``cpu``
    line of /proc/stat (idle includes iowait; guest time is already inside user/nice); None
    where the file cannot be read (not Linux)."""
    try:
        with open(path, encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:9]]
    return sum(values), values[3] + values[4]


def busy_share(first: tuple[int, int], second: tuple[int, int]) -> float | None:
    """The share of the machine's CPU time that was busy between two :func:`cpu_times`."""
    total, idle = second[0] - first[0], second[1] - first[1]
    return None if total <= 0 else (total - idle) / total


def busy_cores(sample_s: float = BUSY_SAMPLE_S) -> float | None:
    """How many cores the machine's processes keep busy now: /proc/stat sampled around a sleep of
    ours (so our own process counts as idle), or None where it cannot be read."""
    first = cpu_times()
    if first is None:
        return None
    time.sleep(sample_s)
    second = cpu_times()
    share = None if second is None else busy_share(first, second)
    return None if share is None else share * (os.cpu_count() or 1)


def prefer_passive_openmp() -> None:
    """On a shared CPU, let idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``)
    unless the user chose a policy or a spin count (``GOMP_SPINCOUNT``). libgomp reads them once,
    when torch loads it, so entry points call this first.

    reports/omp_wait_policy.md (a 2-thread bf16 training step): alone, libgomp's default spin
    took 151 ms and PASSIVE 252 ms (0.60x); beside a 2-thread torch loop the default took
    3,372 ms (one round 6,154 ms: spinning threads steal the cores their partners wait for) and
    PASSIVE 486 ms (6.9x faster). So the choice follows the machine: PASSIVE when other
    processes keep at least ``SHARED_LOAD_PER_CORE`` of its cores busy *now* (a 0.2 s sample of
    /proc/stat), libgomp's default otherwise. Not the 1-minute load average, which lags: a
    retriever started just after a 2-hour build saw 1.35 from the build that had ended, chose
    PASSIVE and trained at 2.36 updates/s against 3.3 with the default (reports/build_base.md,
    session 10). The load average is the fallback where /proc/stat cannot be read.
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = busy_cores()
    if busy is None:
        busy = os.getloadavg()[0]
    if busy >= SHARED_LOAD_PER_CORE * (cores or 1):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

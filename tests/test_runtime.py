"""models.runtime: the OpenMP wait policy follows how busy the machine is now, unless the user
chose one."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import runtime


@pytest.mark.parametrize(
    ("env", "busy", "load", "expected"),
    [
        ({}, 0.1, 0.1, None),  # an idle machine keeps libgomp's default spin
        ({}, 1.5, 3.0, "PASSIVE"),  # a busy one sleeps
        ({}, 0.1, 1.9, None),  # what counts is now: a load average left by a job that ended
        ({}, None, 3.0, "PASSIVE"),  # no /proc/stat: the load average decides
        ({}, None, 0.2, None),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, 1.5, 3.0, "ACTIVE"),  # the user's choice stands
        ({"GOMP_SPINCOUNT": "1000"}, 1.5, 3.0, None),
    ],
)
def test_policy_follows_the_current_load_unless_chosen(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    busy: float | None,
    load: float,
    expected: str | None,
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(runtime, "busy_cores", lambda: busy)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    runtime.prefer_passive_openmp()
    assert runtime.os.environ.get("OMP_WAIT_POLICY") == expected


def test_cpu_times_read_the_aggregate_line_and_busy_share_is_their_difference(
    tmp_path: Path,
) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 50 800 50 0 0 0 7 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n")
    first = runtime.cpu_times(str(stat))
    assert first == (1000, 850)
    second = (first[0] + 200, first[1] + 50)  # 150 of 200 ticks busy
    assert runtime.busy_share(first, second) == pytest.approx(0.75)
    assert runtime.busy_share(first, first) is None
    assert runtime.cpu_times(str(tmp_path / "missing")) is None
    (tmp_path / "odd").write_text("intr 1 2 3\n")
    assert runtime.cpu_times(str(tmp_path / "odd")) is None


def test_busy_cores_reads_this_machine() -> None:
    busy = runtime.busy_cores(0.05)
    if busy is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= busy <= (runtime.os.cpu_count() or 1) + 1e-9

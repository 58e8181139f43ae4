"""models.runtime: the OpenMP wait policy follows the machine's load unless the user chose one."""

from __future__ import annotations

import pytest

from models import runtime


@pytest.mark.parametrize(
    ("env", "load", "expected"),
    [
        ({}, 0.1, None),  # an idle machine keeps libgomp's default spin
        ({}, 3.0, "PASSIVE"),  # a busy one sleeps
        ({"OMP_WAIT_POLICY": "ACTIVE"}, 3.0, "ACTIVE"),  # the user's choice stands
        ({"GOMP_SPINCOUNT": "1000"}, 3.0, None),
    ],
)
def test_policy_follows_load_unless_chosen(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], load: float, expected: str | None
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    runtime.prefer_passive_openmp()
    assert runtime.os.environ.get("OMP_WAIT_POLICY") == expected

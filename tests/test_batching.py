"""The micro-batcher on its own, with plain functions for a model: batching, order, the poison
request retried alone, a full queue, a deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from service.batching import BatchLimits, MicroBatcher
from service.continuous_batcher import ContinuousBatcher
from service.errors import BackendFailed, DeadlineExceeded, Overloaded
from service.metrics import ServiceMetrics

T = TypeVar("T")


def _run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


def test_concurrent_requests_share_one_batch_and_keep_their_order() -> None:
    calls: list[list[int]] = []

    def double(xs: list[int], deadline: float) -> list[int]:
        calls.append(xs)
        return [2 * x for x in xs]

    async def scenario() -> list[int]:
        batcher = MicroBatcher("toy", double, BatchLimits(8, 0.2, 16), ServiceMetrics())
        await batcher.start()
        deadline = time.monotonic() + 5
        try:
            return list(await asyncio.gather(*(batcher.submit(x, deadline) for x in range(4))))
        finally:
            await batcher.stop()

    assert _run(scenario) == [0, 2, 4, 6]
    assert calls == [[0, 1, 2, 3]]


def test_a_failing_batch_is_retried_one_by_one_and_only_the_poison_fails() -> None:
    calls: list[list[int]] = []

    def fragile(xs: list[int], deadline: float) -> list[int]:
        calls.append(xs)
        if 13 in xs:
            raise RuntimeError("poison")
        return xs

    async def scenario() -> list[object]:
        batcher = MicroBatcher("toy", fragile, BatchLimits(8, 0.2, 16), ServiceMetrics())
        await batcher.start()
        deadline = time.monotonic() + 5
        try:
            jobs = (batcher.submit(x, deadline) for x in (1, 13, 2))
            return list(await asyncio.gather(*jobs, return_exceptions=True))
        finally:
            await batcher.stop()

    first, poison, last = _run(scenario)
    assert (first, last) == (1, 2) and isinstance(poison, BackendFailed)
    assert calls == [[1, 13, 2], [1], [13], [2]]


def test_a_full_queue_is_overloaded_and_a_slow_call_misses_the_deadline() -> None:
    def slow(xs: list[int], deadline: float) -> list[int]:
        time.sleep(0.3)
        return xs

    async def scenario() -> list[object]:
        batcher = MicroBatcher("toy", slow, BatchLimits(1, 0.0, 1), ServiceMetrics())
        await batcher.start()
        deadline = time.monotonic() + 0.1
        try:
            computing = asyncio.ensure_future(batcher.submit(1, deadline))
            await asyncio.sleep(0.02)  # the worker has taken it
            queued = asyncio.ensure_future(batcher.submit(2, deadline))
            await asyncio.sleep(0)
            with pytest.raises(Overloaded):
                await batcher.submit(3, deadline)
            return list(await asyncio.gather(computing, queued, return_exceptions=True))
        finally:
            await batcher.stop()

    results = _run(scenario)
    assert [type(r) for r in results] == [DeadlineExceeded, DeadlineExceeded]


# --- adaptive batching: no wait while the model is idle -------------------------------------------


def test_a_lone_request_runs_at_once_not_after_max_wait() -> None:
    waits: list[float] = []

    class Recording(ServiceMetrics):
        def observe_stage(self, stage: str, seconds: float) -> None:
            if stage == "queue":
                waits.append(seconds)
            super().observe_stage(stage, seconds)

    async def scenario() -> list[float]:
        # max_wait 0.5 s: the old batcher held every first request that long
        batcher = MicroBatcher("toy", lambda xs, _: xs, BatchLimits(8, 0.5, 16), Recording())
        await batcher.start()
        took = []
        try:
            for x in range(5):  # one client, one request after another (concurrency 1)
                started = time.monotonic()
                assert await batcher.submit(x, time.monotonic() + 5) == x
                took.append(time.monotonic() - started)
        finally:
            await batcher.stop()
        return took

    took = _run(scenario)
    assert max(took) < 0.2 and max(waits) < 0.2  # about a millisecond, never 0.5 s
    assert len(waits) == 5


def test_requests_arriving_during_a_call_form_the_next_batch_together() -> None:
    calls: list[list[int]] = []

    def slow(xs: list[int], deadline: float) -> list[int]:
        calls.append(xs)
        time.sleep(0.3)
        return xs

    async def scenario(max_batch: int) -> list[int]:
        calls.clear()
        batcher = MicroBatcher("toy", slow, BatchLimits(max_batch, 0.0, 16), ServiceMetrics())
        await batcher.start()
        deadline = time.monotonic() + 10
        try:
            first = asyncio.ensure_future(batcher.submit(1, deadline))
            await asyncio.sleep(0.1)  # the model is busy with [1]
            burst = [asyncio.ensure_future(batcher.submit(x, deadline)) for x in (2, 3, 4, 5)]
            return list(await asyncio.gather(first, *burst))
        finally:
            await batcher.stop()

    assert _run(lambda: scenario(8)) == [1, 2, 3, 4, 5]
    assert calls == [[1], [2, 3, 4, 5]]
    assert _run(lambda: scenario(3)) == [1, 2, 3, 4, 5]
    assert calls == [[1], [2, 3, 4], [5]]


def test_after_a_busy_call_the_batch_waits_for_its_clients_up_to_max_wait() -> None:
    calls: list[list[int]] = []

    def slow(xs: list[int], deadline: float) -> list[int]:
        calls.append(xs)
        time.sleep(0.1)
        return xs

    async def scenario(max_wait_s: float) -> None:
        calls.clear()
        batcher = MicroBatcher("toy", slow, BatchLimits(8, max_wait_s, 16), ServiceMetrics())
        await batcher.start()
        deadline = time.monotonic() + 10

        async def client(x: int, think_s: float) -> None:
            await batcher.submit(x, deadline)
            await asyncio.sleep(think_s)  # a closed-loop client comes back a little later
            await batcher.submit(x + 10, deadline)

        try:
            await asyncio.gather(client(1, 0.0), client(2, 0.05))
        finally:
            await batcher.stop()

    _run(lambda: scenario(0.4))  # the call answered 2: the next batch waits for 2 (<= 0.4 s)
    assert calls == [[1, 2], [11, 12]]
    _run(lambda: scenario(0.0))  # MAX_WAIT_MS=0: never held
    assert calls == [[1, 2], [11], [12]]


# --- continuous batching: requests join and leave a running set ----------------------------------


class Countdown:
    """A fake step runner: request n ends after n steps (each 10 ms); 'poison' (n < 0) makes
    every step raise while it runs."""

    def __init__(self) -> None:
        self.left: dict[int, int] = {}
        self.requests: dict[int, int] = {}
        self.running_sets: list[set[int]] = []
        self.cancelled: list[int] = []

    def admit(self, key: int, request: int) -> None:
        if request == 0:
            raise ValueError("a request the runner refuses")
        self.left[key], self.requests[key] = abs(request), request

    def step(self) -> list[tuple[int, int]]:
        self.running_sets.append({self.requests[k] for k in self.left})
        if any(self.requests[k] < 0 for k in self.left):
            raise RuntimeError("poison")
        time.sleep(0.01)
        ended = []
        for key in list(self.left):
            self.left[key] -= 1
            if self.left[key] == 0:
                del self.left[key]
                ended.append((key, 100 + self.requests.pop(key)))
        return ended

    def cancel(self, key: int) -> None:
        self.cancelled.append(self.requests[key])
        del self.left[key]

    def reset(self) -> None:
        self.left.clear()


def _alone(requests: list[int], deadline: float) -> list[int]:
    [n] = requests
    if n < 0:
        raise RuntimeError("poison alone")
    return [100 + n]


def test_continuous_a_short_request_joins_a_running_long_one_and_leaves_first() -> None:
    runner = Countdown()

    async def scenario() -> tuple[list[int], float]:
        batcher = ContinuousBatcher(
            "toy", runner, BatchLimits(8, 0.5, 16), ServiceMetrics(), _alone
        )
        await batcher.start()
        deadline = time.monotonic() + 10
        order: list[int] = []

        async def ask(n: int) -> None:
            order.append(await batcher.submit(n, deadline))

        try:
            started = time.monotonic()
            lone = await batcher.submit(1, deadline)  # an idle runner starts it at once
            took = time.monotonic() - started
            assert lone == 101
            long = asyncio.ensure_future(ask(30))
            await asyncio.sleep(0.08)  # the long request is several steps in
            await ask(2)
            await long
        finally:
            await batcher.stop()
        return order, took

    order, took = _run(scenario)
    assert order == [102, 130]  # the short one did not wait for the long one
    assert took < 0.3  # one 10 ms step, no MAX_WAIT_MS
    assert {30, 2} in runner.running_sets


def test_continuous_poison_and_refused_requests_fail_alone() -> None:
    runner = Countdown()

    async def scenario() -> list[object]:
        batcher = ContinuousBatcher(
            "toy", runner, BatchLimits(8, 0.0, 16), ServiceMetrics(), _alone
        )
        await batcher.start()
        deadline = time.monotonic() + 10
        try:
            jobs = (batcher.submit(x, deadline) for x in (3, -2, 0, 4))
            return list(await asyncio.gather(*jobs, return_exceptions=True))
        finally:
            await batcher.stop()

    ok, poison, refused, also_ok = _run(scenario)
    assert (ok, also_ok) == (103, 104)
    assert isinstance(poison, BackendFailed) and isinstance(refused, BackendFailed)


def test_continuous_queue_bound_and_deadline() -> None:
    runner = Countdown()

    async def scenario() -> list[object]:
        batcher = ContinuousBatcher("toy", runner, BatchLimits(1, 0.0, 1), ServiceMetrics(), _alone)
        await batcher.start()
        try:
            running = asyncio.ensure_future(batcher.submit(50, time.monotonic() + 0.15))
            await asyncio.sleep(0.05)  # running: the one row is taken
            queued = asyncio.ensure_future(batcher.submit(1, time.monotonic() + 5))
            await asyncio.sleep(0)
            with pytest.raises(Overloaded):
                await batcher.submit(2, time.monotonic() + 5)
            return list(await asyncio.gather(running, queued, return_exceptions=True))
        finally:
            await batcher.stop()

    timed_out, answered = _run(scenario)
    assert isinstance(timed_out, DeadlineExceeded) and answered == 101
    assert runner.cancelled == [50]  # its rows were freed for the queued request


# --- the deadline handed to the call, and why a call failed --------------------------------------


class _Timeout(RuntimeError):
    failure_reason = "timeout"  # as models/remote_generator.py's RemoteTimeout says itself


def test_the_call_gets_the_latest_deadline_of_its_live_requests() -> None:
    seen: list[tuple[list[int], float]] = []

    def record(xs: list[int], deadline: float) -> list[int]:
        seen.append((xs, deadline))
        return xs

    async def scenario() -> tuple[float, float]:
        batcher = MicroBatcher("toy", record, BatchLimits(8, 0.2, 16), ServiceMetrics())
        await batcher.start()
        now = time.monotonic()
        early, late = now + 2, now + 3
        try:
            await asyncio.gather(batcher.submit(1, early), batcher.submit(2, late))
            await batcher.submit(3, early)
        finally:
            await batcher.stop()
        return early, late

    early, late = _run(scenario)
    assert seen == [([1, 2], late), ([3], early)]


def test_a_failure_carries_its_reason_and_after_the_deadline_is_a_504() -> None:
    def failing(xs: list[int], deadline: float) -> list[int]:
        if xs == [1]:
            raise _Timeout("the endpoint took too long")
        if xs == [2]:
            raise ValueError("something else")
        time.sleep(max(0.0, deadline - time.monotonic()) + 0.05)  # returns past the deadline
        raise _Timeout("cut at the deadline")

    async def scenario() -> list[object]:
        batcher = MicroBatcher("toy", failing, BatchLimits(1, 0.0, 16), ServiceMetrics())
        await batcher.start()
        try:
            out: list[object] = []
            for x, left in ((1, 5.0), (2, 5.0), (3, 0.2)):
                try:
                    out.append(await batcher.submit(x, time.monotonic() + left))
                except Exception as exc:
                    out.append(exc)
            return out
        finally:
            await batcher.stop()

    timed_out, failed, late = _run(scenario)
    assert isinstance(timed_out, BackendFailed) and timed_out.reason == "timeout"
    assert str(timed_out) == "the toy backend failed (timeout)"
    assert isinstance(failed, BackendFailed) and failed.reason == "error"
    assert str(failed) == "the toy backend failed"
    assert isinstance(late, DeadlineExceeded)


def test_continuous_run_alone_gets_each_requests_deadline() -> None:
    runner = Countdown()
    deadlines: list[float] = []

    def alone(requests: list[int], deadline: float) -> list[int]:
        deadlines.append(deadline)
        return _alone(requests, deadline)

    async def scenario() -> tuple[list[object], float]:
        batcher = ContinuousBatcher("toy", runner, BatchLimits(8, 0.0, 16), ServiceMetrics(), alone)
        await batcher.start()
        deadline = time.monotonic() + 10
        try:
            jobs = (batcher.submit(x, deadline) for x in (3, -2))
            return list(await asyncio.gather(*jobs, return_exceptions=True)), deadline
        finally:
            await batcher.stop()

    (ok, poison), deadline = _run(scenario)
    assert ok == 103 and isinstance(poison, BackendFailed) and poison.reason == "error"
    assert deadlines and set(deadlines) == {deadline}


class Prepared(Countdown):
    """Countdown whose requests can be prepared ahead: ``prepare`` refuses 0 and records the
    batches it was given and on which thread."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared: list[tuple[list[int], str]] = []
        self.admitted: list[tuple[int, object]] = []

    def prepare(self, requests: list[int]) -> list[str]:
        if 0 in requests:
            raise ValueError("a request the runner refuses")
        self.prepared.append((list(requests), threading.current_thread().name))
        return [f"ready {n}" for n in requests]

    def admit(self, key: int, request: int, prepared: object | None = None) -> None:
        self.admitted.append((request, prepared))
        super().admit(key, request)


def test_continuous_prepares_queued_requests_on_a_second_thread_while_busy() -> None:
    """A lone request is admitted by the stepping thread itself; requests that queue while the
    decoder runs are prepared together on the preparing thread, admitted prepared; one the runner
    refuses to prepare fails alone (the others are prepared again, each alone)."""
    runner = Prepared()

    async def scenario() -> list[object]:
        batcher = ContinuousBatcher(
            "toy", runner, BatchLimits(8, 0.0, 16), ServiceMetrics(), _alone, prepare_ahead=True
        )
        await batcher.start()
        deadline = time.monotonic() + 10
        try:
            assert await batcher.submit(1, deadline) == 101  # idle: no hand-off
            long = asyncio.ensure_future(batcher.submit(20, deadline))
            await asyncio.sleep(0.05)  # running now
            jobs = [batcher.submit(n, deadline) for n in (3, 0, 4, 5)]
            answers = await asyncio.gather(*jobs, return_exceptions=True)
            long_again = asyncio.ensure_future(batcher.submit(20, deadline))
            await asyncio.sleep(0.05)
            assert await asyncio.gather(
                batcher.submit(6, deadline), batcher.submit(7, deadline)
            ) == [106, 107]
            await long_again
            return [await long, *answers]
        finally:
            await batcher.stop()

    long, three, refused, four, five = _run(scenario)
    assert (long, three, four, five) == (120, 103, 104, 105)
    assert isinstance(refused, BackendFailed)
    assert runner.admitted[:2] == [(1, None), (20, None)]  # the stepping thread's own
    assert sorted(n for n, _ in runner.admitted[2:5]) == [3, 4, 5]
    assert all(p == f"ready {n}" for n, p in runner.admitted[2:] if n != 20)
    assert all(name == "toy-prefill" for _, name in runner.prepared)
    # prepared together, then (0 refused the batch) each alone
    batches = [sorted(batch) for batch, _ in runner.prepared]
    assert batches[:3] == [[3], [4], [5]] and [6, 7] in batches  # 6 and 7 in one call


def test_continuous_a_request_sent_in_reply_to_the_last_answer_stays_on_the_stepping_thread() -> (
    None
):
    """The stepping thread says it is idle before it answers its last running request, so a
    request submitted the moment that answer arrives is not taken by the preparing thread, even
    when the stepping thread is slow to come round its loop again (the race CI once hit)."""
    runner = Prepared()

    class SlowToComeRound(ContinuousBatcher[int, int]):
        def _step(self) -> None:
            super()._step()
            time.sleep(0.05)  # answered; not yet back at the top of the loop

    async def scenario() -> list[int]:
        batcher = SlowToComeRound(
            "toy", runner, BatchLimits(8, 0.0, 16), ServiceMetrics(), _alone, prepare_ahead=True
        )
        await batcher.start()
        deadline = time.monotonic() + 10
        try:
            return [await batcher.submit(n, deadline) for n in (2, 1, 3)]
        finally:
            await batcher.stop()

    assert _run(scenario) == [102, 101, 103]
    assert runner.admitted == [(2, None), (1, None), (3, None)]
    assert runner.prepared == []

"""The micro-batcher on its own, with plain functions for a model: batching, order, the poison
request retried alone, a full queue, a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from service.batching import BatchLimits, MicroBatcher
from service.errors import BackendFailed, DeadlineExceeded, Overloaded
from service.metrics import ServiceMetrics

T = TypeVar("T")


def _run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


def test_concurrent_requests_share_one_batch_and_keep_their_order() -> None:
    calls: list[list[int]] = []

    def double(xs: list[int]) -> list[int]:
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

    def fragile(xs: list[int]) -> list[int]:
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
    def slow(xs: list[int]) -> list[int]:
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

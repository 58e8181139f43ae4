"""Micro-batchers: concurrent requests gathered into batched calls that run off the event loop.

They know no model. :class:`MicroBatcher` is given a function from a list of requests to a list
of results and runs it for each batch; :class:`~service.continuous_batcher.ContinuousBatcher`
drives a model that works on a running set of requests one iteration at a time (continuous
batching of generation). Each batcher owns a bounded queue (MAX_QUEUE: a full queue is a 429) and one worker thread, so the
event loop keeps serving while the model computes.

**Adaptive batching** (MicroBatcher). A request never waits for company while the model is idle:
the worker takes the first waiting request, everything else already queued (up to MAX_BATCH) and
runs the call at once. Requests that arrive while a call runs queue up and form the next batch
the moment the call returns. MAX_WAIT_MS is kept, but only as a bound on holding a batch right
after the model was busy: when the batch's first request arrived while the previous call ran (or
within MAX_WAIT_MS of its end), the worker expects as many requests as that call answered plus
those then waiting (the demand it just saw, at most MAX_BATCH), and holds the batch until that
many are in or MAX_WAIT_MS have passed since the previous call ended, whichever is first. Why:

* at concurrency 1 the demand is one request, so a lone request never waits: its queue wait is
  the event loop's turn, not MAX_WAIT_MS (the old batcher held every first request that long;
  issue 17: retrieval p50 2.8 -> 9.0 ms at concurrency 1);
* under a closed loop of c <= MAX_BATCH clients, the clients of a batch that just returned come
  back within a few milliseconds; without the hold the first of them would run alone and the
  rest as a second batch, halving the batch size for good (batches of 1 and c - 1 alternate);
  with it they run together again;
* at or above MAX_BATCH waiting requests nothing is held, and the model never idles more than
  MAX_WAIT_MS while requests wait (MAX_WAIT_MS=0: never). MAX_BATCH=1 still means no batching.

Each request waits on its own future until its deadline (504); the deadline is the request's, end
to end (service/engine.py). A request whose deadline has passed, or whose client stopped waiting,
never reaches the call: it is dropped when its batch is formed, and its queue slot is reclaimed
when the queue fills up. One whose batch is already computing is simply not waited for (a thread
cannot be interrupted), so a client hears back by its deadline whatever the model does. The call
is handed the latest deadline of its live requests (a model that can stop there, such as a remote
generator's HTTP call, does, so the worker is not kept busy after every client got its 504). When
a batched call raises, each of its requests is run again alone (with its own deadline), so a
request that makes the model fail (a poison request) gets the error and its batch-mates get their
answers. A failure is a BackendFailed carrying its reason (service/errors.py: failure_reason), or
a DeadlineExceeded when the request's deadline has passed by the time the call raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.errors import (
    BackendFailed,
    BackendUnavailable,
    DeadlineExceeded,
    Overloaded,
    failure_reason,
)
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

Request = TypeVar("Request")
Result = TypeVar("Result")

# A batched call: the requests, in order, and the latest deadline (time.monotonic()) among them;
# one result per request, in order.
BatchCall = Callable[[list[Request], float], list[Result]]


@dataclass(frozen=True)
class BatchLimits:
    max_batch: int = 16
    max_wait_s: float = 0.005
    max_queue: int = 64


@dataclass
class _Job(Generic[Request, Result]):
    request: Request
    deadline: float  # time.monotonic()
    future: asyncio.Future[Result]
    enqueued: float = field(default_factory=time.monotonic)

    def dead(self, now: float) -> bool:
        """Its client stopped waiting (answered, timed out, gone) or its deadline has passed."""
        return self.future.done() or self.deadline <= now

    def expire(self) -> None:
        if not self.future.done():
            self.future.set_exception(DeadlineExceeded("deadline passed while queued"))


class _JobQueue(Generic[Request, Result]):
    """The bounded FIFO of a batcher's waiting requests (event-loop side only).

    Unlike asyncio.Queue it can drop requests nobody waits for any more: when it is full,
    the jobs whose deadline passed (or whose client left) give their slots back first, so
    a burst that timed out in the queue does not turn the next requests away with 429."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._jobs: deque[_Job[Request, Result]] = deque()
        self._waiting = asyncio.Event()

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: _Job[Request, Result]) -> bool:
        """Queue ``job``; False when the queue is full of live requests."""
        if len(self._jobs) >= self.maxsize:
            self._expire(time.monotonic())
        if len(self._jobs) >= self.maxsize:
            return False
        self._jobs.append(job)
        self._waiting.set()
        return True

    def _expire(self, now: float) -> None:
        live: deque[_Job[Request, Result]] = deque()
        for job in self._jobs:
            if job.dead(now):
                job.expire()
            else:
                live.append(job)
        self._jobs = live

    def get_nowait(self) -> _Job[Request, Result] | None:
        return self._jobs.popleft() if self._jobs else None

    async def get(self, timeout: float | None = None) -> _Job[Request, Result] | None:
        """The oldest job, waiting up to ``timeout`` seconds (None: for ever) for one."""
        while not self._jobs:
            self._waiting.clear()
            if timeout is None:
                await self._waiting.wait()
                continue
            try:
                await asyncio.wait_for(self._waiting.wait(), timeout)
            except TimeoutError:
                return None
            timeout = 0.0
        return self._jobs.popleft()

    def drain(self) -> list[_Job[Request, Result]]:
        jobs, self._jobs = list(self._jobs), deque()
        return jobs


class MicroBatcher(Generic[Request, Result]):
    """Runs ``run_batch`` (one result per request, in order) over micro-batches of requests.

    ``name`` labels its metrics, thread and errors (the service names a batcher after its
    backend); the batch size and each request's queue wait go to ``metrics``. ``run_batch`` also
    gets the latest deadline of the batch's requests (:data:`BatchCall`)."""

    def __init__(
        self,
        name: str,
        run_batch: BatchCall[Request, Result],
        limits: BatchLimits,
        metrics: ServiceMetrics,
    ) -> None:
        self.name = name
        self.run_batch = run_batch
        self.limits = limits
        self.metrics = metrics
        self.executor: ThreadPoolExecutor | None = None  # the one thread the batches run in
        self._queue: _JobQueue[Request, Result] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._current: list[_Job[Request, Result]] = []  # taken from the queue, not yet answered
        self._accepting = False
        self._call_ended = -math.inf  # time.monotonic() when the last call returned
        self._demand = 1  # requests the last call answered + those waiting then (<= max_batch)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._queue = _JobQueue(self.limits.max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-infer")
        self._worker = asyncio.create_task(self._run(), name=f"{self.name}-batcher")
        self._accepting = True

    async def stop(self, drain_s: float = 0.0) -> None:
        """Stop taking work, let queued and running batches finish for up to ``drain_s``, then
        fail whatever is left and wait for the call in flight."""
        self._accepting = False
        if self._queue is not None:
            waited_until = time.monotonic() + drain_s
            while (len(self._queue) or self._current) and time.monotonic() < waited_until:
                await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        leftovers = list(self._current)
        if self._queue is not None:
            leftovers += self._queue.drain()
        for job in leftovers:
            if not job.future.done():
                job.future.set_exception(BackendUnavailable(f"the {self.name} backend stopped"))
        self._current = []
        if self.executor is not None:
            await asyncio.to_thread(self.executor.shutdown, wait=True)
            self.executor = None

    @property
    def busy(self) -> int:
        """Requests queued or in the call now running."""
        return (len(self._queue) if self._queue is not None else 0) + len(self._current)

    # --- serving -----------------------------------------------------------------------------

    async def submit(self, request: Request, deadline: float) -> Result:
        """Queue one request and wait for its result until ``deadline`` (time.monotonic())."""
        if self._queue is None or not self._accepting:
            raise BackendUnavailable(f"the {self.name} backend is not running")
        remaining = time_left(self.name, deadline)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        if not self._queue.put(_Job(request, deadline, future)):
            raise Overloaded(
                f"the {self.name} backend has {self.limits.max_queue} requests queued; retry later"
            )
        return await wait_until(future, self.name, remaining)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            self._current = []
            first = await self._queue.get()
            assert first is not None
            batch = [first]
            self._current = batch
            # Requests that arrived in the same turn of the event loop join (costs microseconds).
            await asyncio.sleep(0)
            self._take_waiting(batch)
            await self._hold(batch, first)
            # Requests whose deadline passed while queued (or whose client left) never reach
            # the call: their clients already have (or are about to get) a 504.
            now = time.monotonic()
            live = [job for job in batch if not job.dead(now)]
            for job in batch:
                if job not in live:
                    job.expire()
            if not live:
                continue
            for job in live:
                self.metrics.observe_stage("queue", now - job.enqueued)
            try:
                results = await self._call(loop, live)
            except Exception as exc:
                self._ended(len(live))
                if len(live) == 1:
                    logger.exception("%s backend failed on a request", self.name)
                    self._fail(live[0], exc)
                    continue
                # One bad request must not fail its neighbours: run each alone, so only the
                # request(s) that fail by themselves get the error.
                logger.warning(
                    "%s backend failed on a batch of %d; retrying each request alone",
                    self.name,
                    len(live),
                    exc_info=True,
                )
                await self._retry_alone(loop, live)
                self._ended(len(live))
                continue
            self._ended(len(live))
            for job, result in zip(live, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    def _take_waiting(self, batch: list[_Job[Request, Result]]) -> None:
        """Add what is already queued, up to MAX_BATCH."""
        assert self._queue is not None
        while len(batch) < self.limits.max_batch:
            job = self._queue.get_nowait()
            if job is None:
                break
            batch.append(job)

    def _ended(self, answered: int) -> None:
        """A call returned: remember when, and the demand it saw (its requests + those waiting)."""
        assert self._queue is not None
        self._call_ended = time.monotonic()
        self._demand = min(self.limits.max_batch, answered + len(self._queue))

    async def _hold(self, batch: list[_Job[Request, Result]], first: _Job[Request, Result]) -> None:
        """Right after a busy call, wait (up to MAX_WAIT_MS after it ended) for the demand it saw
        to come back; a request that finds the model idle is never held (module docstring)."""
        assert self._queue is not None
        hold_until = self._call_ended + self.limits.max_wait_s
        if first.enqueued > hold_until or len(batch) >= self._demand:
            return
        while len(batch) < self._demand:
            wait = hold_until - time.monotonic()
            if wait <= 0:
                break
            job = await self._queue.get(wait)
            if job is None:
                break
            batch.append(job)
        self._take_waiting(batch)  # past the hold, what is already waiting still costs nothing

    async def _call(
        self, loop: asyncio.AbstractEventLoop, jobs: list[_Job[Request, Result]]
    ) -> list[Result]:
        assert self.executor is not None
        return await loop.run_in_executor(
            self.executor,
            self._run_counted,
            [job.request for job in jobs],
            max(job.deadline for job in jobs),
        )

    def _run_counted(self, requests: list[Request], deadline: float) -> list[Result]:
        self.metrics.observe_batch(self.name, len(requests))
        results = self.run_batch(requests, deadline)
        if len(results) != len(requests):
            raise RuntimeError(f"{len(results)} results for {len(requests)} requests")
        return results

    def _fail(self, job: _Job[Request, Result], exc: BaseException) -> None:
        if job.future.done():
            return
        if job.deadline <= time.monotonic():  # too late to answer anything but 504
            job.future.set_exception(late(self.name))
        else:
            job.future.set_exception(_failed(self.name, exc))

    async def _retry_alone(
        self, loop: asyncio.AbstractEventLoop, jobs: list[_Job[Request, Result]]
    ) -> None:
        """After a failed batch: each request of it in its own call, in order."""
        for job in jobs:
            if job.dead(time.monotonic()):  # its client stopped waiting, or its deadline passed
                job.expire()
                continue
            try:
                [result] = await self._call(loop, [job])
            except Exception as exc:
                logger.exception("%s backend failed on a request (run alone)", self.name)
                self._fail(job, exc)
                continue
            if not job.future.done():
                job.future.set_result(result)


def late(name: str) -> DeadlineExceeded:
    """The client's error when backend ``name`` has not answered by the request's deadline."""
    return DeadlineExceeded(f"the {name} backend did not answer within the request deadline")


def time_left(name: str, deadline: float) -> float:
    """Seconds until ``deadline`` (time.monotonic()); raises :func:`late` when none are left,
    so a request whose deadline has passed is never queued."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise late(name)
    return remaining


async def wait_until(future: asyncio.Future[Result], name: str, remaining: float) -> Result:
    """The result of a queued request, or :func:`late` when ``remaining`` seconds pass first."""
    try:
        return await asyncio.wait_for(future, timeout=max(remaining, 0.0))
    except TimeoutError:
        raise late(name) from None


def _failed(name: str, exc: BaseException) -> BackendFailed:
    """The client's error for a model call that raised ``exc`` (generic; the reason labels it)."""
    reason = failure_reason(exc)
    what = f"the {name} backend failed"
    return BackendFailed(what if reason == "error" else f"{what} ({reason})", reason=reason)

"""A micro-batcher: concurrent requests gathered into batched calls that run off the event loop.

It knows no model: it is given a function from a list of requests to a list of results and runs
it for each batch. Each batcher owns a bounded queue (MAX_QUEUE: a full queue is a 429) and one
worker task. The worker takes the first waiting request, gathers more for up to MAX_WAIT_MS or
until MAX_BATCH, and runs one batched call in the batcher's own single worker thread, so the
event loop keeps serving while the model computes. Each request waits on its own future until its
deadline (504); the deadline is the request's, end to end (service/engine.py). A request whose
deadline has passed, or whose client stopped waiting, never reaches the call: it is dropped when
its batch is formed, and its queue slot is reclaimed when the queue fills up. One whose batch is
already computing is simply not waited for (a thread cannot be interrupted), so a client hears
back by its deadline whatever the model does. When a batched call raises, each of its requests is
run again alone, so a request that makes the model fail (a poison request) gets the error and its
batch-mates get their answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.errors import BackendFailed, BackendUnavailable, DeadlineExceeded, Overloaded
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

Request = TypeVar("Request")
Result = TypeVar("Result")


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
    backend); the batch size and each request's queue wait go to ``metrics``."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[Request]], list[Result]],
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

    # --- serving -----------------------------------------------------------------------------

    async def submit(self, request: Request, deadline: float) -> Result:
        """Queue one request and wait for its result until ``deadline`` (time.monotonic())."""
        if self._queue is None or not self._accepting:
            raise BackendUnavailable(f"the {self.name} backend is not running")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(
                f"the {self.name} backend did not answer within the request deadline"
            )
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        if not self._queue.put(_Job(request, deadline, future)):
            raise Overloaded(
                f"the {self.name} backend has {self.limits.max_queue} requests queued; retry later"
            )
        try:
            return await asyncio.wait_for(future, timeout=max(remaining, 0.0))
        except TimeoutError:
            raise DeadlineExceeded(
                f"the {self.name} backend did not answer within the request deadline"
            ) from None

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            self._current = []
            first = await self._queue.get()
            assert first is not None
            batch = [first]
            self._current = batch
            flush_at = time.monotonic() + self.limits.max_wait_s
            while len(batch) < self.limits.max_batch:
                wait = flush_at - time.monotonic()
                # Past the flush time, still take what is already waiting: it costs nothing.
                job = self._queue.get_nowait() if wait <= 0 else await self._queue.get(wait)
                if job is None:
                    break
                batch.append(job)
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
            except Exception:
                if len(live) == 1:
                    logger.exception("%s backend failed on a request", self.name)
                    self._fail(live[0])
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
                continue
            for job, result in zip(live, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    async def _call(
        self, loop: asyncio.AbstractEventLoop, jobs: list[_Job[Request, Result]]
    ) -> list[Result]:
        assert self.executor is not None
        return await loop.run_in_executor(
            self.executor, self._run_counted, [job.request for job in jobs]
        )

    def _run_counted(self, requests: list[Request]) -> list[Result]:
        self.metrics.observe_batch(self.name, len(requests))
        results = self.run_batch(requests)
        if len(results) != len(requests):
            raise RuntimeError(f"{len(results)} results for {len(requests)} requests")
        return results

    def _fail(self, job: _Job[Request, Result]) -> None:
        if not job.future.done():
            job.future.set_exception(BackendFailed(f"the {self.name} backend failed"))

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
            except Exception:
                logger.exception("%s backend failed on a request (run alone)", self.name)
                self._fail(job)
                continue
            if not job.future.done():
                job.future.set_result(result)

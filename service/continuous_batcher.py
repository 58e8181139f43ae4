"""Continuous (iteration-level) batching: requests join a running set at iteration boundaries
and leave it, answered, the moment they end (the generative backend's decoder runs in it:
service/continuous.py over models/continuous.py). It shares the micro-batcher's limits (MAX_BATCH
running, MAX_QUEUE waiting: a full queue is a 429), deadlines (504) and failure handling (a failed
step reruns each request alone); service/batching.py explains those.

With ``prepare_ahead`` (the PREFILL_THREAD setting) a second thread prepares waiting requests
(tokenizes and encodes them: the prefill) while the first one steps, as servers that separate
prefill from decode do, so that a busy decoder admits requests whose encoding is done instead of
stopping every step to encode the newcomers itself. On a CPU the two threads run on two cores
(torch releases the GIL inside its kernels). An idle decoder takes a lone request itself, with
no hand-off, and the second thread works only while the decoder is busy."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from service.batching import (
    BatchCall,
    BatchLimits,
    Request,
    Result,
    _failed,
    time_left,
    wait_until,
)
from service.errors import BackendFailed, BackendUnavailable, DeadlineExceeded, Overloaded
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

_Req = TypeVar("_Req", contravariant=True)
_Res = TypeVar("_Res", covariant=True)


class StepRunner(Protocol[_Req, _Res]):
    """A model that works on a running set of requests one iteration at a time (the generative
    backend's decoder, service/continuous.py). Called from the batcher's stepping thread only,
    except :meth:`prepare` (its preparing thread, with ``prepare_ahead``)."""

    def prepare(self, requests: Sequence[_Req]) -> Sequence[object]:
        """Work on waiting requests that needs no running set (tokenizing, encoding), one result
        per request, for :meth:`admit`; runs beside :meth:`step` on another thread."""

    def admit(self, key: int, request: _Req, prepared: object | None = None) -> None:
        """Take ``request`` into the running set (from the next step on), with what
        :meth:`prepare` made of it if it went through that; raising fails it alone."""

    def step(self) -> Sequence[tuple[int, _Res]]:
        """One iteration for every running request; the requests that ended, with their results."""

    def cancel(self, key: int) -> None:
        """Drop a running request (its client stopped waiting)."""

    def reset(self) -> None:
        """Drop every running request (after a failed step)."""


@dataclass
class _ThreadJob(Generic[Request, Result]):
    request: Request
    deadline: float  # time.monotonic()
    future: asyncio.Future[Result]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)

    def dead(self, now: float) -> bool:
        return self.future.done() or self.deadline <= now

    def settle(self, result: Result | None = None, error: BaseException | None = None) -> None:
        """Resolve the client's future from any thread (a no-op once it is done)."""

        def resolve() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)  # type: ignore[arg-type]

        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            self.loop.call_soon_threadsafe(resolve)


class ContinuousBatcher(Generic[Request, Result]):
    """Continuous batching: requests join a running set at iteration boundaries and leave it,
    answered, the moment they end; the runner never waits for a batch to form.

    Its own thread loops: admit queued requests while fewer than MAX_BATCH run (live ones only:
    a request past its deadline, or whose client left, is answered 504 / dropped, and a running
    one is cancelled at the next boundary), run one :meth:`StepRunner.step`, answer what ended.
    With nothing running or queued the thread sleeps. MAX_QUEUE bounds the requests waiting
    for admission (429 beyond), MAX_WAIT_MS plays no part (an idle runner starts a request at
    once, a busy one takes it at its next step). ``batch_size`` is observed whenever requests
    are admitted: the requests running from that step on (it tells the batch a request joined;
    one observation per step would drown it). When a step raises, every running request is run again alone through
    ``run_alone`` (the request-level path, given the request's deadline), so a poison request
    fails alone, as in :class:`MicroBatcher`.

    ``prepare_ahead``: while requests run, a second thread takes the queued ones (all of them,
    up to MAX_BATCH prepared and not yet admitted) and runs :meth:`StepRunner.prepare` on them
    together; the stepping thread admits prepared requests as rows free up. When nothing runs,
    the stepping thread admits queued requests itself (a lone request is never handed between
    threads). A prepare that raises is retried request by request, so a request the runner
    refuses fails alone.
    """

    def __init__(
        self,
        name: str,
        runner: StepRunner[Request, Result],
        limits: BatchLimits,
        metrics: ServiceMetrics,
        run_alone: BatchCall[Request, Result],
        *,
        prepare_ahead: bool = False,
    ) -> None:
        self.name = name
        self.runner = runner
        self.limits = limits
        self.metrics = metrics
        self.run_alone = run_alone
        self.prepare_ahead = prepare_ahead
        self._inbox: deque[_ThreadJob[Request, Result]] = deque()
        self._ready: deque[tuple[_ThreadJob[Request, Result], object]] = deque()  # prepared
        self._preparing = 0  # jobs the preparing thread holds right now
        self._running: dict[int, _ThreadJob[Request, Result]] = {}
        lock = threading.Lock()
        self._wake = threading.Condition(lock)  # the stepping thread waits on it
        self._wake_preparer = threading.Condition(lock)
        self._decoding = False  # the stepping thread has requests running (under the lock)
        self._thread: threading.Thread | None = None
        self._preparer: threading.Thread | None = None
        self._accepting = False
        self._stopping = False
        self._keys = itertools.count()

    @property
    def busy(self) -> int:
        """Requests queued, being prepared, prepared or running."""
        return len(self._inbox) + self._preparing + len(self._ready) + len(self._running)

    async def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(
            target=self._loop, name=f"{self.name}-continuous", daemon=True
        )
        self._thread.start()
        if self.prepare_ahead:
            self._preparer = threading.Thread(
                target=self._prepare_loop, name=f"{self.name}-prefill", daemon=True
            )
            self._preparer.start()
        self._accepting = True

    async def stop(self, drain_s: float = 0.0) -> None:
        """Stop taking work, let queued and running requests finish for up to ``drain_s``, then
        fail whatever is left and wait for the step in flight."""
        self._accepting = False
        waited_until = time.monotonic() + drain_s
        while self.busy and time.monotonic() < waited_until:
            await asyncio.sleep(0.01)
        with self._wake:
            self._stopping = True
            self._wake.notify()
            self._wake_preparer.notify()
        for thread in (self._preparer, self._thread):
            if thread is not None:
                await asyncio.to_thread(thread.join)
        self._thread = self._preparer = None
        with self._wake:
            leftovers = (
                list(self._inbox) + [job for job, _ in self._ready] + list(self._running.values())
            )
            self._inbox.clear()
            self._ready.clear()
            self._running.clear()
        for job in leftovers:
            job.settle(error=BackendUnavailable(f"the {self.name} backend stopped"))
        self.runner.reset()

    async def submit(self, request: Request, deadline: float) -> Result:
        """Queue one request and wait for its result until ``deadline`` (time.monotonic())."""
        if self._thread is None or not self._accepting:
            raise BackendUnavailable(f"the {self.name} backend is not running")
        remaining = time_left(self.name, deadline)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        with self._wake:
            if len(self._inbox) >= self.limits.max_queue:
                now = time.monotonic()
                for job in [j for j in self._inbox if j.dead(now)]:
                    self._inbox.remove(job)
                    job.settle(error=DeadlineExceeded("deadline passed while queued"))
            if len(self._inbox) >= self.limits.max_queue:
                raise Overloaded(
                    f"the {self.name} backend has {self.limits.max_queue} requests queued; "
                    "retry later"
                )
            self._inbox.append(_ThreadJob(request, deadline, future, loop))
            if self._preparer is not None and self._decoding:
                self._wake_preparer.notify()  # the decoder is busy: prepare it meanwhile
            else:
                self._wake.notify()
        return await wait_until(future, self.name, remaining)

    # --- the thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        """The stepping thread: admit, cancel the dead, step, answer; sleep when idle."""
        while True:
            with self._wake:
                while (
                    not self._inbox and not self._ready and not self._running and not self._stopping
                ):
                    self._decoding = False
                    self._wake.wait()
                if self._stopping:
                    return
                room = self.limits.max_batch - len(self._running)
                prepared = [self._ready.popleft() for _ in range(min(room, len(self._ready)))]
                room -= len(prepared)
                # queued requests are the preparing thread's while the decoder is busy
                own = self._preparer is None or not (self._running or prepared)
                n = min(room, len(self._inbox)) if own else 0
                taken = [(self._inbox.popleft(), None) for _ in range(n)]
                self._decoding = bool(self._running or prepared or taken)
                if self._preparer is not None and self._decoding and self._inbox:
                    self._wake_preparer.notify()
            try:
                self._admit(prepared, queued=False)
                self._admit(taken, queued=True)
                self._cancel_dead()
                if self._running:
                    self._step()
            except Exception:  # never let the thread die: fail what runs, keep serving
                logger.exception("%s continuous batcher failed", self.name)
                self._fail_running()

    def _prepare_loop(self) -> None:
        """The preparing thread (``prepare_ahead``): while the decoder is busy, prepare what is
        queued, up to MAX_BATCH prepared and waiting for a row."""
        limit = self.limits.max_batch
        while True:
            with self._wake:
                while not self._stopping and not (
                    self._inbox and self._decoding and len(self._ready) < limit
                ):
                    self._wake_preparer.wait()
                if self._stopping:
                    return
                n = min(limit - len(self._ready), len(self._inbox))
                jobs = [self._inbox.popleft() for _ in range(n)]
                self._preparing = len(jobs)
            ready: list[tuple[_ThreadJob[Request, Result], object]] = []
            try:
                ready = self._prepare(jobs)
            except Exception as exc:  # never let the thread die: fail these, keep preparing
                logger.exception("%s prefill thread failed", self.name)
                for job in jobs:
                    job.settle(error=_failed(self.name, exc))
            finally:
                with self._wake:
                    self._ready.extend(ready)
                    self._preparing = 0
                    self._wake.notify()

    def _prepare(
        self, jobs: list[_ThreadJob[Request, Result]]
    ) -> list[tuple[_ThreadJob[Request, Result], object]]:
        """The live jobs with what the runner prepared of them; the others answered."""
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.dead(now):
                job.settle(error=DeadlineExceeded("deadline passed while queued"))
                continue
            self.metrics.observe_stage("queue", now - job.enqueued)
            live.append(job)
        if not live:
            return []
        if len(live) > 1:
            try:
                return list(zip(live, self.runner.prepare([j.request for j in live]), strict=True))
            except Exception:  # one of them is refused: each alone, so it fails alone
                logger.warning(
                    "%s backend failed to prepare %d requests; preparing each alone",
                    self.name,
                    len(live),
                    exc_info=True,
                )
        out = []
        for job in live:
            try:
                [prepared] = self.runner.prepare([job.request])
            except Exception as exc:
                logger.exception("%s backend failed to prepare a request", self.name)
                job.settle(error=_failed(self.name, exc))
                continue
            out.append((job, prepared))
        return out

    def _admit(
        self, jobs: Sequence[tuple[_ThreadJob[Request, Result], object | None]], *, queued: bool
    ) -> None:
        """Admit jobs, straight from the queue (``queued``: not prepared) or prepared."""
        now = time.monotonic()
        before = len(self._running)
        for job, prepared in jobs:
            if job.dead(now):
                job.settle(error=DeadlineExceeded("deadline passed while queued"))
                continue
            if queued:
                self.metrics.observe_stage("queue", now - job.enqueued)
            key = next(self._keys)
            try:
                if prepared is None:
                    self.runner.admit(key, job.request)
                else:
                    self.runner.admit(key, job.request, prepared)
            except Exception as exc:
                logger.exception("%s backend failed to admit a request", self.name)
                job.settle(error=_failed(self.name, exc))
                continue
            self._running[key] = job
        if len(self._running) > before:
            self.metrics.observe_batch(self.name, len(self._running))

    def _cancel_dead(self) -> None:
        now = time.monotonic()
        for key, job in list(self._running.items()):
            if job.dead(now):
                self.runner.cancel(key)
                del self._running[key]
                job.settle(error=DeadlineExceeded("deadline passed while computing"))

    def _step(self) -> None:
        try:
            ended = self.runner.step()
        except Exception:
            logger.warning(
                "%s backend failed on a step of %d; running each request alone",
                self.name,
                len(self._running),
                exc_info=True,
            )
            jobs = list(self._running.values())
            self._running.clear()
            self.runner.reset()
            for job in jobs:
                if job.dead(time.monotonic()):
                    job.settle(error=DeadlineExceeded("deadline passed"))
                    continue
                try:
                    [result] = self.run_alone([job.request], job.deadline)
                except Exception as exc:
                    logger.exception("%s backend failed on a request (run alone)", self.name)
                    job.settle(error=_failed(self.name, exc))
                    continue
                job.settle(result)
            return
        finished = [
            (self._running.pop(key), result) for key, result in ended if key in self._running
        ]
        if not self._running:
            # idle from here: say so before answering, or a request submitted in reply to the
            # last answer could be taken by the preparing thread (a lone request is the
            # stepping thread's own, never handed between threads)
            with self._wake:
                self._decoding = bool(self._ready)
        for job, result in finished:
            job.settle(result)

    def _fail_running(self) -> None:
        jobs = list(self._running.values())
        self._running.clear()
        with contextlib.suppress(Exception):
            self.runner.reset()
        for job in jobs:
            job.settle(error=BackendFailed(f"the {self.name} backend failed"))

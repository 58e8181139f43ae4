"""The generative backend's continuous batching in a process of its own (DECODER_PROCESS).

In one process the decoder thread shares the interpreter lock with the event loop that serves
HTTP: every torch call releases the lock and must take it back, and while the loop runs Python
(parsing, validating, routing a request) the decoder waits. With a small model on a CPU a
decoder step is ~100 short torch calls, so under load it spends a good part of its time waiting
for the lock rather than computing (reports/service_peer_s12.md measures it). This module runs
the continuous batcher (service/continuous_batcher.py, with its preparing thread) in a child
process that serves nothing but the decoder, as LitServe and TGI put the model in a process of
its own; the HTTP process only forwards requests and answers.

* **Child**: started with ``spawn``, it loads the same generator bundle and builds the same
  output safety filter from the same settings, runs a :class:`~service.backends.GenerativeBackend`
  with continuous batching on, and answers ``("respond", id, context, config, deadline)``
  messages on its pipe with ``("ok", id, answer, metrics)`` or ``("error", id, kind, message,
  reason, metrics)``. Deadlines are ``time.monotonic()`` values, the same clock in both processes.
* **Metrics**: the child's backend observes into a :class:`MetricsRelay`, whose observations
  travel with each answer and are replayed into the service's own metrics, so
  ``/metrics`` reads as it does without the child.
* **Errors**: the service errors a request can end with (429 Overloaded, 504, 503) are rebuilt
  in the parent by name; anything else is a generic 503 ``backend_error``, as in one process.
* **Failure**: when the child dies, every request waiting on it fails (503) and a new child is
  started; until it is ready requests get 503 ``backend_unavailable`` (and the fallback arm,
  when FALLBACK allows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from service.answer import Answer
from service.batching import BatchLimits, time_left, wait_until
from service.errors import (
    BackendFailed,
    BackendUnavailable,
    DeadlineExceeded,
    Overloaded,
    ServiceError,
)
from service.metrics import ServiceMetrics
from service.settings import Settings

logger = logging.getLogger(__name__)

# errors rebuilt by name in the parent; anything else is a generic BackendFailed
_ERRORS: dict[str, Callable[[str, str], ServiceError]] = {
    "Overloaded": lambda message, _: Overloaded(message),
    "DeadlineExceeded": lambda message, _: DeadlineExceeded(message),
    "BackendUnavailable": lambda message, _: BackendUnavailable(message),
    "BackendFailed": lambda message, reason: BackendFailed(message, reason),
}


@dataclass(frozen=True)
class ChildSpec:
    """What the child needs to build the same backend as the parent would (picklable)."""

    settings: Settings
    bundle_dir: Path
    device: str
    dtype: str  # a torch dtype's name (torch.bfloat16 -> "bfloat16")
    safety_dir: Path | None
    limits: BatchLimits


class MetricsRelay:
    """Stands in for :class:`ServiceMetrics` in the child: each ``observe_*`` / ``add_*`` call
    (what a backend, its batchers and the safety filter record) is kept, to be replayed by the
    parent (:func:`replay`); anything else is refused, so nothing the parent sets itself (the
    models' info, the arms' weights) is overwritten from here."""

    def __init__(self) -> None:
        self._events: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Callable[..., None]:
        if not name.startswith(("observe_", "add_")):
            raise AttributeError(name)

        def record(*args: Any, **kwargs: Any) -> None:
            with self._lock:
                self._events.append((name, args, kwargs))

        return record

    def drain(self) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        with self._lock:
            events, self._events = self._events, []
        return events


def replay(
    metrics: ServiceMetrics, events: list[tuple[str, tuple[Any, ...], dict[str, Any]]]
) -> None:
    for name, args, kwargs in events:
        getattr(metrics, name)(*args, **kwargs)


# --- the child -----------------------------------------------------------------------------------


def child_main(conn: Connection, spec: ChildSpec) -> None:
    """The child process: serve the decoder on ``conn`` until told to stop or the pipe closes."""
    logging.basicConfig(
        level=spec.settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [decoder process]: %(message)s",
    )
    # the terminal's Ctrl-C reaches the whole group: the parent stops us
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(conn, spec))


async def _serve(conn: Connection, spec: ChildSpec) -> None:
    import torch

    from service.backends import GenerativeBackend
    from service.device import set_threads
    from service.safety import load_safety_filter

    set_threads(spec.settings.torch_threads)
    relay = MetricsRelay()
    metrics = cast(ServiceMetrics, relay)
    device = torch.device(spec.device)
    dtype = getattr(torch, spec.dtype)
    try:
        safety = load_safety_filter(spec.settings, metrics, spec.safety_dir, device)
        backend = GenerativeBackend.load(
            spec.bundle_dir,
            device,
            dtype,
            metrics,
            spec.limits,
            safety,
            continuous="on",
            prefill_thread=spec.settings.prefill_thread,
        )
        await backend.start()
    except Exception as exc:  # the parent logs it and refuses to start
        logger.exception("the decoder process could not load %s", spec.bundle_dir)
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    drain_s = 0.0
    tasks: set[asyncio.Task[None]] = set()

    async def answer(rid: int, context: list[str], params: Any, deadline: float) -> None:
        try:
            reply = await backend.submit(context, params, deadline)
        except ServiceError as exc:
            reason = getattr(exc, "reason", "error")
            conn.send(("error", rid, type(exc).__name__, str(exc), reason, relay.drain()))
        except Exception:
            logger.exception("the decoder process failed on a request")
            conn.send(("error", rid, "", "the generative backend failed", "error", relay.drain()))
        else:
            conn.send(("ok", rid, reply, relay.drain()))

    def readable() -> None:
        nonlocal drain_s
        while not stop.is_set():
            try:
                if not conn.poll():
                    return
                message = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                stop.set()
                return
            if message[0] == "respond":
                task = loop.create_task(answer(*message[1:]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif message[0] == "stop":
                drain_s = float(message[1])
                stop.set()

    loop.add_reader(conn.fileno(), readable)
    conn.send(("ready", backend.responder.bundle_id))
    await stop.wait()
    loop.remove_reader(conn.fileno())
    await backend.stop(drain_s)  # what is still queued or running is answered 503
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(OSError):
        conn.send(("stopped", relay.drain()))


# --- the parent ----------------------------------------------------------------------------------


class ProcessBatcher:
    """The parent's side: :class:`~service.continuous_batcher.ContinuousBatcher`'s interface
    (start, submit, stop, busy) over a child process that runs it."""

    def __init__(self, name: str, spec: ChildSpec, metrics: ServiceMetrics) -> None:
        self.name = name
        self.spec = spec
        self.metrics = metrics
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._restart: asyncio.Task[None] | None = None

    @property
    def busy(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        await self._spawn()

    async def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=child_main, args=(child, self.spec), name=f"{self.name}-decoder", daemon=True
        )
        process.start()
        child.close()
        timeout = max(60.0, self.spec.settings.request_timeout_s)
        message = await asyncio.to_thread(_first_message, parent, process, timeout)
        if message[0] != "ready":
            parent.close()
            process.join(timeout=5)
            raise RuntimeError(f"the {self.name} decoder process did not start: {message[1]}")
        self._process, self._conn = process, parent
        self._stopped = asyncio.Event()
        assert self._loop is not None
        self._loop.add_reader(parent.fileno(), self._readable)
        self._accepting = True
        logger.info("%s decoder process %d ready (%s)", self.name, process.pid, message[1])

    async def submit(self, request: tuple[list[str], Any], deadline: float) -> Answer:
        if not self._accepting or self._conn is None:
            raise BackendUnavailable(f"the {self.name} backend is not running")
        remaining = time_left(self.name, deadline)
        context, params = request
        rid = next(self._ids)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            try:
                self._conn.send(("respond", rid, context, params, deadline))
            except OSError:  # the child just died: _readable restarts it
                raise BackendUnavailable(f"the {self.name} backend is restarting") from None
            return await wait_until(future, self.name, remaining)
        finally:
            self._pending.pop(rid, None)

    def _readable(self) -> None:
        conn = self._conn
        while conn is not None:
            try:
                if not conn.poll():
                    return
                message = conn.recv()
            except (EOFError, OSError):
                self._child_gone()
                return
            kind = message[0]
            if kind == "ok":
                _, rid, answer, events = message
                replay(self.metrics, events)
                self._settle(rid, result=answer)
            elif kind == "error":
                _, rid, name, text, reason, events = message
                replay(self.metrics, events)
                make = _ERRORS.get(name)
                error = make(text, reason) if make else BackendFailed(text, reason)
                self._settle(rid, error=error)
            elif kind == "stopped":
                replay(self.metrics, message[1])
                if self._stopped is not None:
                    self._stopped.set()

    def _settle(
        self, rid: int, result: Answer | None = None, error: BaseException | None = None
    ) -> None:
        future = self._pending.get(rid)
        if future is None or future.done():
            return  # its client stopped waiting
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(cast(Answer, result))

    def _close_pipe(self) -> None:
        if self._conn is not None:
            assert self._loop is not None
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._conn.fileno())
            self._conn.close()
            self._conn = None

    def _child_gone(self) -> None:
        """The pipe closed: the child stopped (as asked) or died (then fail and restart)."""
        self._accepting = False
        self._close_pipe()
        if self._stopped is not None:
            self._stopped.set()
        self._fail_pending(BackendFailed(f"the {self.name} backend failed", "unavailable"))
        if self._stopping:
            return
        code = self._process.exitcode if self._process is not None else None
        logger.error("%s decoder process exited (code %s); starting a new one", self.name, code)
        assert self._loop is not None
        self._restart = self._loop.create_task(self._respawn())

    async def _respawn(self) -> None:
        if self._process is not None:
            await asyncio.to_thread(self._process.join, 5)
        while not self._stopping:
            try:
                await self._spawn()
                return
            except Exception:
                logger.exception("%s decoder process failed to restart; retrying", self.name)
                await asyncio.sleep(1.0)

    def _fail_pending(self, error: BaseException) -> None:
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(error)

    async def stop(self, drain_s: float = 0.0) -> None:
        """Stop taking work; the child lets queued and running requests finish for up to
        ``drain_s`` (answering the rest 503) and exits."""
        self._accepting = False
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._restart
        process, conn = self._process, self._conn
        if conn is not None and self._stopped is not None:
            with contextlib.suppress(OSError):
                conn.send(("stop", drain_s))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout=drain_s + 30)
        self._close_pipe()
        if process is not None:
            await asyncio.to_thread(process.join, 10)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join)
        self._process = None
        self._fail_pending(BackendUnavailable(f"the {self.name} backend stopped"))


def _first_message(conn: Connection, process: Any, timeout: float) -> tuple[Any, ...]:
    """The child's first message ("ready" or "failed"), or "failed" when it exits or is silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.poll(0.1):
            try:
                return cast(tuple[Any, ...], conn.recv())
            except EOFError:
                break
        if not process.is_alive():
            break
    if process.is_alive():
        process.kill()
    return (
        "failed",
        f"exit code {process.exitcode}" if process.exitcode is not None else "timeout",
    )

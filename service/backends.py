"""Backends: the two responders behind a micro-batching queue, run off the event loop.

Each backend owns an asyncio queue (bounded by MAX_QUEUE: a full queue is a 429) and one worker
task. The worker takes the first waiting request, gathers more for up to MAX_WAIT_MS or until
MAX_BATCH, and runs one batched model call in the backend's own single worker thread, so the event
loop keeps serving while the model computes. Each request waits on its own future until its
deadline (504); the deadline is the request's, end to end (service/engine.py). A request whose
deadline has passed, or whose client stopped waiting, never reaches the model: it is dropped when
its batch is formed, and its queue slot is reclaimed when the queue fills up. One whose batch is
already computing is simply not waited for (a thread cannot be interrupted), so a client hears
back by its deadline whatever the model does. When a batched
model call raises, each of its requests is run again alone, so a request that makes the model
fail (a poison request) gets the error and its batch-mates get their answers.

With the output safety filter on (service/safety.py), each backend checks its replies in the same
worker thread, batched like the model call: the retriever replaces a blocked reply by its
best-ranked safe candidate of the top ``SAFETY_CANDIDATES`` (and drops unsafe candidates from the
list it returns), the generator samples ``SAFETY_CANDIDATES`` alternatives for a blocked reply
and takes the first safe one; with none safe the reply is the fallback reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from models.bundle import Manifest
from models.decoding import DecodingConfig, generate
from models.generator import GenerativeResponder
from models.retriever import RetrievalResponder
from service.errors import (
    BackendFailed,
    BackendUnavailable,
    DeadlineExceeded,
    InvalidOptions,
    Overloaded,
)
from service.metrics import ServiceMetrics
from service.safety import Block, BlockReason, SafetyFilter
from service.schemas import ResponseOptions

logger = logging.getLogger(__name__)

_DECODING_OPTIONS = (
    "strategy",
    "max_length",
    "min_length",
    "beam_size",
    "temperature",
    "top_k",
    "top_p",
    "no_repeat_ngram_size",
)


@dataclass(frozen=True)
class BatchLimits:
    max_batch: int = 16
    max_wait_s: float = 0.005
    max_queue: int = 64


@dataclass
class Answer:
    """One request's result from a backend."""

    text: str
    candidates: list[tuple[str, float]] | None = None
    generated_tokens: int = 0
    block: Block | None = None  # set when the safety filter blocked the first reply


@dataclass
class _Job:
    context: list[str]
    params: Hashable
    deadline: float  # time.monotonic()
    future: asyncio.Future[Answer]
    enqueued: float = field(default_factory=time.monotonic)

    def dead(self, now: float) -> bool:
        """Its client stopped waiting (answered, timed out, gone) or its deadline has passed."""
        return self.future.done() or self.deadline <= now


class _JobQueue:
    """The bounded FIFO of a backend's waiting requests (event-loop side only).

    Unlike asyncio.Queue it can drop requests nobody waits for any more: when it is full,
    the jobs whose deadline passed (or whose client left) give their slots back first, so
    a burst that timed out in the queue does not turn the next requests away with 429."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._jobs: deque[_Job] = deque()
        self._waiting = asyncio.Event()

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: _Job) -> bool:
        """Queue ``job``; False when the queue is full of live requests."""
        if len(self._jobs) >= self.maxsize:
            self._expire(time.monotonic())
        if len(self._jobs) >= self.maxsize:
            return False
        self._jobs.append(job)
        self._waiting.set()
        return True

    def _expire(self, now: float) -> None:
        live: deque[_Job] = deque()
        for job in self._jobs:
            if job.dead(now):
                _expire(job)
            else:
                live.append(job)
        self._jobs = live

    def get_nowait(self) -> _Job | None:
        return self._jobs.popleft() if self._jobs else None

    async def get(self, timeout: float | None = None) -> _Job | None:
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

    def drain(self) -> list[_Job]:
        jobs, self._jobs = list(self._jobs), deque()
        return jobs


def _expire(job: _Job) -> None:
    if not job.future.done():
        job.future.set_exception(DeadlineExceeded("deadline passed while queued"))


class Backend(ABC):
    """A responder behind a bounded queue and a micro-batching worker."""

    name: ClassVar[str]

    def __init__(
        self,
        responder: Any,
        bundle_dir: Path,
        metrics: ServiceMetrics,
        limits: BatchLimits,
        safety: SafetyFilter | None = None,
    ) -> None:
        self.responder = responder
        self.bundle_dir = Path(bundle_dir)
        self.metrics = metrics
        self.limits = limits
        self.safety = safety if safety is not None and safety.enabled else None
        self._queue: _JobQueue | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._current: list[_Job] = []  # taken from the queue, not yet answered
        self._accepting = False

    # --- identity ----------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return str(self.responder.bundle_id)

    @property
    def manifest(self) -> Manifest | None:
        manifest: Manifest | None = self.responder.manifest
        return manifest

    @property
    def device(self) -> str:
        return str(self.responder.device)

    # --- what subclasses provide -------------------------------------------------------------

    @abstractmethod
    def prepare(self, options: ResponseOptions | None) -> Hashable:
        """Validate the request's options for this backend; raises InvalidOptions."""

    @abstractmethod
    def infer(self, contexts: list[list[str]], params: list[Hashable]) -> list[Answer]:
        """One batched model call (runs in the worker thread); one answer per context, in order."""

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._queue = _JobQueue(self.limits.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-infer")
        self._worker = asyncio.create_task(self._run(), name=f"{self.name}-batcher")
        self._accepting = True

    async def stop(self, drain_s: float = 0.0) -> None:
        """Stop taking work, let queued and running batches finish for up to ``drain_s``, then
        fail whatever is left and wait for the model call in flight."""
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
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            self._executor = None

    # --- serving -----------------------------------------------------------------------------

    async def submit(self, context: list[str], params: Hashable, deadline: float) -> Answer:
        """Queue one request and wait for its answer until ``deadline`` (time.monotonic())."""
        if self._queue is None or not self._accepting:
            raise BackendUnavailable(f"the {self.name} backend is not running")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(
                f"the {self.name} backend did not answer within the request deadline"
            )
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        if not self._queue.put(_Job(context, params, deadline, future)):
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
            # the model: their clients already have (or are about to get) a 504.
            now = time.monotonic()
            live = [job for job in batch if not job.dead(now)]
            for job in batch:
                if job not in live:
                    _expire(job)
            if not live:
                continue
            for job in live:
                self.metrics.observe_stage("queue", now - job.enqueued)
            try:
                answers = await self._call(loop, live)
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
            for job, answer in zip(live, answers, strict=True):
                if not job.future.done():
                    job.future.set_result(answer)

    async def _call(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> list[Answer]:
        assert self._executor is not None
        return await loop.run_in_executor(
            self._executor,
            self._infer_logged,
            [job.context for job in jobs],
            [job.params for job in jobs],
        )

    def _fail(self, job: _Job) -> None:
        if not job.future.done():
            job.future.set_exception(BackendFailed(f"the {self.name} backend failed"))

    async def _retry_alone(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        """After a failed batch: each request of it in its own model call, in order."""
        for job in jobs:
            if job.dead(time.monotonic()):  # its client stopped waiting, or its deadline passed
                _expire(job)
                continue
            try:
                [answer] = await self._call(loop, [job])
            except Exception:
                logger.exception("%s backend failed on a request (run alone)", self.name)
                self._fail(job)
                continue
            if not job.future.done():
                job.future.set_result(answer)

    def _infer_logged(self, contexts: list[list[str]], params: list[Hashable]) -> list[Answer]:
        self.metrics.observe_batch(self.name, len(contexts))
        answers = self.infer(contexts, params)
        if len(answers) != len(contexts):
            raise RuntimeError(f"{len(answers)} answers for {len(contexts)} contexts")
        return answers

    def _timed(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.metrics.observe_stage(stage, now - started)
        return now


class GenerativeBackend(Backend):
    """The seq2seq responder; requests with different decoding settings run as separate calls."""

    name = "generative"
    responder: GenerativeResponder

    @classmethod
    def load(
        cls,
        bundle_dir: Path,
        device: torch.device,
        dtype: torch.dtype | None,
        metrics: ServiceMetrics,
        limits: BatchLimits,
        safety: SafetyFilter | None = None,
    ) -> GenerativeBackend:
        responder = GenerativeResponder.load(bundle_dir, device, dtype)
        return cls(responder, bundle_dir, metrics, limits, safety)

    def prepare(self, options: ResponseOptions | None) -> DecodingConfig:
        base = self.responder.decoding
        overrides = {
            key: value
            for key in _DECODING_OPTIONS
            if (value := getattr(options, key, None)) is not None
        }
        # What depends on the loaded model is fitted to it, never refused (the OpenAPI schema
        # states what a request may carry, and a reload must not change that): max_length is
        # lowered to the bundle's own limit, min_length to max_length, and beam_size only
        # matters to beam search (dropped otherwise, so it does not split batches).
        max_length = min(overrides.get("max_length", base.max_length), base.max_length)
        if "max_length" in overrides:
            overrides["max_length"] = max_length
        if overrides.get("min_length", base.min_length) > max_length:
            overrides["min_length"] = max_length
        if overrides.get("strategy", base.strategy) != "beam":
            overrides.pop("beam_size", None)
        try:
            return base.with_overrides(num_return_sequences=1, **overrides)
        except ValueError as exc:
            raise InvalidOptions(f"invalid decoding options: {exc}") from None

    def infer(self, contexts: list[list[str]], params: list[Hashable]) -> list[Answer]:
        answers: list[Answer | None] = [None] * len(contexts)
        groups: dict[Hashable, list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault(p, []).append(i)
        responder = self.responder
        for config, rows in groups.items():
            assert isinstance(config, DecodingConfig)
            started = time.perf_counter()
            src = responder.encode_contexts([contexts[i] for i in rows])
            started = self._timed("tokenize", started)
            out = generate(responder.model, src, config)
            texts = responder.tokenizer.decode_batch(out.tokens)
            self._timed("generate", started)
            for i, tokens, text in zip(rows, out.tokens, texts, strict=True):
                answers[i] = Answer(text=text, generated_tokens=len(tokens))
            self.metrics.add_generated_tokens(sum(len(t) for t in out.tokens))
            if self.safety is not None:
                group = [answers[i] for i in rows]
                self._make_safe(src, [contexts[i][-1] for i in rows], config, group)  # type: ignore[arg-type]
        return [a for a in answers if a is not None]

    def _make_safe(
        self, src: torch.Tensor, turns: list[str], config: DecodingConfig, answers: list[Answer]
    ) -> None:
        """Replace each blocked reply (in place) by the first safe, non-empty one of
        ``SAFETY_CANDIDATES`` samples for its context, else by the fallback reply."""
        safety = self.safety
        assert safety is not None
        reasons = safety.check(turns, [a.text for a in answers])
        # A stated self-harm risk: no sampled reply would pass (only the risk reply does), so
        # serve the risk reply at once instead of drawing alternatives.
        for k_, why in enumerate(reasons):
            if why == "risk":
                answers[k_].text = safety.fallback_for(turns[k_])
                answers[k_].block = Block(why, "replaced")
        blocked = [k for k, why in enumerate(reasons) if why is not None and why != "risk"]
        if not blocked:
            return
        k = safety.candidates
        # Sampling, not the n-best of the same search: alternatives that differ from the blocked
        # reply. Nucleus sampling (Holtzman et al. 2020) keeps them fluent.
        alt_config = config.with_overrides(
            strategy="sample", num_return_sequences=k, top_p=min(config.top_p, 0.9)
        )
        started = time.perf_counter()
        rows = torch.tensor(blocked, device=src.device)
        out = generate(self.responder.model, src.index_select(0, rows), alt_config)
        texts = self.responder.tokenizer.decode_batch(out.tokens)
        self._timed("generate", started)
        self.metrics.add_generated_tokens(sum(len(t) for t in out.tokens))
        alt_reasons = safety.check([turns[b] for b in blocked for _ in range(k)], texts)
        for n, b in enumerate(blocked):
            options = range(n * k, (n + 1) * k)
            safe = [j for j in options if alt_reasons[j] is None and texts[j].strip()]
            reason = reasons[b]
            assert reason is not None
            answer = answers[b]
            answer.generated_tokens += sum(len(out.tokens[j]) for j in options)
            if safe:
                answer.text, answer.block = texts[safe[0]], Block(reason, "reranked")
            else:
                answer.text = safety.fallback_for(turns[b])
                answer.block = Block(reason, "replaced")


class RetrievalBackend(Backend):
    """The bi-encoder + HNSW responder: tokenize -> encode -> search, one call for the batch."""

    name = "retrieval"
    responder: RetrievalResponder

    def __init__(self, *args: Any, max_candidates: int = 10, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_candidates = max_candidates

    @classmethod
    def load(
        cls,
        bundle_dir: Path,
        device: torch.device,
        dtype: torch.dtype | None,
        metrics: ServiceMetrics,
        limits: BatchLimits,
        max_candidates: int = 10,
        safety: SafetyFilter | None = None,
    ) -> RetrievalBackend:
        responder = RetrievalResponder.load(bundle_dir, device, dtype)
        return cls(responder, bundle_dir, metrics, limits, safety, max_candidates=max_candidates)

    def prepare(self, options: ResponseOptions | None) -> int:
        wanted = options.num_candidates if options and options.num_candidates else 1
        if wanted > self.max_candidates:
            raise InvalidOptions(
                f"options.num_candidates must be <= {self.max_candidates}, got {wanted}"
            )
        return wanted

    def infer(self, contexts: list[list[str]], params: list[Hashable]) -> list[Answer]:
        wanted = [int(p) for p in params]  # type: ignore[call-overload]
        top_k = max(wanted)
        if self.safety is not None:  # room to re-rank a blocked reply
            top_k = max(top_k, self.safety.candidates)
        responder = self.responder
        started = time.perf_counter()
        ids = responder.encode_contexts(contexts)
        started = self._timed("tokenize", started)
        embeddings = responder.embed(ids)
        started = self._timed("encode", started)
        hits = responder.search(embeddings, top_k, contexts)  # contexts: hybrid re-ranking
        self._timed("search", started)
        if self.safety is not None:
            return self._safe_answers([c[-1] for c in contexts], hits, wanted)
        answers = []
        for row, n in zip(hits, wanted, strict=True):
            kept = row[:n]
            answers.append(Answer(text=kept[0][0] if kept else "", candidates=kept))
        return answers

    def _safe_answers(
        self, turns: list[str], hits: list[list[tuple[str, float]]], wanted: list[int]
    ) -> list[Answer]:
        """Answers from the safe candidates only, in rank order. The candidates a client would
        see are checked first; the rest of a row only when one of those was unsafe."""
        safety = self.safety
        assert safety is not None
        verdicts: list[dict[int, BlockReason | None]] = [{} for _ in hits]

        def check(pairs: list[tuple[int, int]]) -> None:
            reasons = safety.check([turns[r] for r, _ in pairs], [hits[r][j][0] for r, j in pairs])
            for (r, j), why in zip(pairs, reasons, strict=True):
                verdicts[r][j] = why

        check([(r, j) for r, row in enumerate(hits) for j in range(min(wanted[r], len(row)))])
        check(
            [
                (r, j)
                for r, row in enumerate(hits)
                if any(verdicts[r].values())
                for j in range(wanted[r], len(row))
            ]
        )
        answers = []
        for r, row in enumerate(hits):
            safe = [row[j] for j in sorted(verdicts[r]) if verdicts[r][j] is None]
            first = verdicts[r].get(0)  # why the top-ranked reply was blocked; None if it was not
            if first is None:
                answers.append(
                    Answer(text=safe[0][0] if safe else "", candidates=safe[: wanted[r]])
                )
            elif safe:
                answers.append(
                    Answer(safe[0][0], safe[: wanted[r]], block=Block(first, "reranked"))
                )
            else:
                answers.append(
                    Answer(safety.fallback_for(turns[r]), [], block=Block(first, "replaced"))
                )
        return answers

"""Backends: each responder behind a :class:`~service.batching.MicroBatcher`, called through its
own methods only.

A backend turns a request's options into the responder's parameters (:meth:`Backend.prepare`,
on the event loop, so a bad option is a 422 before anything is queued) and answers a micro-batch
in one responder call (:meth:`Backend.infer`, in the batcher's worker thread), given the latest
deadline of the batch's requests (a remote generator stops its HTTP calls there; local models
ignore it). When it stops (reload, shutdown) it closes its responder (a remote generator's
connections). With the output
safety filter on, each backend hands its replies to the filter's policy (service/safety.py) in
the same thread, batched like the model call: the retriever's are re-ranked, the generator's
re-sampled.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Self, cast

import numpy as np
import torch

from models.bundle import Manifest
from models.decoding import DecodingConfig
from models.generator import GenerativeResponder, Reply, load_generator
from models.responder import Responder
from models.retriever import RetrievalResponder
from service.answer import Answer
from service.batching import BatchLimits, MicroBatcher
from service.continuous import GenerationRunner, alternatives_config, continuous_eligible
from service.continuous_batcher import ContinuousBatcher
from service.errors import InvalidOptions
from service.metrics import ServiceMetrics
from service.safety import SafetyFilter
from service.schemas import ResponseOptions

__all__ = ["Answer", "Backend", "BatchLimits", "GenerativeBackend", "RetrievalBackend"]

logger = logging.getLogger(__name__)

# what a backend answers once before it serves (Backend.warm_up)
WARM_UP_CONTEXT = ["hello , how are you ?"]

_DECODING_OPTIONS = (
    "strategy",
    "max_length",
    "min_length",
    "beam_size",
    "temperature",
    "top_k",
    "top_p",
    "no_repeat_ngram_size",
    "block_adjacent_repeats",
    "anti_lm",
    "anti_lm_steps",
    "anti_lm_plausibility",
)

Job = tuple[list[str], Hashable]  # one request: its context and its prepared parameters


class Backend(ABC):
    """A responder behind a bounded queue and a micro-batching worker."""

    name: ClassVar[str]
    responder_class: ClassVar[type[Responder]]
    responder: Responder

    @classmethod
    def load(
        cls,
        bundle_dir: Path,
        device: torch.device,
        dtype: torch.dtype | None,
        metrics: ServiceMetrics,
        limits: BatchLimits,
        safety: SafetyFilter | None = None,
        load_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Self:
        """Load (and fully verify) the bundle onto ``device``; ``load_options`` go to the
        responder's ``load`` (e.g. the retriever's ``int8``), ``options`` to the backend."""
        if cls.responder_class is GenerativeResponder:
            # a generator of any architecture (ours, Hugging Face, a remote endpoint): the
            # manifest says which class loads it (models/generator.py, load_generator)
            responder: Any = load_generator(bundle_dir, device, dtype)
        else:
            load = cls.responder_class.load
            responder = load(bundle_dir, device, dtype, **(load_options or {}))
        try:
            return cls(responder, bundle_dir, metrics, limits, safety, **options)
        except BaseException:
            responder.close()  # e.g. CONTINUOUS_BATCHING=on refused for a remote generator
            raise

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
        # infer is looked up per batch, so a test may replace it on the instance
        self.batcher: MicroBatcher[Job, Answer] = MicroBatcher(
            self.name, self._infer_jobs, limits, metrics
        )

    # --- identity ----------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.responder.bundle_id

    @property
    def manifest(self) -> Manifest | None:
        return self.responder.manifest

    @property
    def device(self) -> str:
        return str(self.responder.device)

    @property
    def executor(self) -> ThreadPoolExecutor | None:
        """The thread the model calls run in (while started)."""
        return self.batcher.executor

    # --- warm-up -----------------------------------------------------------------------------

    def warm_up(self) -> float | None:
        """Answer :data:`WARM_UP_CONTEXT` once, and run the output filter's classifier once,
        before the backend serves, outside the metrics and the batcher. A model's first call pays
        one-off costs (allocations, kernel choices, a trace's first runs): without this the
        first user of a fresh replica, or of a reloaded bundle, pays them. Skipped for a remote
        generator (no network call at start-up). Returns the seconds it took, or None when
        skipped or failed (a failure is logged; the backend serves anyway: its bundle verified)."""
        if getattr(self.responder, "architecture", None) == "remote-openai":
            return None
        started = time.perf_counter()
        try:
            responder: Any = self.responder  # both kinds answer respond(contexts) by default
            responder.respond([WARM_UP_CONTEXT])
            classifier = self.safety.classifier if self.safety is not None else None
            if classifier is not None:
                classifier.unsafe_probability([WARM_UP_CONTEXT[-1]], ["i am fine , thanks ."])
        except Exception:
            logger.warning("warming up the %s backend failed", self.name, exc_info=True)
            return None
        return time.perf_counter() - started

    # --- what subclasses provide -------------------------------------------------------------

    @abstractmethod
    def prepare(self, options: ResponseOptions | None) -> Hashable:
        """Validate the request's options for this backend; raises InvalidOptions."""

    @abstractmethod
    def infer(
        self, contexts: list[list[str]], params: list[Hashable], deadline: float | None = None
    ) -> list[Answer]:
        """One batched model call (runs in the worker thread); one answer per context, in order.
        ``deadline`` (time.monotonic()): the latest of the batch's requests, for a responder
        that can stop there (a remote generator); None: no bound."""

    def _infer_jobs(self, jobs: list[Job], deadline: float) -> list[Answer]:
        """The batchers' call (service/batching.py, BatchCall)."""
        return self.infer([c for c, _ in jobs], [p for _, p in jobs], deadline=deadline)

    # --- lifecycle and serving: the batcher's ----------------------------------------------------

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self, drain_s: float = 0.0) -> None:
        """Stop taking work, let queued and running batches finish for up to ``drain_s``, then
        fail whatever is left, wait for the model call in flight and close the responder."""
        await self.batcher.stop(drain_s)
        self.close()

    def close(self) -> None:
        """Release what the responder holds besides memory (a remote generator's HTTP client);
        after :meth:`stop`, or for a backend that was loaded but never started (a failed
        reload). Never raises."""
        try:
            self.responder.close()
        except Exception:
            logger.warning("closing the %s backend's responder failed", self.name, exc_info=True)

    async def submit(self, context: list[str], params: Hashable, deadline: float) -> Answer:
        """Queue one request and wait for its answer until ``deadline`` (time.monotonic())."""
        return await self.batcher.submit((context, params), deadline)


class GenerativeBackend(Backend):
    """The seq2seq responder; requests with different decoding settings run as separate calls.

    ``continuous`` (``auto`` | ``on`` | ``off``, the CONTINUOUS_BATCHING setting): greedy and
    sampled requests (one reply) go through a :class:`~service.continuous_batcher.ContinuousBatcher`
    (service/continuous.py: they join the running decoder batch at a step boundary and are
    answered when their reply ends); beam search goes through the micro-batcher. ``auto`` is on
    for our own seq2seq generators when MAX_BATCH > 1 (other architectures have no step-level
    decoder: always micro-batched). ``prefill_thread`` (PREFILL_THREAD): the continuous batcher
    tokenizes and encodes waiting requests on a second thread while the decoder steps. While
    ``infer`` is replaced on the instance (a test's fault, a wrapper), every request takes the
    micro-batcher, the path that calls it."""

    name = "generative"
    responder_class = GenerativeResponder
    responder: GenerativeResponder

    def __init__(
        self,
        *args: Any,
        continuous: str = "off",
        prefill_thread: bool = False,
        rerank: int = 0,
        rerank_below: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.continuous: ContinuousBatcher[Job, Answer] | None = None
        # Generate, then rank (GENERATIVE_RERANK, options.rerank): the n-best this many replies
        # long, ranked by ``ranker`` (a retrieval backend the service loaded; load_serving sets
        # it), the best served. Below 2, or without a ranker: the decoding's own reply.
        self.rerank = rerank
        # ... while fewer than this many generative requests are queued or running (0: at any
        # load): a busy backend serves its own decoding, which costs less (greedy, continuous)
        # (GENERATIVE_RERANK_BELOW; a request's own options.rerank is always honoured)
        self.rerank_below = rerank_below
        self.ranker: RetrievalBackend | None = None
        ours = isinstance(self.responder, GenerativeResponder)
        if continuous == "on" and not ours:
            raise ValueError(
                "CONTINUOUS_BATCHING=on needs one of this project's seq2seq generators, "
                f"not {type(self.responder).__name__}"
            )
        if continuous == "on" or (continuous == "auto" and ours and self.limits.max_batch > 1):
            runner = GenerationRunner(
                self.responder, self.limits.max_batch, self.metrics, self.safety, self._generate
            )
            self.continuous = ContinuousBatcher(
                self.name,
                runner,
                self.limits,
                self.metrics,
                self._infer_jobs,
                prepare_ahead=prefill_thread,
            )

    async def start(self) -> None:
        await super().start()
        if self.continuous is not None:
            await self.continuous.start()

    async def stop(self, drain_s: float = 0.0) -> None:
        if self.continuous is not None:
            started = time.monotonic()
            await self.continuous.stop(drain_s)
            drain_s = max(0.0, drain_s - (time.monotonic() - started))
        await super().stop(drain_s)

    async def submit(self, context: list[str], params: Hashable, deadline: float) -> Answer:
        config = cast(DecodingConfig, params)
        if (
            self.continuous is not None
            and continuous_eligible(config)
            and "infer" not in vars(self)
        ):
            return await self.continuous.submit((context, params), deadline)
        return await super().submit(context, params, deadline)

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
        if options is not None and options.rerank is not None:
            n = options.rerank
        else:
            n = self.rerank if not self.rerank_below or self.busy < self.rerank_below else 0
        if n > 1 and self.ranks:
            # the n-best of a beam search n wide (greedy is a beam of 1), or n samples
            overrides["num_return_sequences"] = n
            if overrides.get("strategy", base.strategy) != "sample":
                overrides["strategy"] = "beam"
                overrides["beam_size"] = max(n, overrides.get("beam_size", 1))
        try:
            return base.with_overrides(**{"num_return_sequences": 1, **overrides})
        except ValueError as exc:
            raise InvalidOptions(f"invalid decoding options: {exc}") from None

    @property
    def busy(self) -> int:
        """Generative requests queued or running, in the micro-batcher and the continuous batch."""
        return self.batcher.busy + (self.continuous.busy if self.continuous is not None else 0)

    @property
    def ranks(self) -> bool:
        """Whether replies can be ranked: one of our own generators (whose n-best is exact) and
        a retrieval backend to rank with."""
        return self.ranker is not None and isinstance(self.responder, GenerativeResponder)

    def _rank(self, contexts: list[list[str]], replies: list[list[Reply]]) -> list[list[Reply]]:
        """Each row of several replies in the ranker's order, best first (generate, then rank:
        ``RetrievalResponder.rank_replies``); rows of one reply as they are. A ranker that fails
        leaves the decoding's own order (logged): ranking improves a reply, it never costs one."""
        rows = [i for i, row in enumerate(replies) if len(row) > 1]
        ranker = self.ranker
        if not rows or ranker is None:
            return replies
        started = time.perf_counter()
        try:
            scores = ranker.responder.rank_replies(
                [contexts[i] for i in rows], [[r.text for r in replies[i]] for i in rows]
            )
        except Exception:
            logger.warning("ranking generated replies failed; served unranked", exc_info=True)
            return replies
        self.metrics.observe_stage("rank", time.perf_counter() - started)
        out = list(replies)
        for i, row_scores in zip(rows, scores, strict=True):
            out[i] = [replies[i][j] for j in np.argsort(-row_scores, kind="stable").tolist()]
        return out

    def infer(
        self, contexts: list[list[str]], params: list[Hashable], deadline: float | None = None
    ) -> list[Answer]:
        configs = [cast(DecodingConfig, p) for p in params]
        replies = self._rank(contexts, self._generate(contexts, configs, deadline=deadline))
        answers = [Answer(text=row[0].text, generated_tokens=len(row[0].tokens)) for row in replies]
        if self.safety is not None:

            def alternatives(rows: list[int], k: int) -> list[list[Reply]]:
                # A ranked n-best's runners-up, in the ranker's order, already drawn (a beam's
                # n-best as alternatives: no non-words and no fallback reply needed,
                # reports/safety_alternatives_small.md); a row with fewer than k of them gets
                # samples instead, alternatives that differ from the blocked reply
                # (service/continuous.py draws them the same way).
                short = [r for r in rows if len(replies[r]) - 1 < k]
                alt = [alternatives_config(configs[r], k) for r in short]
                drawn = (
                    self._generate([contexts[r] for r in short], alt, deadline=deadline)
                    if short
                    else []
                )
                sampled = dict(zip(short, drawn, strict=True))
                return [replies[r][1:] if r not in sampled else sampled[r] for r in rows]

            self.safety.resample([c[-1] for c in contexts], answers, alternatives)
        return answers

    def _generate(
        self,
        contexts: list[list[str]],
        configs: list[DecodingConfig],
        *,
        deadline: float | None = None,
    ) -> list[list[Reply]]:
        """The responder's replies; ``deadline`` goes to it (a remote generator's calls stop
        there; our own and Hugging Face generators ignore it)."""
        replies = self.responder.reply_each(
            contexts, configs, on_stage=self.metrics.observe_stage, deadline=deadline
        )
        self.metrics.add_generated_tokens(sum(len(r.tokens) for row in replies for r in row))
        return replies


class RetrievalBackend(Backend):
    """The bi-encoder + HNSW responder: tokenize -> encode -> search, one call for the batch."""

    name = "retrieval"
    responder_class = RetrievalResponder
    responder: RetrievalResponder

    def __init__(self, *args: Any, max_candidates: int = 10, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_candidates = max_candidates

    def prepare(self, options: ResponseOptions | None) -> int:
        wanted = options.num_candidates if options and options.num_candidates else 1
        if wanted > self.max_candidates:
            raise InvalidOptions(
                f"options.num_candidates must be <= {self.max_candidates}, got {wanted}"
            )
        return wanted

    def infer(
        self, contexts: list[list[str]], params: list[Hashable], deadline: float | None = None
    ) -> list[Answer]:
        wanted = [cast(int, p) for p in params]
        top_k = max(wanted)
        if self.safety is not None:  # room to re-rank a blocked reply
            top_k = max(top_k, self.safety.candidates)
        # The contexts go along: with a re-ranker in the bundle the hits are hybrid-scored.
        hits = self.responder.respond(contexts, top_k, on_stage=self.metrics.observe_stage)
        if self.safety is not None:
            return self.safety.rerank([c[-1] for c in contexts], hits, wanted)
        answers = []
        for row, n in zip(hits, wanted, strict=True):
            kept = row[:n]
            answers.append(Answer(text=kept[0][0] if kept else "", candidates=kept))
        return answers

"""The generative backend's continuous batching: a :class:`~service.continuous_batcher.StepRunner` over
:class:`models.continuous.ContinuousDecoder`.

A request (context + its :class:`DecodingConfig`, greedy or sampling, one reply) is tokenized
and encoded ahead of its admission on the batcher's preparing thread while the decoder is busy
(:meth:`GenerationRunner.prepare`, PREFILL_THREAD), or at its admission when the decoder was idle
(a context the tokenizer refuses fails alone either way), decoded as rows of the running
batch, and answered at the step its reply ends: detokenized, counted in
``generated_tokens_total`` and, with the output filter on, checked together with the other
replies that ended at that step. A blocked reply's alternatives (``SAFETY_CANDIDATES`` nucleus
samples, as the request-level path draws them) join the running batch as rows of their own, so
re-sampling one reply no longer stalls every other request for a whole generation; the request
is answered when they end (service/safety.py, ``SafetyFilter.settle``). Beam search is
request-level (see models/continuous.py) and goes through the backend's micro-batcher instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import cast

from torch import Tensor

from models.continuous import ContinuousDecoder, Encoded, Finished, encode_sources
from models.decoding import DecodingConfig
from models.generator import GenerativeResponder, Reply
from service.answer import Answer, BlockReason
from service.metrics import ServiceMetrics
from service.safety import SafetyFilter

Job = tuple[list[str], Hashable]  # as service/backends.py: a context and its prepared config
Generate = Callable[[list[list[str]], list[DecodingConfig]], list[list[Reply]]]


def continuous_eligible(config: DecodingConfig) -> bool:
    """Whether a request's decoding runs in the continuous batch (greedy or sampling, 1 reply)."""
    return config.strategy != "beam" and config.num_return_sequences == 1


@dataclass
class _Decode:
    """A request in the decoder: its first reply, or (``blocked`` set) its alternatives."""

    key: int  # the batcher's key
    context: list[str]
    config: DecodingConfig
    src: Tensor  # token ids, for the alternatives' rows
    started: float
    answer: Answer | None = None  # the blocked answer the alternatives replace
    blocked: BlockReason | None = None


# How a blocked reply's alternatives are sampled (reports/safety_alternatives_small.md: the
# served small generator's filter blocks 452 of 5,676 validation greedy replies). Nucleus 0.9 at
# temperature 1 with the bundle's anti-LM, as before session 24, served a reply with a non-word
# ("appet umile's seemer .") for 75% of them: anti-LM's bonus flattens the sampling distribution
# towards rare subword pieces. With the plausibility constraint (alpha 0.1) and temperature 0.5,
# 1.3% (mean log p/token under the model -2.24 against -5.49; the blocked greedy replies' own
# -2.22), the fallback reply never needed, Dist-2 0.42 over the served alternatives (a beam
# search's n-best: 0.08, its replies generic).
ALTERNATIVES_TOP_P = 0.9
ALTERNATIVES_TEMPERATURE = 0.5
ALTERNATIVES_PLAUSIBILITY = 0.1


def alternatives_config(config: DecodingConfig, k: int) -> DecodingConfig:
    """How a blocked reply's ``k`` alternatives are drawn: nucleus samples (Holtzman et al.
    2020) that differ from the blocked reply and stay fluent: a cooled temperature and, where
    the bundle decodes with anti-LM, its plausibility constraint (models/decoding.py; constants
    above). GenerativeBackend.infer draws its request-level alternatives with it too."""
    return config.with_overrides(
        strategy="sample",
        num_return_sequences=k,
        top_p=min(config.top_p, ALTERNATIVES_TOP_P),
        temperature=min(config.temperature, ALTERNATIVES_TEMPERATURE),
        anti_lm_plausibility=max(config.anti_lm_plausibility, ALTERNATIVES_PLAUSIBILITY)
        if config.anti_lm > 0
        else config.anti_lm_plausibility,
    )


class GenerationRunner:
    """Runs the generative backend's requests through one continuous decoder (its thread only).

    ``generate`` is the backend's request-level generation: the filter's alternatives go through
    it only when they cannot fit the decoder (``SAFETY_CANDIDATES`` above ``max_rows``)."""

    def __init__(
        self,
        responder: GenerativeResponder,
        max_rows: int,
        metrics: ServiceMetrics,
        safety: SafetyFilter | None,
        generate: Generate,
    ) -> None:
        self.responder = responder
        self.max_rows = max_rows
        self.metrics = metrics
        self.safety = safety
        self.generate = generate
        self.decoder = self._decoder()
        self._requests: dict[int, _Decode] = {}  # by decoder key

    def prepare(self, requests: Sequence[Job]) -> list[tuple[Tensor, Encoded]]:
        """Tokenize and encode waiting requests together, ahead of their admission (the
        batcher's preparing thread, beside :meth:`step`): each one's source ids and encoding."""
        started = time.perf_counter()
        src = self.responder.encode_contexts([context for context, _ in requests])
        self.metrics.observe_stage("tokenize", time.perf_counter() - started)
        pad = self.responder.model.cfg.pad_id
        ids = [[t for t in row if t != pad] for row in src.tolist()]
        return list(zip(src, encode_sources(self.responder.model, ids), strict=True))

    def admit(self, key: int, request: Job, prepared: object | None = None) -> None:
        context, params = request
        config = cast(DecodingConfig, params)
        if prepared is None:
            started = time.perf_counter()
            src = self.responder.encode_contexts([context])[0]
            self.metrics.observe_stage("tokenize", time.perf_counter() - started)
            encoded = None
        else:
            src, encoded = cast(tuple[Tensor, Encoded], prepared)
        decoder_key = self.decoder.add(src, config, encoded=encoded)
        self._requests[decoder_key] = _Decode(key, context, config, src, time.perf_counter())

    def step(self) -> list[tuple[int, Answer]]:
        finished = self.decoder.step()
        if not finished:
            return []
        return self._answer(finished)

    def cancel(self, key: int) -> None:
        for decoder_key, request in list(self._requests.items()):
            if request.key == key:
                self.decoder.cancel(decoder_key)
                del self._requests[decoder_key]

    def reset(self) -> None:
        self.decoder = self._decoder()
        self._requests.clear()

    def _decoder(self) -> ContinuousDecoder:
        # the responder's prior (anti-LM decoding) outlives a reset: its memo is of these weights
        return ContinuousDecoder(
            self.responder.model, max_rows=self.max_rows, prior=self.responder.prior
        )

    def _answer(self, finished: list[Finished]) -> list[tuple[int, Answer]]:
        now = time.perf_counter()
        done = [(self._requests.pop(f.key), f) for f in finished]
        firsts = [(r, f) for r, f in done if r.blocked is None]
        out = self._first_replies(firsts, now) if firsts else []
        resampled = [(r, f) for r, f in done if r.blocked is not None]
        if resampled:
            out += self._settle(resampled)
        return out

    def _replies(self, finished: list[Finished]) -> list[list[Reply]]:
        """Each finished request's replies, detokenized in one call."""
        tokens = [t for f in finished for t in f.generation.tokens]
        texts = iter(zip(self.responder.tokenizer.decode_batch(tokens), tokens, strict=True))
        return [[Reply(*next(texts)) for _ in f.generation.tokens] for f in finished]

    def _first_replies(
        self, done: list[tuple[_Decode, Finished]], now: float
    ) -> list[tuple[int, Answer]]:
        """The requests whose reply ended at this step; with the filter on, those blocked go
        back into the decoder for their alternatives instead of being answered now."""
        replies = [row[0] for row in self._replies([f for _, f in done])]
        self.metrics.add_generated_tokens(sum(len(r.tokens) for r in replies))
        answers = [Answer(text=r.text, generated_tokens=len(r.tokens)) for r in replies]
        for request, _ in done:
            self.metrics.observe_stage("generate", now - request.started)
        if self.safety is None:
            return [(r.key, a) for (r, _), a in zip(done, answers, strict=True)]
        turns = [r.context[-1] for r, _ in done]
        blocked = self.safety.screen(turns, answers)
        k = self.safety.candidates
        if blocked and k > self.max_rows:  # cannot fit the decoder: a batch of their own
            rows = [b for b, _ in blocked]
            self.safety.settle(
                [turns[b] for b in rows],
                [answers[b] for b in rows],
                [why for _, why in blocked],
                self.generate(
                    [done[b][0].context for b in rows],
                    [alternatives_config(done[b][0].config, k) for b in rows],
                ),
            )
            blocked = []
        waiting = {b for b, _ in blocked}
        for b, why in blocked:
            request = done[b][0]
            decoder_key = self.decoder.add(request.src, alternatives_config(request.config, k))
            self._requests[decoder_key] = _Decode(
                request.key,
                request.context,
                request.config,
                request.src,
                time.perf_counter(),
                answer=answers[b],
                blocked=why,
            )
        return [
            (r.key, a)
            for i, ((r, _), a) in enumerate(zip(done, answers, strict=True))
            if i not in waiting
        ]

    def _settle(self, done: list[tuple[_Decode, Finished]]) -> list[tuple[int, Answer]]:
        """Requests whose alternatives ended at this step: the first safe one, else the
        fallback reply."""
        assert self.safety is not None
        alternatives = self._replies([f for _, f in done])
        self.metrics.add_generated_tokens(sum(len(r.tokens) for row in alternatives for r in row))
        answers = [r.answer for r, _ in done]
        reasons = [r.blocked for r, _ in done]
        assert all(a is not None for a in answers) and all(w is not None for w in reasons)
        self.safety.settle(
            [r.context[-1] for r, _ in done],
            cast(list[Answer], answers),
            cast(list[BlockReason], reasons),
            alternatives,
        )
        return [(r.key, cast(Answer, r.answer)) for r, _ in done]

"""The generative backend's continuous batching: a :class:`~service.continuous_batcher.StepRunner` over
:class:`models.continuous.ContinuousDecoder`.

A request (context + its :class:`DecodingConfig`, greedy or sampling, one reply) is tokenized
when admitted (so a context the tokenizer refuses fails alone), decoded as rows of the running
batch, and answered at the step its reply ends: detokenized, counted in
``generated_tokens_total`` and, with the output filter on, checked (and re-sampled when blocked)
together with the other replies that ended at that step. Beam search is request-level (see
models/continuous.py) and goes through the backend's micro-batcher instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import cast

from models.continuous import ContinuousDecoder, Finished
from models.decoding import DecodingConfig
from models.generator import GenerativeResponder, Reply
from service.answer import Answer
from service.metrics import ServiceMetrics
from service.safety import SafetyFilter

Job = tuple[list[str], Hashable]  # as service/backends.py: a context and its prepared config
Generate = Callable[[list[list[str]], list[DecodingConfig]], list[list[Reply]]]


def continuous_eligible(config: DecodingConfig) -> bool:
    """Whether a request's decoding runs in the continuous batch (greedy or sampling, 1 reply)."""
    return config.strategy != "beam" and config.num_return_sequences == 1


class GenerationRunner:
    """Runs the generative backend's requests through one continuous decoder (its thread only).

    ``generate`` is the backend's request-level generation, used for the filter's alternatives
    (sampled, ``k`` per blocked reply: rare, and a batch of their own)."""

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
        self.decoder = ContinuousDecoder(responder.model, max_rows=max_rows)
        self._requests: dict[int, tuple[int, Job, float]] = {}  # decoder key -> key, job, start

    def admit(self, key: int, request: Job) -> None:
        context, params = request
        config = cast(DecodingConfig, params)
        started = time.perf_counter()
        src = self.responder.encode_contexts([context])
        self.metrics.observe_stage("tokenize", time.perf_counter() - started)
        decoder_key = self.decoder.add(src[0], config)
        self._requests[decoder_key] = (key, request, time.perf_counter())

    def step(self) -> list[tuple[int, Answer]]:
        finished = self.decoder.step()
        if not finished:
            return []
        return self._answer(finished)

    def cancel(self, key: int) -> None:
        for decoder_key, (k, _, _) in list(self._requests.items()):
            if k == key:
                self.decoder.cancel(decoder_key)
                del self._requests[decoder_key]

    def reset(self) -> None:
        self.decoder = ContinuousDecoder(self.responder.model, max_rows=self.max_rows)
        self._requests.clear()

    def _answer(self, finished: list[Finished]) -> list[tuple[int, Answer]]:
        now = time.perf_counter()
        tokens = [done.generation.tokens[0] for done in finished]
        texts = self.responder.tokenizer.decode_batch(tokens)
        keys, contexts, configs = [], [], []
        for done in finished:
            key, (context, params), started = self._requests.pop(done.key)
            self.metrics.observe_stage("generate", now - started)
            keys.append(key)
            contexts.append(context)
            configs.append(cast(DecodingConfig, params))
        self.metrics.add_generated_tokens(sum(len(t) for t in tokens))
        answers = [
            Answer(text=text, generated_tokens=len(t))
            for text, t in zip(texts, tokens, strict=True)
        ]
        if self.safety is not None:

            def alternatives(rows: list[int], k: int) -> list[list[Reply]]:
                # as GenerativeBackend.infer: nucleus samples that differ from the blocked reply
                alt = [
                    configs[r].with_overrides(
                        strategy="sample", num_return_sequences=k, top_p=min(configs[r].top_p, 0.9)
                    )
                    for r in rows
                ]
                return self.generate([contexts[r] for r in rows], alt)

            self.safety.resample([c[-1] for c in contexts], answers, alternatives)
        return list(zip(keys, answers, strict=True))

"""The G2R teacher of an OpenAI-compatible endpoint (a ``remote-openai`` bundle): data-level
replies always; model-level scores (eqs. 3 and 6) only where the endpoint returns log-probabilities
(see :class:`RemoteTeacher`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from models.decoding import DecodingConfig
from models.text import normalize_text
from training.methods.g2r.teachers import teacher_scores

logger = logging.getLogger(__name__)


UNSCORED_LOG_PROB = -100.0


class RemoteTeacher:
    """An OpenAI-compatible endpoint (a ``remote-openai`` bundle) as the G2R teacher.

    Replies: ``m`` chat completions per context (``n=m``, seeded), the contexts of a batch sent
    concurrently, at most ``max_concurrency`` at a time (the bundle's, unless given). n-gram
    blocking has no API equivalent and is not applied. Scores: only from an endpoint that serves
    log-probabilities of given text (``/completions`` with ``echo``, as vLLM does); the prompt is
    then the turns joined by ``turn_separator`` plus the separator (the endpoint's chat template
    is not known here), the reply's end is not scored, and MI's dummy contexts are "." and the
    empty context. Without them ``has_scores`` is False (see the module docstring).
    """

    def __init__(
        self,
        generator: Any,
        *,
        max_concurrency: int | None = None,
        turn_separator: str = "\n",
        probe_scores: bool = True,
    ) -> None:
        self.generator = generator
        self.name = generator.bundle_id
        self.max_concurrency = max_concurrency or generator.config.max_concurrency
        self.turn_separator = turn_separator
        self._dummy_contexts: list[list[str]] = [["."], [""]]
        self.has_scores = probe_scores and self._probe_scores()
        if not self.has_scores:
            logger.warning(
                "teacher %s: the endpoint returns no log-probabilities of given text "
                "(/completions with echo and logprobs), so the augmentation holds replies only: "
                "G2R-D (--method g2r-d) can use it, G2R-DM cannot, and the teacher filter's "
                "score floor is off",
                self.name,
            )

    @classmethod
    def load(cls, bundle_dir: Path, *, max_concurrency: int | None = None) -> RemoteTeacher:
        from models.remote_generator import RemoteGenerator

        return cls(RemoteGenerator.load(bundle_dir), max_concurrency=max_concurrency)

    def _probe_scores(self) -> bool:
        from models.remote_generator import RemoteBadResponse

        try:
            probe = self.generator.response_log_likelihood(
                self._prompt(["hello , how are you ?"]), "i am fine , thanks ."
            )
            return probe is not None
        except RemoteBadResponse:  # a 4xx (no /completions, no echo): no scores
            return False

    def _map(self, fn: Callable[[int], Any], n: int) -> list[Any]:
        with ThreadPoolExecutor(min(self.max_concurrency, max(n, 1))) as pool:
            return list(pool.map(fn, range(n)))

    def sample(
        self,
        contexts: Sequence[Sequence[str]],
        m: int,
        *,
        min_length: int = 0,
        top_k: int = 20,
        no_repeat_ngram_size: int = 3,
        max_length: int = 32,
        seed: int = 0,
    ) -> list[list[str]]:
        decoding = DecodingConfig(
            strategy="sample",
            top_k=top_k,
            min_length=min_length,
            max_length=max_length,
            num_return_sequences=m,
        )
        rows = self._map(
            lambda i: self.generator.complete(contexts[i], decoding, n=m, seed=seed + i * m),
            len(contexts),
        )
        return [[normalize_text(r.text) for r in row] for row in rows]

    def _prompt(self, context: Sequence[str]) -> str:
        return self.turn_separator.join(context) + self.turn_separator

    def score(
        self, contexts: Sequence[Sequence[str]], responses: Sequence[str]
    ) -> tuple[list[float], list[float]]:
        if not self.has_scores:
            raise RuntimeError(f"teacher {self.name} gives no log-probabilities")
        assert len(contexts) == len(responses)
        prompts = [self._prompt(c) for c in contexts]
        dummies = [self._prompt(d) for d in self._dummy_contexts]
        jobs = [(p, r) for p, r in zip(prompts, responses, strict=True)]
        jobs += [(d, r) for d in dummies for r in responses]

        def one(i: int) -> tuple[float, int]:
            got = self.generator.response_log_likelihood(*jobs[i])
            # Nothing to score (an empty reply): the floor of a very unlikely token.
            return got if got is not None else (UNSCORED_LOG_PROB, 1)

        results = self._map(one, len(jobs))
        n = len(responses)
        ll = torch.tensor([results[i][0] for i in range(n)], dtype=torch.float64)
        count = torch.tensor([results[i][1] for i in range(n)])
        dummy_ll = torch.tensor(
            [[results[n * (1 + d) + i][0] for i in range(n)] for d in range(len(dummies))],
            dtype=torch.float64,
        )
        g_ll, g_mi = teacher_scores(ll, count, dummy_ll)
        return g_ll.tolist(), g_mi.tolist()

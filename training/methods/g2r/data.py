"""The retriever's data (G2R, Kim et al. 2021, sec. 2.3): the response set R (corpus responses plus
teacher replies, data-level G2R) and its quality filter, and the (context, positives) pairs D^G."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.safety import Blocklist
from training.core.data import DialogueExample
from training.methods.g2r.augment import (
    group_by_context,
)
from training.methods.g2r.filter import TeacherReplyFilter

logger = logging.getLogger(__name__)


# --- the response set and its filter -------------------------------------------------------------


@dataclass(frozen=True)
class ResponseFilter:
    """Keeps responses of ``min_tokens..max_tokens`` whitespace tokens with no blocklisted phrase."""

    min_tokens: int = 1
    max_tokens: int = 60
    blocklist: tuple[str, ...] = ()
    # The matcher the service's output filter uses too (models/safety.py): whole-token phrases.
    _matcher: Blocklist = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_matcher", Blocklist(self.blocklist))

    def reason(self, text: str) -> str | None:
        """Why ``text`` is dropped (``too_short``, ``too_long``, ``blocked``), or None to keep it."""
        n = len(text.split())
        if n < self.min_tokens:
            return "too_short"
        if n > self.max_tokens:
            return "too_long"
        if self._matcher.find(text, normalised=True) is not None:
            return "blocked"
        return None

    def apply(self, texts: Sequence[str]) -> tuple[list[int], dict[str, int]]:
        """Indices of the kept texts and counts: input, kept, too_short, too_long, blocked."""
        counts = {"input": len(texts), "kept": 0, "too_short": 0, "too_long": 0, "blocked": 0}
        kept = []
        for i, text in enumerate(texts):
            why = self.reason(text)
            if why is None:
                kept.append(i)
            else:
                counts[why] += 1
        counts["kept"] = len(kept)
        return kept, counts


@dataclass
class RetrievalData:
    """D or D^G grouped by context, and the (filtered) response set R or R^G to index."""

    contexts: list[tuple[str, ...]]
    positives: list[list[str]]  # per context: gold responses first, then teacher replies
    teacher_scores: list[list[float] | None]  # aligned with positives; None when not scored
    responses: list[str]  # the indexed response set: row i = id i
    sources: list[str]  # "corpus" | "teacher" per response
    stats: dict[str, int | float]


def build_retrieval_data(
    train: Sequence[DialogueExample],
    augmented: Mapping[int, Mapping[str, Any]] | None,
    response_filter: ResponseFilter,
    *,
    score: str = "ll",
    teacher_filter: TeacherReplyFilter | None = None,
) -> RetrievalData:
    """D^G = D + teacher replies as extra positives; R^G = R + teacher replies, deduplicated and
    filtered (teacher replies the filter drops are not used as positives either).

    With ``teacher_filter`` a (context, teacher reply) pair must first pass that quality bar: a
    reply enters R^G when at least one of its pairs does, and only passing pairs are positives.
    Its counts go into ``stats`` as ``teacher_filter_*``.
    """
    assert score in ("ll", "mi"), f"teacher score must be 'll' or 'mi', got {score!r}"
    groups = group_by_context(train)
    records = list((augmented or {}).values())
    by_context = {tuple(r["context"]): r for r in records}
    corpus = list(dict.fromkeys(e.response for e in train))
    filter_stats: dict[str, int | float] = {}
    accepted: set[tuple[tuple[str, ...], str]] | None = None
    if teacher_filter is not None:
        generic = teacher_filter.generic_responses(e.response for e in train)
        verdict = teacher_filter.apply(records, generic)
        accepted = verdict.accepted
        filter_stats = {f"teacher_filter_{k}": v for k, v in verdict.counts.items()}
        if verdict.score_floor is not None:
            filter_stats["teacher_filter_score_floor"] = verdict.score_floor

    def passes(context: Sequence[str], text: str) -> bool:
        return accepted is None or (tuple(context), text) in accepted

    teacher_texts = [
        g["text"]
        for r in records
        for g in r["generated"]
        if g["text"] and passes(r["context"], g["text"])
    ]
    in_corpus = set(corpus)
    candidates = corpus + [t for t in dict.fromkeys(teacher_texts) if t not in in_corpus]
    kept, counts = response_filter.apply(candidates)
    responses = [candidates[i] for i in kept]
    sources = ["corpus" if i < len(corpus) else "teacher" for i in kept]
    indexed = set(responses)  # a teacher reply that is also a corpus response is still a positive
    contexts, positives, scores = [], [], []
    n_augmented = n_teacher_pairs = 0
    for g in groups:
        rec = by_context.get(g.context)
        texts = list(g.responses)
        row_scores: list[float] | None = None
        if rec is not None:
            n_augmented += 1
            scored = {  # a teacher without log-probabilities wrote null scores
                x["text"]: float(x[score])
                for x in [*rec["gold"], *rec["generated"]]
                if x.get(score) is not None
            }
            extra = [
                x["text"]
                for x in rec["generated"]
                if x["text"] in indexed and passes(g.context, x["text"])
            ]
            texts = list(dict.fromkeys([*texts, *extra]))
            n_teacher_pairs += len(texts) - len(g.responses)
            if all(t in scored for t in texts):
                row_scores = [scored[t] for t in texts]
        contexts.append(g.context)
        positives.append(texts)
        scores.append(row_scores)
    stats = {
        "contexts": len(contexts),
        "augmented_contexts": n_augmented,
        "pairs": sum(map(len, positives)),
        "teacher_pairs": n_teacher_pairs,
        "responses": len(responses),
        "responses_corpus": sources.count("corpus"),
        "responses_teacher": sources.count("teacher"),
        **{f"responses_{k}": v for k, v in counts.items()},
        **filter_stats,
    }
    logger.info("retrieval data: %s", stats)
    return RetrievalData(contexts, positives, scores, responses, sources, stats)

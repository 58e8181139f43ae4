"""The quality bar a G2R teacher reply must pass to enter D^G (as a positive) and R^G (as a reply).

Data-level G2R (Kim et al. 2021, sec. 2.3) copies the teacher's sampled replies into the response
set the retriever serves from. A weak teacher's samples are often ungrammatical, and a retriever
serves them more often than their share of the response set, so each (context, reply) pair of the
augmentation shards is checked here first. Text criteria, on whitespace tokens of the normalised
reply (a *word* is a token with a letter or digit in it):

``too_short`` / ``too_long``
    fewer than ``min_tokens`` or more than ``max_tokens`` tokens;
``no_final_punct``
    the last token (after closing quotes or brackets) is not ``.``, ``?``, ``!`` or ``...``
    (a reply cut off at the teacher's ``max_length`` ends mid-sentence);
``adjacent_repeat``
    the same word twice in a row ("you were on on .");
``repeated_ngram``
    a word n-gram (``repeated_ngram`` words) occurring twice;
``word_repeats``
    one word occurring more than ``max_word_repeats`` times;
``generic``
    the reply is one of the ``generic_top_n`` most frequent responses of D;

and the teacher's own score of the pair (eq. 3, G_LL = log P(r|c) / |r|, the ``ll`` the shards
record; or ``mi``, eq. 6):

``low_score``
    below the highest of the floors set: ``min_score`` (absolute, teacher-specific), the
    ``min_score_teacher_quantile`` quantile of the teacher's scores of all its replies in the
    shards (the lowest-scored share of its samples: top-k sampling's unlikely tail), and the
    ``min_score_gold_quantile`` quantile of its scores of the gold responses there.

Measured (``python -m benchmarks.g2r_quality filter-stats``, reports/g2r_teacher_filter.md): on
the distinct DailyDialog training responses (human text) each default text criterion alone drops
at most 2.8% (``max_tokens``; the others at most 1.1%). A teacher scores its own samples above the
human replies (small preset: the gold is the teacher's best-scored positive in 8% of contexts,
reports/g2r.md; tiny: every teacher sample above the gold's upper quartile), so a floor
relative to the gold drops almost nothing; the default floor is relative to the teacher's own
replies instead.

This module imports nothing heavy, so :mod:`training.config` can hold a filter.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FINAL_PUNCT = frozenset({".", "?", "!", "..."})
CLOSERS = frozenset({"'", '"', ")"})  # may follow the final punctuation: `he said " no . "`
TEXT_REASONS = (
    "too_short",
    "too_long",
    "no_final_punct",
    "adjacent_repeat",
    "repeated_ngram",
    "word_repeats",
    "generic",
)
REASONS = (*TEXT_REASONS, "low_score")


def is_word(token: str) -> bool:
    return any(ch.isalnum() for ch in token)


def has_adjacent_repeat(tokens: Sequence[str]) -> bool:
    """A word (not punctuation) right after itself: "about about", "a little little bit"."""
    return any(a == b and is_word(a) for a, b in itertools.pairwise(tokens))


def ends_a_sentence(tokens: Sequence[str]) -> bool:
    """The last token, after any closing quotes or brackets, is final punctuation."""
    end = len(tokens)
    while end and tokens[end - 1] in CLOSERS:
        end -= 1
    return bool(end) and tokens[end - 1] in FINAL_PUNCT


@dataclass(frozen=True)
class TeacherReplyFilter:
    """Which teacher replies are good enough to copy (module doc); 0 / None / False turn a
    criterion off."""

    min_tokens: int = 3  # human replies below: 0.6%
    max_tokens: int = 40  # human replies above: 2.8% (the small preset's response_max_tokens)
    require_final_punct: bool = True  # human replies without: 1.1%
    adjacent_repeat: bool = True  # human replies with: 0.1%
    repeated_ngram: int = 3  # human replies with a repeated word trigram: 1.1% (bigram: 5.0%)
    max_word_repeats: int = 4  # human replies with a word more than 4 times: 0.8%
    generic_top_n: int = 0  # off: a teacher reply equal to a corpus response is human text
    score: str = "ll"  # which teacher score of the shards: "ll" (eq. 3) or "mi" (eq. 6)
    min_score: float | None = None  # an absolute floor (teacher-specific)
    min_score_teacher_quantile: float | None = 0.25  # floor: this quantile of its replies' scores
    min_score_gold_quantile: float | None = None  # floor: this quantile of the gold's scores

    def __post_init__(self) -> None:
        assert self.score in ("ll", "mi"), f"score must be 'll' or 'mi', got {self.score!r}"
        for name in ("min_score_teacher_quantile", "min_score_gold_quantile"):
            q = getattr(self, name)
            assert q is None or 0.0 <= q <= 1.0, f"{name} must be in [0, 1], got {q}"

    def text_reason(self, text: str, generic: frozenset[str] = frozenset()) -> str | None:
        """The first text criterion ``text`` fails (:data:`TEXT_REASONS`), or None."""
        tokens = text.split()
        if len(tokens) < self.min_tokens:
            return "too_short"
        if self.max_tokens and len(tokens) > self.max_tokens:
            return "too_long"
        if self.require_final_punct and not ends_a_sentence(tokens):
            return "no_final_punct"
        if self.adjacent_repeat and has_adjacent_repeat(tokens):
            return "adjacent_repeat"
        words = [t for t in tokens if is_word(t)]
        n = self.repeated_ngram
        if n:
            grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
            grams = [g for g in grams if all(map(is_word, g))]
            if len(grams) != len(set(grams)):
                return "repeated_ngram"
        if self.max_word_repeats and words and max(Counter(words).values()) > self.max_word_repeats:
            return "word_repeats"
        if text in generic:
            return "generic"
        return None

    def generic_responses(self, responses: Iterable[str]) -> frozenset[str]:
        """The ``generic_top_n`` most frequent of ``responses`` (D's responses, with repeats)."""
        if not self.generic_top_n:
            return frozenset()
        return frozenset(r for r, _ in Counter(responses).most_common(self.generic_top_n))

    def score_floor(self, records: Sequence[Mapping[str, Any]]) -> float | None:
        """The score a pair must reach: the highest floor set (None when none is)."""
        floors = [] if self.min_score is None else [float(self.min_score)]
        for q, key in (
            (self.min_score_teacher_quantile, "generated"),
            (self.min_score_gold_quantile, "gold"),
        ):
            scores = [float(g[self.score]) for r in records for g in r[key] if g["text"]]
            if q is not None and scores:
                floors.append(float(np.quantile(scores, q)))
        return max(floors) if floors else None

    def apply(
        self, records: Sequence[Mapping[str, Any]], generic: frozenset[str] = frozenset()
    ) -> TeacherFilterResult:
        """Judge every (context, teacher reply) pair of the shard records.

        Counts are over distinct reply texts (the first text criterion a text fails; ``low_score``
        when it passes them all but no pair of it reaches the floor) and over pairs.
        """
        floor = self.score_floor(records)
        accepted: set[tuple[tuple[str, ...], str]] = set()
        text_why: dict[str, str | None] = {}
        kept_texts: set[str] = set()
        n_pairs = 0
        for rec in records:
            context = tuple(rec["context"])
            for g in rec["generated"]:
                text = g["text"]
                if not text:
                    continue
                n_pairs += 1
                if text not in text_why:
                    text_why[text] = self.text_reason(text, generic)
                if text_why[text] is None and (floor is None or float(g[self.score]) >= floor):
                    accepted.add((context, text))
                    kept_texts.add(text)
        counts = {"input": len(text_why), "kept": len(kept_texts)}
        counts |= {r: 0 for r in REASONS}
        for text, why in text_why.items():
            if why is not None:
                counts[why] += 1
            elif text not in kept_texts:
                counts["low_score"] += 1
        counts |= {"pairs_input": n_pairs, "pairs_kept": len(accepted)}
        return TeacherFilterResult(accepted, counts, floor)


@dataclass
class TeacherFilterResult:
    """The accepted (context, reply) pairs, counts by reason and the score floor used."""

    accepted: set[tuple[tuple[str, ...], str]]
    counts: dict[str, int] = field(default_factory=dict)
    score_floor: float | None = None

    def __contains__(self, pair: tuple[tuple[str, ...], str]) -> bool:
        return pair in self.accepted

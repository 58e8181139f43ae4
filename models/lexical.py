"""Hybrid re-ranking of a retriever's candidates: bi-encoder score plus TF-IDF word overlap.

A small bi-encoder trained for minutes on a CPU matches topics loosely; plain TF-IDF cosine
between the context and a response catches the shared content words it misses (on DailyDialog
test it ranks the gold first more often than the small bi-encoder does: reports/lexical_baselines.md).
Combining both beats either (reports/retriever_seeds_small.md: served vs dense, three seeds). For each context, the dense index
returns ``candidates`` responses; both scores are standardised over them (z-scores, so the two
scales need no calibration) and the reply is the best of

    hybrid(c, r) = z(<e_c, e_r>) + weight * z(tfidf(c) . tfidf(r))

``weight`` is chosen on the validation split when the retriever is trained, and stored with the
TF-IDF vocabulary and idf in the bundle's ``lexical.json``; scikit-learn's ``TfidfVectorizer``
does the vectorising. The context side is the retriever's last ``max_context_turns`` turns,
normalised like the corpus (:func:`models.text.normalize_text`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from models.text import normalize_text

LEXICAL_FILE = "lexical.json"
ECHO_COSINE = 0.7  # a candidate this close (TF-IDF cosine) to a context turn restates it
QUERY_TERMS = 8  # a query's heaviest TF-IDF terms that fetch lexical candidates
MAX_CANDIDATE_DF = 0.01  # terms in more of the response set than this do not fetch candidates


@dataclass(frozen=True)
class TermWeights:
    """One text's TF-IDF row as two parallel arrays: its vocabulary columns, ascending, and their
    L2-normalised tf x idf weights (what a CSR row holds, without building a matrix per request)."""

    cols: np.ndarray  # int64
    weights: np.ndarray  # float64


def _gather_rows(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored entries of CSR rows ``rows`` as flat arrays (position in ``rows``, column,
    value), in row order: ``m[rows]`` without scipy's per-call validation, which cost more than
    the arithmetic at batch 1."""
    starts = m.indptr[rows]
    lengths = m.indptr[rows + 1] - starts
    owner = np.repeat(np.arange(len(rows)), lengths)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    pos = np.repeat(starts, lengths) + (np.arange(int(lengths.sum())) - first)
    return owner, m.indices[pos], m.data[pos]


def _weights_at(row: TermWeights, cols: np.ndarray) -> np.ndarray:
    """``row``'s weight at each of ``cols`` (0 where the row does not hold the column)."""
    if row.cols.size == 0:
        return np.zeros(cols.size)
    at = np.minimum(np.searchsorted(row.cols, cols), row.cols.size - 1)
    return np.where(row.cols[at] == cols, row.weights[at], 0.0)


def lexical_tokens(text: str) -> list[str]:
    """Word tokens: whitespace tokens (lower-cased) with at least one letter or digit."""
    return [t for t in text.lower().split() if any(ch.isalnum() for ch in t)]


def context_text(context: Sequence[str], turns: int) -> str:
    """The last ``turns`` turns of a context, normalised and joined by a space."""
    return " ".join(normalize_text(t) for t in list(context)[-turns:])


def zscore(x: np.ndarray) -> np.ndarray:
    """Standardise each row (scores of one context's candidates); a constant row becomes 0."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=-1, keepdims=True)
    return (x - x.mean(axis=-1, keepdims=True)) / np.where(std > 0, std, 1.0)


def mix_scores(dense: np.ndarray, lexical: np.ndarray, weight: float) -> np.ndarray:
    """The hybrid ranking score: each part z-scored per row, the lexical one scaled by ``weight``
    (0 or less = the dense scores as they are)."""
    if weight <= 0:
        return dense
    return zscore(dense) + weight * zscore(lexical)


class LexicalReranker:
    """TF-IDF over a response set plus the weight that mixes it with the dense score."""

    def __init__(
        self,
        vocabulary: Sequence[str],
        idf: Sequence[float],
        *,
        weight: float,
        candidates: int = 100,
        validation: dict[str, Any] | None = None,
    ) -> None:
        if len(vocabulary) != len(idf):
            raise ValueError(f"{len(vocabulary)} vocabulary entries but {len(idf)} idf values")
        if weight < 0 or candidates < 1:
            raise ValueError(f"need weight >= 0 and candidates >= 1, got {weight}, {candidates}")
        self.vocabulary = list(vocabulary)
        self.idf = np.asarray(idf, dtype=np.float64)
        self.weight = float(weight)
        self.candidates = int(candidates)
        self.validation = validation or {}
        self.vectorizer = TfidfVectorizer(analyzer=lexical_tokens, vocabulary=self.vocabulary)
        self.vectorizer.idf_ = self.idf
        self._responses: sp.csr_matrix | None = None
        self._by_term: sp.csr_matrix | None = None
        self._rare = np.zeros(0, dtype=bool)  # per term: may it fetch candidates

    @classmethod
    def fit(cls, responses: Sequence[str], *, weight: float = 0.0, candidates: int = 100) -> Any:
        """TF-IDF fitted on ``responses`` (the retriever's response set)."""
        vectorizer = TfidfVectorizer(analyzer=lexical_tokens)
        vectorizer.fit(responses)
        return cls(
            vectorizer.get_feature_names_out().tolist(),
            vectorizer.idf_.tolist(),
            weight=weight,
            candidates=candidates,
        )

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "weight": self.weight,
                "candidates": self.candidates,
                "validation": self.validation,
                "vocabulary": self.vocabulary,
                "idf": self.idf.tolist(),
            }
        ).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> LexicalReranker:
        raw = json.loads(data)
        return cls(
            raw["vocabulary"],
            raw["idf"],
            weight=raw["weight"],
            candidates=raw["candidates"],
            validation=raw.get("validation"),
        )

    def terms(self, text: str) -> TermWeights:
        """``text``'s TF-IDF row (the row :meth:`vectors` gives; a test holds them equal), built
        directly: ``TfidfVectorizer.transform`` spends ~1.7 ms validating its input per call,
        which at batch 1 cost more than the rest of a retrieval."""
        return self._row(self._counts(text))

    def context_terms(self, turns: Sequence[str]) -> tuple[TermWeights, list[TermWeights]]:
        """The TF-IDF row of the ``turns`` joined by a space (the query) and of each turn, each
        turn tokenised once: the query's term counts are the sum of the turns' counts."""
        counts = [self._counts(t) for t in turns]
        total: dict[int, int] = {}
        for c in counts:
            for col, n in c.items():
                total[col] = total.get(col, 0) + n
        return self._row(total), [self._row(c) for c in counts]

    def _counts(self, text: str) -> dict[int, int]:
        vocab = self.vectorizer.vocabulary_
        counts: dict[int, int] = {}
        for token in lexical_tokens(text):
            col = vocab.get(token)
            if col is not None:
                counts[col] = counts.get(col, 0) + 1
        return counts

    def _row(self, counts: dict[int, int]) -> TermWeights:
        cols = np.fromiter(sorted(counts), dtype=np.int64, count=len(counts))
        weights = np.array([counts[c] for c in cols.tolist()], dtype=np.float64) * self.idf[cols]
        norm = float(np.sqrt((weights**2).sum()))
        return TermWeights(cols, weights / norm if norm > 0 else weights)

    def query_vectors(self, texts: Sequence[str]) -> sp.csr_matrix:
        """:meth:`terms` of each text, stacked as CSR rows (the rows :meth:`vectors` gives)."""
        rows = [self.terms(text) for text in texts]
        indptr = np.cumsum([0] + [len(r.cols) for r in rows])
        return sp.csr_matrix(
            (
                np.concatenate([r.weights for r in rows]) if rows else np.zeros(0),
                np.concatenate([r.cols for r in rows]) if rows else np.zeros(0, dtype=np.int64),
                indptr,
            ),
            shape=(len(texts), len(self.vocabulary)),
        )

    def vectors(self, texts: Sequence[str]) -> sp.csr_matrix:
        """L2-normalised TF-IDF rows."""
        return sp.csr_matrix(self.vectorizer.transform(list(texts)))

    def index_responses(self, responses: Sequence[str]) -> None:
        """Vectorise the response set once (row i = response id i), with its term -> responses
        transpose for candidate generation."""
        self._responses = self.vectors(responses)
        self._responses.sort_indices()
        self._by_term = sp.csr_matrix(self._responses.T)
        self._by_term.sort_indices()
        df = np.diff(self._by_term.indptr)  # responses per term
        # Terms in more than MAX_CANDIDATE_DF of the set fetch nothing (they still score).
        self._rare = df <= max(1, MAX_CANDIDATE_DF * len(responses))

    def candidate_scores(
        self, query: TermWeights, turns: Sequence[TermWeights], ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """For response ids ``ids`` of one context: their TF-IDF cosine with the context's
        ``query`` (the lexical half of the hybrid score), and whether each is an *echo*, a
        candidate whose cosine with one of the context's ``turns`` is at least ``ECHO_COSINE``
        (it restates the conversation instead of answering it). The candidates' rows are
        gathered once for both (:meth:`terms` builds the query and turn rows)."""
        if self._responses is None:
            raise RuntimeError("index_responses() first")
        if ids.size == 0:
            return np.zeros(0), np.zeros(0, dtype=bool)
        owner, cols, vals = _gather_rows(self._responses, ids)
        # each candidate entry's weight in the query and in each turn (0 where the row lacks
        # the term): a lookup in the rows' sorted columns, not a vocabulary-wide dense row
        cos = [
            np.bincount(owner, weights=_weights_at(t, cols) * vals, minlength=ids.size)
            for t in (query, *turns)
        ]
        echo = np.max(cos[1:], axis=0) >= ECHO_COSINE if turns else np.zeros(ids.size, bool)
        return cos[0], np.asarray(echo)

    def lexical_candidates(self, query: TermWeights, k: int) -> np.ndarray:
        """The ids of the (at most) ``k`` responses with the highest TF-IDF cosine above 0 with
        ``query``'s ``QUERY_TERMS`` heaviest rare terms, best first (ties: lower id first): the
        lexical half of a hybrid candidate set. A word like "you" is in a third of the responses
        and would make every query touch most of the set, so only rare terms fetch."""
        if self._by_term is None:
            raise RuntimeError("index_responses() first")
        rare = self._rare[query.cols]
        cols, weights = query.cols[rare], query.weights[rare]
        if cols.size > QUERY_TERMS:
            heaviest = np.argsort(-weights, kind="stable")[:QUERY_TERMS]
            cols, weights = cols[heaviest], weights[heaviest]
        owner, ids, vals = _gather_rows(self._by_term, cols)
        if ids.size == 0:
            return np.zeros(0, dtype=np.int64)
        unique, where = np.unique(ids, return_inverse=True)
        scores = np.bincount(where, weights=vals * weights[owner])
        return unique[np.lexsort((unique, -scores))[:k]].astype(np.int64)

    def mix(self, dense: np.ndarray, lexical: np.ndarray) -> np.ndarray:
        """hybrid = z(dense) + weight * z(lexical), row by row (see the module doc)."""
        return mix_scores(dense, lexical, self.weight)

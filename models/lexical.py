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


@dataclass(frozen=True)
class ContextTerms:
    """A context's TF-IDF rows over the vocabulary columns its turns hold, as one small dense
    matrix: row 0 is the query (the turns joined: its term counts are the sum of theirs), row
    1 + i is turn i; each row L2-normalised. One gather of a candidate's terms scores it against
    every row at once (:meth:`LexicalReranker.candidate_scores`)."""

    cols: np.ndarray  # int64, ascending: every column any turn holds (so all of the query's)
    weights: np.ndarray  # float64 (1 + turns, cols.size)

    @property
    def query(self) -> TermWeights:
        """The query's row (every column: a turn's terms are the query's)."""
        return TermWeights(self.cols, self.weights[0])

    def turn(self, i: int) -> TermWeights:
        """Turn ``i``'s row, its own columns only."""
        held = self.weights[1 + i] > 0
        return TermWeights(self.cols[held], self.weights[1 + i][held])


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


def _cosines(
    context: ContextTerms, matrix: sp.csr_matrix, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``ids`` of ``matrix`` (L2-normalised TF-IDF rows) against every row of ``context``:
    their cosine with the query, and whether each is an echo (cosine >= ``ECHO_COSINE`` with one
    of the turns). The rows are gathered once and scored against all of ``context`` in one pass."""
    rows = context.weights.shape[0]
    if ids.size == 0 or context.cols.size == 0:
        return np.zeros(ids.size), np.zeros(ids.size, dtype=bool)
    owner, cols, vals = _gather_rows(matrix, ids)
    # each gathered entry's column among the context's (a lookup in its sorted columns);
    # entries of columns the context lacks contribute 0 and are dropped
    at = np.minimum(np.searchsorted(context.cols, cols), context.cols.size - 1)
    held = context.cols[at] == cols
    owner, at, vals = owner[held], at[held], vals[held]
    flat = owner + ids.size * np.arange(rows)[:, None]  # (rows, entries): row-major cells
    cos = np.bincount(
        flat.ravel(), weights=(context.weights[:, at] * vals).ravel(), minlength=rows * ids.size
    ).reshape(rows, ids.size)
    echo = cos[1:].max(axis=0) >= ECHO_COSINE if rows > 1 else np.zeros(ids.size, bool)
    return cos[0], np.asarray(echo)


def lexical_tokens(text: str) -> list[str]:
    """Word tokens: whitespace tokens (lower-cased) with at least one letter or digit."""
    return [t for t in text.lower().split() if any(ch.isalnum() for ch in t)]


def context_text(context: Sequence[str], turns: int) -> str:
    """The last ``turns`` turns of a context, normalised and joined by a space."""
    return " ".join(normalize_text(t) for t in list(context)[-turns:])


def zscore(x: np.ndarray) -> np.ndarray:
    """Standardise each row (scores of one context's candidates); a constant row becomes 0."""
    x = np.asarray(x, dtype=np.float64)
    # np.std's own arithmetic (deviations, their mean square, its root) without its per-call
    # checks, which cost more than the sums on one context's ~200 candidates
    d = x - x.mean(axis=-1, keepdims=True)
    std = np.sqrt((d * d).mean(axis=-1, keepdims=True))
    return d / np.where(std > 0, std, 1.0)


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

    def context_terms(self, turns: Sequence[str]) -> ContextTerms:
        """The TF-IDF rows of the ``turns`` joined by a space (the query) and of each turn (each
        equal to :meth:`terms` of that text; a test holds them so), each turn tokenised once."""
        vocab = self.vectorizer.vocabulary_
        owners: list[int] = []
        found: list[int] = []
        for i, text in enumerate(turns, start=1):
            for token in lexical_tokens(text):
                col = vocab.get(token)
                if col is not None:
                    owners.append(i)
                    found.append(col)
        rows = 1 + len(turns)
        if not found:
            return ContextTerms(np.zeros(0, dtype=np.int64), np.zeros((rows, 0)))
        # a context holds tens of terms: sorting them in Python beats np.unique's overhead
        unique = sorted(set(found))
        where = {col: j for j, col in enumerate(unique)}
        n = len(unique)
        flat = [owner * n + where[col] for owner, col in zip(owners, found, strict=True)]
        cols = np.asarray(unique, dtype=np.int64)
        counts = np.bincount(flat, minlength=rows * n).reshape(rows, n)
        counts[0] = counts[1:].sum(axis=0)
        weights = counts * self.idf[cols]
        norms = np.sqrt((weights**2).sum(axis=1, keepdims=True))
        return ContextTerms(cols, weights / np.where(norms > 0, norms, 1.0))

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
        self, context: ContextTerms, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """For response ids ``ids`` of one context: their TF-IDF cosine with the context's query
        (the lexical half of the hybrid score), and whether each is an *echo*, a candidate whose
        cosine with one of the context's turns is at least ``ECHO_COSINE`` (it restates the
        conversation instead of answering it). The candidates' rows are gathered once and scored
        against every row of ``context`` (:meth:`context_terms`) in one pass."""
        if self._responses is None:
            raise RuntimeError("index_responses() first")
        return _cosines(context, self._responses, ids)

    def text_scores(
        self, context: ContextTerms, texts: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`candidate_scores` for texts outside the response set (a generator's candidate
        replies, service/backends.py): their TF-IDF cosine with the query, and which are echoes."""
        return _cosines(context, self.query_vectors(texts), np.arange(len(texts)))

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
        if unique.size > k:  # sort only those at or above the k-th best score (ties included)
            kth = np.partition(scores, unique.size - k)[unique.size - k]
            keep = scores >= kth
            unique, scores = unique[keep], scores[keep]
        return unique[np.lexsort((unique, -scores))[:k]].astype(np.int64)

    def mix(self, dense: np.ndarray, lexical: np.ndarray) -> np.ndarray:
        """hybrid = z(dense) + weight * z(lexical), row by row (see the module doc)."""
        return mix_scores(dense, lexical, self.weight)

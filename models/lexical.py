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
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from models.text import normalize_text

LEXICAL_FILE = "lexical.json"
ECHO_COSINE = 0.7  # a candidate this close (TF-IDF cosine) to a context turn restates it
QUERY_TERMS = 8  # a query's heaviest TF-IDF terms that fetch lexical candidates
MAX_CANDIDATE_DF = 0.01  # terms in more of the response set than this do not fetch candidates


def _keep_top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """The ``k`` largest entries of each row of a CSR matrix, the rest dropped."""
    m = m.tocsr(copy=True)
    for row in range(m.shape[0]):
        start, end = m.indptr[row], m.indptr[row + 1]
        if end - start > k:
            vals = m.data[start:end]
            vals[np.argsort(-vals, kind="stable")[k:]] = 0.0
    m.eliminate_zeros()
    return m


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

    def query_vectors(self, texts: Sequence[str]) -> sp.csr_matrix:
        """The same rows as :meth:`vectors` (tf x idf, L2-normalised; a test holds them equal),
        built directly: ``TfidfVectorizer.transform`` spends ~1.7 ms validating its input per
        call, which at batch 1 cost more than the rest of a retrieval."""
        vocab = self.vectorizer.vocabulary_
        indptr, indices, data = [0], [], []
        for text in texts:
            counts: dict[int, int] = {}
            for token in lexical_tokens(text):
                col = vocab.get(token)
                if col is not None:
                    counts[col] = counts.get(col, 0) + 1
            cols = np.fromiter(sorted(counts), dtype=np.int64, count=len(counts))
            weights = (
                np.array([counts[c] for c in cols.tolist()], dtype=np.float64) * self.idf[cols]
            )
            norm = float(np.sqrt((weights**2).sum()))
            indices.append(cols)
            data.append(weights / norm if norm > 0 else weights)
            indptr.append(indptr[-1] + len(cols))
        return sp.csr_matrix(
            (
                np.concatenate(data) if data else np.zeros(0),
                np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
                np.asarray(indptr),
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
        self._by_term = sp.csr_matrix(self._responses.T)
        df = np.diff(self._by_term.indptr)  # responses per term
        # Terms in more than MAX_CANDIDATE_DF of the set fetch nothing (they still score).
        self._rare = df <= max(1, MAX_CANDIDATE_DF * len(responses))

    def candidate_scores(
        self, query: sp.csr_matrix, turns: sp.csr_matrix, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """For response ids ``ids`` of one context: their TF-IDF cosine with the context's
        ``query`` row (the lexical half of the hybrid score), and whether each is an *echo*, a
        candidate whose cosine with one of the context's ``turns`` rows is at least
        ``ECHO_COSINE`` (it restates the conversation instead of answering it). The candidates'
        rows are sliced once for both (:meth:`query_vectors` builds the rows)."""
        if self._responses is None:
            raise RuntimeError("index_responses() first")
        if ids.size == 0:
            return np.zeros(0), np.zeros(0, dtype=bool)
        cos = (self._responses[ids] @ sp.vstack([query, turns]).T).toarray()  # (ids, 1 + turns)
        echo = cos[:, 1:].max(axis=1) >= ECHO_COSINE if turns.shape[0] else np.zeros(len(ids), bool)
        return cos[:, 0], np.asarray(echo)

    def top_candidates(self, queries: Sequence[str] | sp.csr_matrix, k: int) -> list[np.ndarray]:
        """For each query, the ids of the (at most) ``k`` responses with the highest TF-IDF
        cosine above 0, best first: the lexical half of a hybrid candidate set."""
        if self._responses is None or self._by_term is None:
            raise RuntimeError("index_responses() first")
        q = sp.csr_matrix(queries) if sp.issparse(queries) else self.query_vectors(queries)
        # Only each query's QUERY_TERMS heaviest rare terms fetch candidates: a word like "you"
        # is in a third of the responses and would make every query touch most of the set.
        q = q.tocsr(copy=True)
        q.data[~self._rare[q.indices]] = 0.0
        q = _keep_top_per_row(q, QUERY_TERMS)
        scores = (q @ self._by_term).tocsr()
        out = []
        for row in range(scores.shape[0]):
            start, end = scores.indptr[row], scores.indptr[row + 1]
            ids, vals = scores.indices[start:end], scores.data[start:end]
            keep = np.argsort(-vals, kind="stable")[:k]
            out.append(ids[keep].astype(np.int64))
        return out

    def mix(self, dense: np.ndarray, lexical: np.ndarray) -> np.ndarray:
        """hybrid = z(dense) + weight * z(lexical), row by row (see the module doc)."""
        return zscore(dense) + self.weight * zscore(lexical)

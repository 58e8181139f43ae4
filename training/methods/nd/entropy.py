"""Clustered source entropy for D_N: ND eq. 4 over clusters of utterances (Csáky et al. 2019).

ND eq. 4 (Li et al. 2022), taken from Csáky et al. (2019, "Improving neural conversational models
with entropy-based data filtering", sec. 3):

    H_src(r) = -Σ_q p(q|r) log p(q|r)

with p(q|r) the relative frequency of (q, r) pairs among the training pairs whose response is r.
Read over exact strings (Csáky et al.'s IDENTITY variant) nearly every DailyDialog response occurs
once, so H_src = 0 for most pairs (87% of the official training split) and the top half of the
corpus is mostly a tie that a seeded shuffle decides. Csáky et al. compute the same entropy over
*clusters* of utterances: q and r are cluster ids, queries and responses are clustered
separately, and a pair's score is the entropy of its response's cluster (sec. 3.2). Their
AVG-EMBEDDING variant represents an utterance by the average of its word vectors weighted by
smooth inverse frequency a / (a + p(w)), a = 1e-3 (Arora et al. 2017), clustered by mean shift
(their code also offers k-means).

Here (:class:`EntropyConfig`):

* ``identity``: q = the whole context (its turns), r = the response string; the arithmetic of
  :func:`training.methods.nd.negative_set.source_entropy`, so D_N is bit-identical to the unclustered definition.
* ``avg-embedding``: SIF-weighted mean word vectors (Arora et al. 2017, with its common-component
  removal when ``remove_pc``), L2-normalised, clustered by k-means (scikit-learn MiniBatchKMeans,
  ``clusters`` centres per side; a query is its context's turns joined). There are no
  pretrained word vectors offline, so the word vectors come from the training corpus itself:
  a positive-PMI word-word co-occurrence matrix (``window`` tokens either side within an
  utterance, context-distribution smoothing 0.75, Levy et al. 2015) factorised by truncated SVD
  (rank ``dim``; vectors U·sqrt(S)).
  Membership has a bandwidth, as in mean shift: an utterance whose cosine to its nearest centre
  is below ``radius`` stays a cluster of its own (H = 0 when its response string is unique).
  Without it k-means puts every utterance in a cluster of tens, H_src > 0 for ~100% of pairs and
  H_src mostly measures cluster size (see reports/nd_negative_set.md for the sweep). Identical
  strings always share a cluster (the unique strings are clustered), and an utterance with no
  in-vocabulary word is a cluster of its own.

Entropies are in nats (Csáky et al. report bits; the base does not change the ranking).
:func:`negative_set_stats` describes a D_N: ties, its most frequent responses, length, Dist-2.
``python -m training negative-set`` prints identity vs avg-embedding side by side.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.metrics import distinct_n, max_ratio
from training.core.data import DialogueExample

ENTROPY_METHODS = ("identity", "avg-embedding")
TOP_N = 20

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EntropyConfig:
    """How H_src (ND eq. 4) is computed: over exact strings or over clusters of utterances.

    The cluster defaults were chosen on the official DailyDialog split (max_context_turns=1;
    sweep in reports/nd_negative_set.md): 3000 centres with radius 0.75 leave H_src > 0 for ~57%
    of pairs and 53% of distinct responses (the ND authors' released scores: ~55% of pairs), keep
    the 50% cut clear of the H_src = 0 tie, and give one of the shortest, least diverse D_Ns of
    the sweep (2000-5000 centres at 0.75 are within 0.1 token and 0.002 Dist-2 of each other).
    Only ``method`` matters for ``identity``.
    """

    method: str = "identity"  # identity | avg-embedding
    clusters: int = 3000  # k-means centres for the responses
    query_clusters: int | None = None  # k-means centres for the queries; None = ``clusters``
    radius: float | None = 0.75  # min cosine to the nearest centre to join it; None = k-means only
    seed: int = 0  # k-means and SVD seed
    dim: int = 100  # word-vector size (rank of the PPMI SVD)
    window: int = 5  # co-occurrence window (tokens either side, within one utterance)
    min_count: int = 2  # corpus count a word needs to get a vector
    sif_a: float = 1e-3  # smooth inverse frequency a / (a + p(w)) (Arora et al. 2017; Csáky: 1e-3)
    remove_pc: bool = True  # subtract the first principal component (SIF's common component)

    def __post_init__(self) -> None:
        if self.method not in ENTROPY_METHODS:
            raise ValueError(
                f"entropy method must be one of {ENTROPY_METHODS}, got {self.method!r}"
            )
        if self.clusters < 1 or (self.query_clusters is not None and self.query_clusters < 1):
            raise ValueError("cluster counts must be >= 1")
        if self.radius is not None and not -1.0 <= self.radius <= 1.0:
            raise ValueError(f"radius is a cosine in [-1, 1], got {self.radius}")

    def describe(self) -> str:
        if self.method == "identity":
            return "identity (exact strings)"
        q = self.clusters if self.query_clusters is None else self.query_clusters
        return (
            f"avg-embedding (k-means {self.clusters} response / {q} query centres, radius "
            f"{self.radius}; corpus PPMI-SVD word vectors dim {self.dim}, window {self.window}, "
            f"min count {self.min_count}; SIF a={self.sif_a}, remove pc {self.remove_pc}; "
            f"seed {self.seed})"
        )


# --- the entropy ----------------------------------------------------------------------------------


def cluster_entropy(
    query_ids: Sequence[Hashable], response_ids: Sequence[Hashable]
) -> dict[Hashable, float]:
    """ND eq. 4 over ids: H(R) = -Σ_Q p(Q|R) ln p(Q|R) for every response id R.

    ``query_ids[i]`` and ``response_ids[i]`` identify pair i's query and response (the strings
    themselves, or cluster ids: Csáky et al. 2019, sec. 3.2); p(Q|R) is the share of the pairs
    with response id R whose query id is Q.
    """
    queries: dict[Hashable, Counter[Hashable]] = defaultdict(Counter)
    for q, r in zip(query_ids, response_ids, strict=True):
        queries[r][q] += 1
    entropy: dict[Hashable, float] = {}
    for r, counts in queries.items():
        total = sum(counts.values())
        entropy[r] = -sum((c / total) * math.log(c / total) for c in counts.values()) + 0.0
    return entropy


@dataclass
class PairEntropy:
    """H_src of every pair's response (cluster), and the cluster ids behind it."""

    entropy: np.ndarray  # (n,) float64: H_src of pair i's response cluster
    response_cluster: np.ndarray  # (n,) int64
    query_cluster: np.ndarray  # (n,) int64
    config: EntropyConfig = field(default_factory=EntropyConfig)


def pair_source_entropy(
    examples: Sequence[DialogueExample],
    cfg: EntropyConfig | None = None,
    vectors: CorpusWordVectors | None = None,
) -> PairEntropy:
    """H_src (ND eq. 4) of each pair's response, over strings or clusters (Csáky et al. 2019).

    ``vectors`` reuses word vectors fitted on the same examples (a sweep over cluster counts).
    """
    cfg = cfg or EntropyConfig()
    responses = [e.response for e in examples]
    contexts = [e.context for e in examples]
    if cfg.method == "identity":
        # string keys: exactly training.methods.nd.negative_set.source_entropy
        h = cluster_entropy(contexts, responses)
        entropy = np.array([h[r] for r in responses], dtype=np.float64)
        return PairEntropy(entropy, _first_seen_ids(responses), _first_seen_ids(contexts), cfg)
    queries = [" ".join(c) for c in contexts]
    vectors = vectors or CorpusWordVectors.fit([*responses, *queries], cfg)
    q_k = cfg.clusters if cfg.query_clusters is None else cfg.query_clusters
    r_ids = vectors.cluster(responses, cfg.clusters, cfg.seed, cfg.radius, cfg.remove_pc)
    q_ids = vectors.cluster(queries, q_k, cfg.seed + 1, cfg.radius, cfg.remove_pc)
    h_cl = cluster_entropy(q_ids.tolist(), r_ids.tolist())
    entropy = np.array([h_cl[r] for r in r_ids.tolist()], dtype=np.float64)
    return PairEntropy(entropy, r_ids, q_ids, cfg)


def top_fraction(entropy: Sequence[float], fraction: float, seed: int) -> list[int]:
    """Indices of the top ``fraction`` of pairs by H_src (ND Alg. 1, lines 2-4), best first.

    Ties (many pairs share H_src = 0 under ``identity``) are broken by a seeded shuffle, so the
    cut does not follow the corpus order.
    """
    assert 0 < fraction <= 1, f"fraction must be in (0, 1], got {fraction}"
    h = [float(x) for x in entropy]
    order = np.random.default_rng(seed).permutation(len(h))
    ranked = sorted(order.tolist(), key=lambda i: -h[i])  # stable: ties stay shuffled
    return ranked[: max(1, round(fraction * len(h)))]


def _first_seen_ids(items: Sequence[Hashable]) -> np.ndarray:
    ids: dict[Hashable, int] = {}
    return np.array([ids.setdefault(x, len(ids)) for x in items], dtype=np.int64)


class CorpusWordVectors:
    """PPMI-SVD word vectors learnt from the corpus, and SIF-averaged utterance vectors."""

    def __init__(self, vocab: dict[str, int], vectors: np.ndarray, prob: np.ndarray, a: float):
        self.vocab = vocab
        self.vectors = vectors  # (V, dim)
        self.prob = prob  # (V,) unigram probability p(w)
        self.a = a

    @classmethod
    def fit(cls, texts: Sequence[str], cfg: EntropyConfig) -> CorpusWordVectors:
        """Word vectors from ``texts``: truncated SVD of their PPMI co-occurrence matrix."""
        from scipy import sparse
        from sklearn.utils.extmath import randomized_svd

        counts = Counter(tok for t in texts for tok in t.split())
        words = sorted(
            (w for w, c in counts.items() if c >= cfg.min_count), key=lambda w: (-counts[w], w)
        )
        if len(words) < 2:
            raise ValueError("need at least two words seen min_count times for word vectors")
        vocab = {w: i for i, w in enumerate(words)}
        n = len(vocab)
        seqs = [[vocab[w] for w in t.split() if w in vocab] for t in texts]
        flat = np.fromiter((i for s in seqs for i in s), dtype=np.int64)
        seg = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        for d in range(1, cfg.window + 1):  # symmetric window, never across utterances
            same = seg[:-d] == seg[d:]
            left, right = flat[:-d][same], flat[d:][same]
            rows += [left, right]
            cols += [right, left]
        r, c = np.concatenate(rows), np.concatenate(cols)
        cooc = sparse.coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n)).tocsr().tocoo()
        total = cooc.data.sum()
        p_word = np.bincount(cooc.row, weights=cooc.data, minlength=n) / total
        ctx = np.bincount(cooc.col, weights=cooc.data, minlength=n) ** 0.75
        p_ctx = ctx / ctx.sum()  # context-distribution smoothing (Levy et al. 2015)
        with np.errstate(divide="ignore"):
            pmi = np.log(cooc.data / total) - np.log(p_word[cooc.row]) - np.log(p_ctx[cooc.col])
        keep = pmi > 0
        ppmi = sparse.csr_matrix((pmi[keep], (cooc.row[keep], cooc.col[keep])), shape=(n, n))
        u, s, _ = randomized_svd(ppmi, min(cfg.dim, n - 1), random_state=cfg.seed)
        unigram = np.array([counts[w] for w in words], dtype=np.float64)
        return cls(vocab, u * np.sqrt(s), unigram / unigram.sum(), cfg.sif_a)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """SIF-weighted mean word vector of each text, L2-normalised; zero when no word is known.

        Weights a / (a + p(w)) over the in-vocabulary tokens, divided by their number (Arora et
        al. 2017; Csáky et al. 2019).
        """
        from scipy import sparse

        rows: list[int] = []
        cols: list[int] = []
        for i, t in enumerate(texts):
            ids = [self.vocab[w] for w in t.split() if w in self.vocab]
            rows += [i] * len(ids)
            cols += ids
        row = np.array(rows, dtype=np.int64)
        col = np.array(cols, dtype=np.int64)
        length = np.bincount(row, minlength=len(texts)).astype(np.float64)
        vals = self.a / (self.a + self.prob[col]) / np.maximum(length[row], 1.0)
        weights = sparse.csr_matrix((vals, (row, col)), shape=(len(texts), len(self.vocab)))
        return _unit_rows(np.asarray(weights @ self.vectors))

    def cluster(
        self,
        texts: Sequence[str],
        k: int,
        seed: int,
        radius: float | None = None,
        remove_pc: bool = False,
    ) -> np.ndarray:
        """Cluster id of each text: k-means over the unique texts' vectors.

        Identical texts share an id. With ``radius``, a text whose cosine to its nearest centre
        is below it gets an id of its own (the bandwidth of Csáky et al.'s mean shift); so does a
        text with no in-vocabulary word.
        """
        from sklearn.cluster import MiniBatchKMeans

        unique = list(dict.fromkeys(texts))
        x = self.embed(unique)
        known = np.linalg.norm(x, axis=1) > 0
        xk = x[known]
        if remove_pc and len(xk) > 1:
            pc = np.linalg.svd(xk, full_matrices=False)[2][0]
            xk = _unit_rows(xk - np.outer(xk @ pc, pc))
        labels = np.empty(len(unique), dtype=np.int64)
        k = min(k, len(xk))
        if k > 0:
            km = MiniBatchKMeans(
                n_clusters=k, random_state=seed, n_init=1, batch_size=1024, init="random"
            ).fit(xk)
            lab = km.predict(xk)
            if radius is not None:
                centres = _unit_rows(km.cluster_centers_)
                far = np.einsum("ij,ij->i", xk, centres[lab]) < radius
                lab[far] = k + np.arange(int(far.sum()))
            labels[known] = lab
        labels[~known] = len(unique) + k + np.arange(int((~known).sum()))
        index = {t: i for i, t in enumerate(unique)}
        return labels[[index[t] for t in texts]]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


# --- what D_N looks like --------------------------------------------------------------------------


@dataclass
class NegativeSetStats:
    """D_N against D: ties at the cut, its most frequent responses, length and diversity."""

    method: str
    train_pairs: int
    dn_pairs: int
    fraction: float
    zero_entropy_share: float  # share of D's pairs with H_src = 0
    nonzero_response_share: float  # share of D's distinct responses with H_src > 0
    threshold: float  # the lowest H_src inside D_N
    tied_at_threshold_share: float  # share of D's pairs whose H_src equals the threshold
    dn_random_draw_share: float  # share of D_N chosen by the shuffle among a tie cut at the end
    dn_distinct_responses: int
    top_responses: list[tuple[str, int, float]]  # D_N's most frequent: (response, pairs, H_src)
    top20_share_dn: float  # share of D_N taken by D_N's 20 most frequent responses
    top20_share_d: float  # share of D taken by D's 20 most frequent responses
    max_ratio_dn: float  # share of D_N's single most frequent response
    max_ratio_d: float
    mean_len_dn: float  # tokens per response
    mean_len_d: float
    distinct2_dn: float  # Dist-2 over the responses
    distinct2_d: float
    distinct2_d_sample: float  # Dist-2 of a random same-size sample of D (Dist-n falls with size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top_responses"] = [
            {"response": r, "pairs_in_dn": n, "source_entropy": h} for r, n, h in self.top_responses
        ]
        return d


def negative_set_stats(
    examples: Sequence[DialogueExample],
    entropy: Sequence[float] | np.ndarray,
    selected: Sequence[int],
    *,
    fraction: float,
    method: str = "",
    seed: int = 0,
    top_n: int = TOP_N,
) -> NegativeSetStats:
    """Statistics of D_N = ``examples[selected]`` given every pair's H_src (``entropy``)."""
    h = np.asarray(entropy, dtype=np.float64)
    responses = [e.response for e in examples]
    dn = [responses[i] for i in selected]
    threshold = float(h[list(selected)].min())
    tied = int((h == threshold).sum())
    tied_in_dn = int((h[list(selected)] == threshold).sum())
    h_of = dict(zip(responses, h.tolist(), strict=True))
    d_counts, dn_counts = Counter(responses), Counter(dn)
    sample = np.random.default_rng(seed).choice(len(responses), size=len(dn), replace=False)

    def top_share(counts: Counter[str], n: int) -> float:
        return sum(c for _, c in counts.most_common(top_n)) / n

    def mean_len(texts: Sequence[str]) -> float:
        return float(np.mean([len(t.split()) for t in texts]))

    return NegativeSetStats(
        method=method,
        train_pairs=len(responses),
        dn_pairs=len(dn),
        fraction=fraction,
        zero_entropy_share=float((h == 0).mean()),
        nonzero_response_share=sum(v > 0 for v in h_of.values()) / len(h_of),
        threshold=threshold,
        tied_at_threshold_share=tied / len(h),
        dn_random_draw_share=tied_in_dn / len(dn) if tied > tied_in_dn else 0.0,
        dn_distinct_responses=len(dn_counts),
        top_responses=[(r, n, h_of[r]) for r, n in dn_counts.most_common(top_n)],
        top20_share_dn=top_share(dn_counts, len(dn)),
        top20_share_d=top_share(d_counts, len(responses)),
        max_ratio_dn=max_ratio(dn),
        max_ratio_d=max_ratio(responses),
        mean_len_dn=mean_len(dn),
        mean_len_d=mean_len(responses),
        distinct2_dn=distinct_n(dn, 2),
        distinct2_d=distinct_n(responses, 2),
        distinct2_d_sample=distinct_n([responses[i] for i in sample.tolist()], 2),
    )

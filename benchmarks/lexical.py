"""Lexical retrieval baselines for the G2R report: TF-IDF (cosine) and BM25 over a response set.

Both score a context against a response by a sparse dot product over word tokens (whitespace
tokens of the normalised text that hold a letter or digit; several turns are joined by a space):

* **TF-IDF**: scikit-learn's ``TfidfVectorizer`` fitted on the response set (smoothed idf
  ln((1 + N) / (1 + df)) + 1, raw term counts, rows L2-normalised), so the score is the cosine
  of the context's and the response's vectors.
* **BM25** (Robertson et al., the Lucene variant of the idf), with N, df and avgdl from the
  response set and scikit-learn's ``CountVectorizer`` for the counts::

      BM25(q, d) = sum_t c(t, q) * idf(t) * tf(t, d) * (k1 + 1)
                                          / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
      idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5)),   k1 = 1.5, b = 0.75

  where c(t, q) is the count of t in the context, tf(t, d) its count in the response and |d| the
  response's word count. Words the response set never holds score 0.

Hits@1/K and Hits@5/K follow :class:`training.methods.g2r.losses.HitsEvaluator` exactly: the gold
and 99 random distinct responses of the split (``hits_candidates``, seed 0), the gold's rank =
the number of distractors scoring at least as high (ties count against the gold, so a context
that shares no word with any candidate is a miss).

    OMP_NUM_THREADS=1 python -m benchmarks.lexical --turns 1,3 --out reports/lexical_baselines
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from benchmarks import write_report
from benchmarks.retrieval import sample_picks, served_teacher_share
from models.lexical import context_text, lexical_tokens
from models.metrics import response_metrics
from training.config import DAILYDIALOG
from training.core.data import DialogueExample, load_splits, training_response_token_counts
from training.methods.g2r.losses import hits_at_k, hits_candidates

logger = logging.getLogger("benchmarks.lexical")

DEFAULT_DATA = DAILYDIALOG
METHODS = ("tfidf", "bm25")
REPLY_METRICS = ("dist-2", "dist-3", "avg-len", "max-ratio")


class SparseRetriever:
    """Scores = ``encode_queries(q) @ encode_documents(d).T``; ``fit`` indexes a response set."""

    name = "sparse"

    def __init__(self, responses: Sequence[str]) -> None:
        self.responses = list(responses)
        self._fit(self.responses)
        self.matrix = self.encode_documents(self.responses)

    def _fit(self, responses: Sequence[str]) -> None:
        raise NotImplementedError

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        raise NotImplementedError

    def encode_documents(self, texts: Sequence[str]) -> sp.csr_matrix:
        raise NotImplementedError

    def scores(self, queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
        """(len(queries), len(documents)) dense scores."""
        product = self.encode_queries(queries) @ self.encode_documents(documents).T
        return np.asarray(product.toarray(), dtype=np.float64)

    def top1(self, queries: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Index of the best response of the fitted set for each query (ties: the lowest id)."""
        out = np.empty(len(queries), dtype=np.int64)
        for start in range(0, len(queries), batch_size):
            q = self.encode_queries(queries[start : start + batch_size])
            out[start : start + q.shape[0]] = np.asarray((q @ self.matrix.T).toarray()).argmax(1)
        return out


class TfidfRetriever(SparseRetriever):
    """Cosine between scikit-learn TF-IDF vectors fitted on the response set."""

    name = "tfidf"

    def _fit(self, responses: Sequence[str]) -> None:
        self.vectorizer = TfidfVectorizer(analyzer=lexical_tokens)
        self.vectorizer.fit(responses)

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        return sp.csr_matrix(self.vectorizer.transform(texts))

    def encode_documents(self, texts: Sequence[str]) -> sp.csr_matrix:
        return sp.csr_matrix(self.vectorizer.transform(texts))


class BM25Retriever(SparseRetriever):
    """BM25 (module doc) with N, df and avgdl of the response set."""

    name = "bm25"

    def __init__(self, responses: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        super().__init__(responses)

    def _fit(self, responses: Sequence[str]) -> None:
        self.vectorizer = CountVectorizer(analyzer=lexical_tokens)
        counts = sp.csr_matrix(self.vectorizer.fit_transform(responses))
        n = counts.shape[0]
        df = np.bincount(counts.indices, minlength=counts.shape[1]).astype(np.float64)
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5))
        lengths = np.asarray([len(lexical_tokens(r)) for r in responses], dtype=np.float64)
        self.avgdl = float(lengths.mean()) if n else 0.0

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        return sp.csr_matrix(self.vectorizer.transform(texts), dtype=np.float64)

    def encode_documents(self, texts: Sequence[str]) -> sp.csr_matrix:
        tf = sp.csr_matrix(self.vectorizer.transform(texts), dtype=np.float64)
        lengths = np.asarray([len(lexical_tokens(t)) for t in texts], dtype=np.float64)
        norm = self.k1 * (1 - self.b + self.b * lengths / max(self.avgdl, 1e-9))  # per document
        rows = np.repeat(np.arange(tf.shape[0]), np.diff(tf.indptr))
        weights = self.idf[tf.indices] * tf.data * (self.k1 + 1) / (tf.data + norm[rows])
        return sp.csr_matrix((weights, tf.indices, tf.indptr), shape=tf.shape)


def make_retriever(method: str, responses: Sequence[str]) -> SparseRetriever:
    if method == "tfidf":
        return TfidfRetriever(responses)
    if method == "bm25":
        return BM25Retriever(responses)
    raise ValueError(f"unknown lexical method {method!r}; choose from {METHODS}")


def parse_methods(spec: str) -> list[str]:
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown lexical method {m!r}; choose from {METHODS}")
    return methods


def lexical_hits(
    retriever: SparseRetriever,
    examples: Sequence[DialogueExample],
    turns: int,
    *,
    k: int = 100,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, float]:
    """Hits@1/K and Hits@5/K with HitsEvaluator's candidates (gold + K - 1 random responses of
    the split, ``seed``), the contexts cut to their last ``turns`` turns."""
    pool = list(dict.fromkeys(e.response for e in examples))
    cand = hits_candidates([e.response for e in examples], pool, k, seed)
    used = np.unique(cand)
    columns = np.searchsorted(used, cand)  # (N, K) into the encoded candidates
    docs = retriever.encode_documents([pool[i] for i in used.tolist()]).T.tocsc()
    queries = retriever.encode_queries([context_text(e.context, turns) for e in examples])
    rows = []
    for start in range(0, len(examples), batch_size):
        dense = np.asarray((queries[start : start + batch_size] @ docs).toarray())
        rows.append(np.take_along_axis(dense, columns[start : start + batch_size], axis=1))
    scores = torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros(0, cand.shape[1])
    return {**hits_at_k(scores), "hits_k": float(cand.shape[1]), "n_examples": len(examples)}


def echo_rate(replies: Sequence[str], examples: Sequence[DialogueExample]) -> float:
    """Share of replies that repeat a turn of their own context word for word."""
    echoes = [r in e.context for r, e in zip(replies, examples, strict=True)]
    return float(np.mean(echoes)) if echoes else 0.0


def evaluate_lexical(
    retriever: SparseRetriever,
    examples: Sequence[DialogueExample],
    turns: int,
    train_counts: Mapping[str, int],
    sources: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Hits@k/K on ``examples`` and the reply metrics of the top-1 over the fitted response set
    (with ``sources``: the teacher's served share too). The replies come back under "replies"."""
    hits = lexical_hits(retriever, examples, turns)
    top1 = retriever.top1([context_text(e.context, turns) for e in examples])
    replies = [retriever.responses[i] for i in top1.tolist()]
    metrics = response_metrics(replies, [e.response for e in examples], train_counts)
    out: dict[str, Any] = {
        "method": retriever.name,
        "turns": turns,
        "n_responses": len(retriever.responses),
        **hits,
        **{m: metrics[m] for m in REPLY_METRICS},
        "echo_rate": echo_rate(replies, examples),
        "replies": replies,
    }
    if sources is not None:
        out["served"] = served_teacher_share(sources, top1.tolist())
    return out


def response_set(
    train: Sequence[DialogueExample], preset: str, blocklist: Path | None
) -> tuple[list[str], list[str]]:
    """R as the plain bi-encoder bundle of ``preset`` indexes it: distinct training responses
    through the preset's ResponseFilter (length bounds, blocklist)."""
    from models.safety import load_blocklist
    from training.config import get_retriever_preset
    from training.methods.g2r.data import ResponseFilter, build_retrieval_data

    rp = get_retriever_preset(preset)
    blocked = tuple(load_blocklist(blocklist)) if blocklist and blocklist.is_file() else ()
    data = build_retrieval_data(
        train, None, ResponseFilter(rp.response_min_tokens, rp.response_max_tokens, blocked)
    )
    return data.responses, data.sources


def to_markdown(results: Mapping[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# Lexical retrieval baselines (DailyDialog test)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Response set: {meta['response_set']} ({meta['n_responses']} responses; TF-IDF / BM25 "
        "statistics are fitted on it, never on the test split).  ",
        "Hits@k/K: exactly as the trained retrievers in reports/g2r.md (HitsEvaluator's protocol: "
        "the gold + 99 random distinct test responses, seed 0; ties count against the gold). The "
        "test split is loaded with `max_context_turns` = the number of turns, as "
        "`benchmarks.retrieval` loads it for a bundle reading that many turns, so the 1-turn "
        "rows use the same test pairs and candidates as the trained retrievers of "
        "reports/g2r.md (their bundles read 1 turn). Reply metrics: the top-1 over the response "
        "set for every test context.",
        "",
        "| method | context turns | test pairs | Hits@1/K | Hits@5/K | Dist-2 | Dist-3 | avg len "
        "| max-ratio | top-1 repeats a context turn |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['method']} | {r['turns']} | {r['n_examples']} | {r['hits@1']:.4f} | "
            f"{r['hits@5']:.4f} | {r['dist-2']:.4f} | {r['dist-3']:.4f} | {r['avg-len']:.2f} | "
            f"{r['max-ratio']:.4f} | {r['echo_rate']:.4f} |"
        )
    lines += [
        "",
        "BM25: k1 = 1.5, b = 0.75, idf = ln(1 + (N - df + 0.5) / (df + 0.5)); TF-IDF: "
        "scikit-learn defaults (smoothed idf, L2-normalised rows, cosine). Words: whitespace "
        "tokens with a letter or digit; turns joined by a space.",
    ]
    methods = meta["methods"]
    for turns, table in results["samples"].items():
        lines += [
            "",
            f"## Sample replies, {turns}-turn contexts (the test contexts of `training.eval.generation`)",
            "",
            "| context | reference | " + " | ".join(methods) + " |",
            "|---|---|" + "---|" * len(methods),
        ]
        for sample in table:
            cells = [" / ".join(sample["context"]), sample["reference"]]
            cells += [sample[m] for m in methods]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    methods = parse_methods(args.methods)
    turns_list = [int(t) for t in args.turns.split(",")]
    meta: dict[str, Any] = {
        "command": "python -m benchmarks.lexical " + " ".join(sys.argv[1:]),
        "data": str(args.data),
        "split": "test",
        "methods": methods,
        "turns": turns_list,
    }
    rows = []
    samples: dict[str, list[dict[str, Any]]] = {}
    for turns in turns_list:
        splits = load_splits(args.data, max_context_turns=turns)
        examples = splits.test[: args.max_examples] if args.max_examples else splits.test
        responses, sources = response_set(splits.train, args.preset, args.blocklist)
        meta["response_set"] = (
            f"the distinct training responses through the `{args.preset}` preset's response "
            f"filter (blocklist {args.blocklist if args.blocklist else 'none'})"
        )
        meta["n_responses"] = len(responses)
        counts = training_response_token_counts(splits.train)
        picks = sample_picks(len(examples), args.samples)
        table = [
            {"context": list(examples[i].context), "reference": examples[i].response} for i in picks
        ]
        for method in methods:
            logger.info("%s, %d turn(s), %d test pairs", method, turns, len(examples))
            row = evaluate_lexical(
                make_retriever(method, responses), examples, turns, counts, sources
            )
            for sample, i in zip(table, picks, strict=True):
                sample[method] = row["replies"][i]
            del row["replies"]
            rows.append(row)
        samples[str(turns)] = table
    return {"meta": meta, "rows": rows, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    from training.methods.g2r.job import DEFAULT_BLOCKLIST

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default="tfidf,bm25", help="comma-separated: tfidf,bm25")
    parser.add_argument("--turns", default="1,3", help="comma-separated context lengths in turns")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--preset", default="small", help="whose response-set filter to apply")
    parser.add_argument("--blocklist", type=Path, default=DEFAULT_BLOCKLIST)
    parser.add_argument("--max-examples", type=int, default=0, help="0 = the whole test split")
    parser.add_argument("--samples", type=int, default=20, help="sample replies per turns value")
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    results = run(args)
    text = to_markdown(results)
    write_report(args.out, results, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

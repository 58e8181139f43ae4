"""G2R retrievers against their generators on DailyDialog test: quality, latency, sample replies.

For each retriever bundle: Hits@1/K and Hits@5/K (K = 100: the gold and 99 random test responses),
Dist-2/3, length and max-ratio of the top-1 retrieved reply for every test context, the share of
test contexts whose HNSW top-1 equals exact search's, and the latency per query (batch 1, CPU:
tokenize + encode + search; mean and p50 over ``--queries`` after 3 warm-ups, as in G2R sec. 4.4)
with the bundle's HNSW index and with exact ``IndexFlatIP`` search. For each generator bundle, in
the same run and with the same thread count: greedy latency per query on the same contexts, the
same metrics of its greedy replies on the test split, and its replies to the 20 sample contexts
(picked like ``training.eval.generation``). Ratio tables put every latency against each generator's.
Each retriever's row also says how much of what it serves is teacher-written text (G2R's R^G)
against the teacher's share of its response set (:func:`served_teacher_share`). ``--lexical
tfidf,bm25`` adds TF-IDF and BM25 rows (:mod:`benchmarks.lexical`) over the first retriever's
response set, evaluated on the same test pairs and candidates.

    OMP_NUM_THREADS=1 python -m benchmarks.retrieval --retriever g2r-dm=artifacts/retriever-g2r-dm \\
        --generator nd-ft=artifacts/generator-nd-ft --lexical tfidf,bm25 --out reports/g2r
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks import write_report
from benchmarks.latency import (
    latency_summary,
    machine_description,
    set_threads,
    time_per_query,
    top1_agreement,
)
from benchmarks.retrieval_markdown import to_markdown
from models.generator import GenerativeResponder
from models.metrics import response_metrics
from models.retriever import RetrievalResponder
from training.config import DAILYDIALOG
from training.core.data import DialogueExample, load_splits, training_response_token_counts
from training.eval.generation import STANDARD_DECODINGS, decode_all
from training.methods.g2r.augment import read_shards
from training.methods.g2r.losses import HitsEvaluator

logger = logging.getLogger("benchmarks.retrieval")

DEFAULT_DATA = DAILYDIALOG
QUALITY_METRICS = ("dist-2", "dist-3", "avg-len", "max-ratio")
SPEEDUP_TARGET = 20.0  # retrieval should take at most 1/20 of the generator's greedy latency


def parse_labelled(specs: Sequence[str]) -> dict[str, Path]:
    """``["label=dir", ...]`` -> ``{label: Path(dir)}``, in order; labels must be unique."""
    out: dict[str, Path] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"expected LABEL=DIR, got {spec!r}")
        if label in out:
            raise ValueError(f"label {label!r} given twice")
        out[label] = Path(path)
    return out


def sample_picks(n_examples: int, n_samples: int = 20, seed: int = 0) -> list[int]:
    """The sample contexts of ``training.eval.generation.evaluate_generator`` (same seed, same draw)."""
    picks = np.random.default_rng(seed).choice(
        n_examples, size=min(n_samples, n_examples), replace=False
    )
    return [int(i) for i in picks.tolist()]


def teacher_shard_stats(shards: Path, score: str = "ll") -> dict[str, float]:
    """How the teacher's scores (eq. 3 by default) rank a context's gold against its own replies.

    Per augmented context: whether the gold is the teacher's best-scored positive, and the
    teacher probability P_G of the gold(s) in eq. 4 (softmax over the context's positives, T = 1).
    """
    _, records = read_shards(shards)
    assert records, f"no augmentation records in {shards}"
    gold_top, gold_prob, gold_words, teacher_words = [], [], [], []
    for rec in records.values():
        scores = np.array([x[score] for x in [*rec["gold"], *rec["generated"]]], np.float64)
        p = np.exp(scores - scores.max())
        p /= p.sum()
        n_gold = len(rec["gold"])
        gold_top.append(float(np.argmax(scores) < n_gold))
        gold_prob.append(float(p[:n_gold].sum()))
        gold_words += [len(x["text"].split()) for x in rec["gold"]]
        teacher_words += [len(x["text"].split()) for x in rec["generated"]]
    return {
        "contexts": float(len(records)),
        "gold_is_teacher_top": float(np.mean(gold_top)),
        "teacher_prob_on_gold": float(np.mean(gold_prob)),
        "gold_words": float(np.mean(gold_words)),
        "teacher_reply_words": float(np.mean(teacher_words)),
    }


def exact_index(responder: RetrievalResponder) -> Any:
    """An ``IndexFlatIP`` over the bundle's stored response embeddings (same ids)."""
    vectors = responder.index.vectors()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat


def served_teacher_share(sources: Sequence[str], top1: Sequence[int]) -> dict[str, float]:
    """The teacher's share of the response set against its share of the top-1 replies served,
    per context and over the distinct replies served (``sources[i]``: "corpus" or "teacher")."""
    n = len(sources)
    teacher = sum(s == "teacher" for s in sources)
    picks = [int(i) for i in top1]
    distinct = set(picks)
    served_teacher = sum(sources[i] == "teacher" for i in picks)
    distinct_teacher = sum(sources[i] == "teacher" for i in distinct)
    return {
        "response_set": float(n),
        "response_set_teacher": float(teacher),
        "response_set_teacher_share": teacher / n if n else 0.0,
        "contexts": float(len(picks)),
        "served_teacher_share": served_teacher / len(picks) if picks else 0.0,
        "distinct_served": float(len(distinct)),
        "distinct_served_teacher": float(distinct_teacher),
        "distinct_served_teacher_share": distinct_teacher / len(distinct) if distinct else 0.0,
    }


def retriever_top1(
    responder: RetrievalResponder, contexts: Sequence[Sequence[str]], *, batch_size: int = 256
) -> np.ndarray:
    """The bundle's HNSW top-1 response id for each context (as the service answers)."""
    ids = []
    for start in range(0, len(contexts), batch_size):
        emb = responder.embed(responder.encode_contexts(contexts[start : start + batch_size]))
        ids.append(responder.index.search(emb, 1)[1][:, 0])
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)


def served_share(
    responder: RetrievalResponder | Path, contexts: Sequence[Sequence[str]]
) -> dict[str, float]:
    """For a retriever bundle (or its loaded responder) and contexts (e.g. the test split's, or a
    sample of 1,000): the teacher's share of its top-1 replies against its share of the response
    set (:func:`served_teacher_share`). Bundles without sources count as all corpus."""
    if not isinstance(responder, RetrievalResponder):
        responder = RetrievalResponder.load(responder, device="cpu")
    return served_teacher_share(responder.sources, retriever_top1(responder, contexts).tolist())


def evaluate_retriever(
    responder: RetrievalResponder,
    examples: Sequence[DialogueExample],
    train_counts: Mapping[str, int],
    latency_contexts: Sequence[Sequence[str]],
    *,
    warmup: int,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Hits@k/K, top-1 reply metrics (HNSW), HNSW-vs-exact agreement and batch-1 latencies."""
    started = time.perf_counter()
    hits = HitsEvaluator(examples, responder.tokenizer, responder.inputs, k=100, seed=0)(
        responder.model
    )
    flat = exact_index(responder)
    contexts = [e.context for e in examples]
    hnsw_ids, exact_ids = [], []
    for start in range(0, len(contexts), batch_size):
        emb = responder.embed(responder.encode_contexts(contexts[start : start + batch_size]))
        hnsw_ids.append(responder.index.search(emb, 1)[1])
        exact_ids.append(flat.search(emb, 1)[1])
    hnsw, exact = np.concatenate(hnsw_ids), np.concatenate(exact_ids)
    replies = [responder.responses[i] for i in hnsw[:, 0].tolist()]
    metrics = response_metrics(replies, [e.response for e in examples], train_counts)
    quality_s = time.perf_counter() - started

    def encode(context: Sequence[str]) -> np.ndarray:
        return responder.embed(responder.encode_contexts([context]))

    def with_hnsw(context: Sequence[str]) -> Any:
        return responder.index.search(encode(context), 1)

    def with_exact(context: Sequence[str]) -> Any:
        return flat.search(encode(context), 1)

    latency = {
        "encode_only": latency_summary(time_per_query(encode, latency_contexts, warmup=warmup)),
        "hnsw": latency_summary(time_per_query(with_hnsw, latency_contexts, warmup=warmup)),
        "exact": latency_summary(time_per_query(with_exact, latency_contexts, warmup=warmup)),
    }
    manifest = responder.manifest
    return {
        "model": responder.bundle_id,
        "method": manifest.training.get("method") if manifest else None,
        "n_responses": len(responder.responses),
        "responses_teacher": responder.sources.count("teacher"),
        "ef_search": responder.index.config.ef_search,
        "hits@1": hits["hits@1"],
        "hits@5": hits["hits@5"],
        "hits_k": hits["hits_k"],
        "n_examples": len(examples),
        **{m: metrics[m] for m in QUALITY_METRICS},
        "hnsw_top1_agreement_test": top1_agreement(hnsw, exact),
        "served": served_teacher_share(responder.sources, hnsw[:, 0].tolist()),
        "latency": latency,
        "replies": replies,
        "training": manifest.training if manifest else {},
        "bundle_metrics": manifest.metrics if manifest else {},
        "quality_wall_s": quality_s,
    }


def evaluate_lexical_rows(
    methods: Sequence[str],
    responses: Sequence[str],
    sources: Sequence[str],
    examples: Sequence[DialogueExample],
    turns: int,
    train_counts: Mapping[str, int],
    latency_contexts: Sequence[Sequence[str]],
    *,
    warmup: int,
) -> dict[str, dict[str, Any]]:
    """TF-IDF / BM25 over ``responses``: Hits@k/K (HitsEvaluator's candidates), top-1 reply
    metrics, served teacher share and batch-1 latency (vectorise + score every response)."""
    from benchmarks.lexical import context_text, evaluate_lexical, make_retriever

    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        logger.info("lexical %s over %d responses", method, len(responses))
        retriever = make_retriever(method, responses)
        row = evaluate_lexical(retriever, examples, turns, train_counts, sources)

        def top1(context: Sequence[str], r: Any = retriever) -> Any:
            return r.top1([context_text(context, turns)])

        row["latency"] = {
            "exact": latency_summary(time_per_query(top1, latency_contexts, warmup=warmup))
        }
        out[method] = row
    return out


def evaluate_generator_greedy(
    responder: GenerativeResponder,
    examples: Sequence[DialogueExample],
    train_counts: Mapping[str, int],
    latency_contexts: Sequence[Sequence[str]],
    *,
    warmup: int,
    full_metrics: bool,
    picks: Sequence[int],
) -> dict[str, Any]:
    """Greedy latency per query (batch 1) and, with ``full_metrics``, greedy reply metrics."""
    base = STANDARD_DECODINGS["greedy"]
    decoding = responder.decoding.with_overrides(  # as training.eval.generation does
        strategy=base.strategy,
        beam_size=base.beam_size,
        length_penalty=base.length_penalty,
        num_return_sequences=1,
    )

    def reply(context: Sequence[str]) -> list[str]:
        return responder.respond([context], decoding)

    out: dict[str, Any] = {
        "model": responder.bundle_id,
        "latency": {
            "greedy": latency_summary(time_per_query(reply, latency_contexts, warmup=warmup))
        },
    }
    if full_metrics:
        hyps = decode_all(responder, examples, decoding, desc="greedy")
        metrics = response_metrics(hyps, [e.response for e in examples], train_counts)
        out.update({m: metrics[m] for m in QUALITY_METRICS})
        out["samples"] = [hyps[i] for i in picks]
    else:
        out["samples"] = responder.respond([examples[i].context for i in picks], decoding)
    return out


# --- report ----------------------------------------------------------------------------------------


def targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The G2R report's targets, each with its measured numbers and met / not met."""
    rets, gens = results["retrievers"], results["generators"]
    out: list[dict[str, Any]] = []
    if "g2r-dm" in rets and "biencoder" in rets:
        dm, be = rets["g2r-dm"]["hits@1"], rets["biencoder"]["hits@1"]
        out.append(
            {
                "target": "G2R-DM Hits@1/K above the plain bi-encoder (test, K = 100)",
                "measured": f"g2r-dm {dm:.4f} vs biencoder {be:.4f}",
                "met": dm > be,
            }
        )
    worst = min((r["hnsw_top1_agreement_test"], label) for label, r in rets.items())
    out.append(
        {
            "target": "HNSW top-1 = exact top-1 for >= 0.98 of test contexts (efSearch 256)",
            "measured": f"lowest {worst[0]:.4f} ({worst[1]}); "
            + ", ".join(f"{k} {r['hnsw_top1_agreement_test']:.4f}" for k, r in rets.items()),
            "met": worst[0] >= 0.98,
        }
    )
    for g_label, g in gens.items():
        g_ms = g["latency"]["greedy"]["mean_ms"]
        slowest = max((r["latency"]["hnsw"]["mean_ms"], label) for label, r in rets.items())
        out.append(
            {
                "target": f"retrieval (HNSW, encode + search) <= 1/20 of {g_label} greedy, mean",
                "measured": f"slowest retriever {slowest[1]} {slowest[0]:.2f} ms vs "
                f"{g_ms:.2f} ms = 1/{g_ms / slowest[0]:.1f}",
                "met": g_ms / slowest[0] >= SPEEDUP_TARGET,
            }
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    set_threads(args.threads)
    retrievers = parse_labelled(args.retriever)
    generators = parse_labelled(args.generator)
    meta: dict[str, Any] = {
        "command": "python -m benchmarks.retrieval " + " ".join(sys.argv[1:]),
        "machine": machine_description(args.threads),
        "threads": args.threads,
        "queries": args.queries,
        "warmup": args.warmup,
        "teacher": str(args.teacher) if args.teacher else None,
        "shards": str(args.shards) if args.shards else None,
        "data": str(args.data),
        "split": "test",
    }
    lexical_methods: list[str] = []
    if args.lexical:
        from benchmarks.lexical import parse_methods  # scikit-learn only when asked for

        lexical_methods = parse_methods(args.lexical)
    loaded = {k: RetrievalResponder.load(p, device="cpu") for k, p in retrievers.items()}
    turns = max(r.inputs.max_context_turns for r in loaded.values())
    splits = load_splits(args.data, max_context_turns=turns)
    examples = splits.test[: args.max_examples] if args.max_examples else splits.test
    counts = training_response_token_counts(splits.train)
    latency_contexts = [e.context for e in examples[: args.queries]]
    picks = sample_picks(len(examples), args.samples)
    results: dict[str, Any] = {"meta": meta, "retrievers": {}, "generators": {}}
    if args.shards:
        results["teacher_shards"] = teacher_shard_stats(args.shards)
    for label, responder in loaded.items():
        logger.info("retriever %s (%s)", label, responder.bundle_id)
        results["retrievers"][label] = evaluate_retriever(
            responder, examples, counts, latency_contexts, warmup=args.warmup
        )
    if lexical_methods:
        first = next(iter(loaded))
        meta["lexical_responses"] = first
        results["lexical"] = evaluate_lexical_rows(
            lexical_methods,
            loaded[first].responses,
            loaded[first].sources,
            examples,
            turns,
            counts,
            latency_contexts,
            warmup=args.warmup,
        )
    for label, path in generators.items():
        logger.info("generator %s (%s)", label, path)
        results["generators"][label] = evaluate_generator_greedy(
            GenerativeResponder.load(path, device="cpu"),
            examples,
            counts,
            latency_contexts,
            warmup=args.warmup,
            full_metrics=not args.no_generator_metrics,
            picks=picks,
        )
    samples = []
    for j, i in enumerate(picks):
        sample = {"context": list(examples[i].context), "reference": examples[i].response}
        sample.update({k: r["replies"][i] for k, r in results["retrievers"].items()})
        sample.update({k: r["replies"][i] for k, r in results.get("lexical", {}).items()})
        sample.update({k: g["samples"][j] for k, g in results["generators"].items()})
        samples.append(sample)
    results["samples"] = samples
    for r in [*results["retrievers"].values(), *results.get("lexical", {}).values()]:
        del r["replies"]
    for g in results["generators"].values():
        del g["samples"]
    results["targets"] = targets(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--retriever", action="append", required=True, metavar="LABEL=DIR")
    parser.add_argument("--generator", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--teacher", type=Path, help="the G2R teacher (recorded in the report)")
    parser.add_argument("--shards", type=Path, help="G2R augmentation shards to summarise")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--max-examples", type=int, default=0, help="0 = the whole test split")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per system")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--lexical",
        default="",
        metavar="METHODS",
        help="comma-separated lexical baselines (tfidf,bm25) over the first retriever's "
        "response set, on the same test pairs (benchmarks/lexical.py)",
    )
    parser.add_argument(
        "--no-generator-metrics", action="store_true", help="skip greedy decoding of the split"
    )
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

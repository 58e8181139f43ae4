"""The quality report of a ``python -m training build``: every bundle in one folder, measured on the
official test split, against the papers' headline numbers.

    OMP_NUM_THREADS=1 python -m benchmarks.quality_report --artifacts artifacts \\
        --out reports/quality_small [--preset small] [--max-examples N]

What it measures (nothing here is re-implemented; each part calls the function named):

1. Generators (every ``generator`` bundle in the folder): perplexity and the greedy reply metrics
   on the test split (:func:`training.eval.generation.evaluate_generator`, greedy only); ratios against
   ``generator-standard``; the served generator and the record of why (``serving.json``).
2. Retrievers (every ``retriever`` bundle) and the TF-IDF / BM25 baselines: Hits@1/K and
   Hits@5/K with the standard protocol (K = 100: the gold and 99 random test responses, seed 0;
   :func:`benchmarks.retrieval.evaluate_retriever` through ``HitsEvaluator``, and
   :func:`benchmarks.lexical.evaluate_lexical`), each with its standard error sqrt(p(1-p)/n);
   the teacher's share of the top-1 replies against its share of the response set on 1,000
   seeded test contexts (:func:`benchmarks.retrieval.served_share`).
3. Latency at batch 1 (the G2R paper's protocol: 3 warm-ups, then the mean of 200 requests; p50
   too): the served retriever's top-1 (tokenize + encode + HNSW search) against greedy generation
   of the served generator, in-process, on the same test contexts (:mod:`benchmarks.latency`).
4. One table of the papers' headline numbers against ours (the constants below).
5. 20 sample replies per system on the same contexts: 14 seeded test contexts (their last 3
   turns) and the 6 probes below.
6. The machine, torch's thread count (as OMP_NUM_THREADS sets it) and the load average before and
   after, so a reader can judge the timings.

Output: ``<out>.md`` (printed too) and ``<out>.json`` with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.latency import latency_summary, machine_description, time_per_query
from benchmarks.quality_markdown import to_markdown
from benchmarks.retrieval import DEFAULT_DATA, evaluate_retriever, sample_picks, served_share
from models.bundle import find_bundles, read_manifest, read_serving
from models.decoding import DecodingConfig
from models.generator import GenerativeResponder
from models.retriever import RetrievalResponder
from training.config import PRESETS, Preset
from training.core.data import (
    DialogueExample,
    DialogueSplits,
    load_splits,
    training_response_token_counts,
)
from training.eval.generation import STANDARD_DECODINGS, evaluate_generator
from training.methods.g2r.losses import hits_at_k, hits_candidates

logger = logging.getLogger("benchmarks.quality_report")

STANDARD = "generator-standard"
ND = "generator-nd"
SERVED_SHARE_CONTEXTS = 1000  # test contexts for the teacher's served share
LATENCY_QUERIES = 200  # G2R sec. 4.4: the mean of 200 requests ...
LATENCY_WARMUP = 3  # ... after 3 warm-ups
SAMPLE_TEST_CONTEXTS = 14  # seeded test contexts among the 20 sample replies
SAMPLE_TURNS = 3  # the sample test contexts keep their last 3 turns
SEED = 0  # sample contexts, served-share contexts, latency contexts (Hits@K uses seed 0 too)
LEXICAL_METHODS = ("tfidf", "bm25")

# Fixed probes (oldest turn first), the last 6 of the 20 sample contexts.
PROBES: tuple[tuple[str, ...], ...] = (
    ("i lost my wallet", "what should i do now ?"),
    ("we won the lottery", "what should i do now ?"),
    ("my dog died yesterday .",),
    ("how much is this shirt ?",),
    ("would you like to go to the cinema tonight ?", "sure . what's on ?"),
    ("i'm sorry i'm late .", "what happened ?", "my car broke down on the highway ."),
)

# --- the papers' headline numbers (constants; see docs/papers.md; the texts in ../shared/papers/) ------------------

# ND paper (Li et al., NAACL 2022), Table 3: DailyDialog, greedy decoding.
PAPER_ND_STANDARD_DIST2 = 0.0313
PAPER_ND_ND_DIST2 = 0.0678
PAPER_ND_STANDARD_BLEU4 = 0.395
PAPER_ND_ND_BLEU4 = 0.388
# G2R paper (Kim et al., Findings of EMNLP 2021), Table 7 (= Table 3): test Hits@1/K on BST+.
PAPER_G2R_BIENCODER_HITS1 = 0.7537
PAPER_G2R_D_HITS1 = 0.8052
# G2R paper, Table 1: G2R-DM 25.1 ms vs Blender 90M 499.7 ms per response on an A100 = 19.91x.
PAPER_G2R_DM_MS = 25.1
PAPER_BLENDER_90M_MS = 499.7
PAPER_G2R_SPEEDUP = 19.9  # Table 1's rounded "19.91x" (docs/papers.md: 19.9x)
# Appendix C, Table 6: the same two models on CPU only (a 40-core Xeon Silver 4210)
PAPER_G2R_DM_CPU_MS = 163.9
PAPER_BLENDER_90M_CPU_MS = 1908.0


def greedy(responder: GenerativeResponder) -> DecodingConfig:
    """Greedy decoding with the bundle's length and n-gram rules, as ``evaluate_generator`` does."""
    base = STANDARD_DECODINGS["greedy"]
    return responder.decoding.with_overrides(
        strategy=base.strategy,
        beam_size=base.beam_size,
        length_penalty=base.length_penalty,
        num_return_sequences=1,
    )


def standard_error(p: float, n: int) -> float:
    """sqrt(p (1 - p) / n): the standard error of a proportion over n independent trials."""
    return math.sqrt(p * (1.0 - p) / n) if n else float("nan")


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or not base:
        return None
    return value / base


def seeded_indices(n: int, k: int, seed: int = SEED) -> list[int]:
    """``min(k, n)`` distinct indices in [0, n), drawn with ``seed``, sorted."""
    picks = np.random.default_rng(seed).choice(n, size=min(k, n), replace=False)
    return sorted(int(i) for i in picks.tolist())


class SplitCache:
    """``load_splits`` once per context length; the training split capped as the preset trains."""

    def __init__(self, data: Path, max_train_examples: int) -> None:
        self.data, self.max_train = data, max_train_examples
        self._splits: dict[int, DialogueSplits] = {}

    def get(self, turns: int) -> DialogueSplits:
        if turns not in self._splits:
            logger.info("loading %s with %d context turn(s)", self.data, turns)
            splits = load_splits(self.data, max_context_turns=turns)
            if self.max_train:
                splits.train = splits.train[: self.max_train]
            self._splits[turns] = splits
        return self._splits[turns]


def discover(artifacts: Path) -> dict[str, dict[str, Path]]:
    """Bundle folders by kind; generators with ``generator-standard`` first, then by name."""
    out: dict[str, dict[str, Path]] = {"generator": {}, "retriever": {}, "other": {}}
    for path in find_bundles(artifacts):
        kind = read_manifest(path).kind
        out[kind if kind in ("generator", "retriever") else "other"][path.name] = path
    gens = out["generator"]
    out["generator"] = {k: gens[k] for k in sorted(gens, key=lambda k: (k != STANDARD, k))}
    return out


def resolve_preset(name: str | None, bundles: Mapping[str, Path]) -> tuple[Preset | None, str]:
    """The preset asked for, else the one the bundles' manifests name (None if none is known)."""
    built = sorted(
        {str(read_manifest(p).training.get("preset")) for p in bundles.values()} - {"None"}
    )
    chosen = name or (built[0] if len(built) == 1 else None)
    note = f"bundles built with preset(s) {', '.join(built) or 'unrecorded'}"
    if name and built and built != [name]:
        note += f"; --preset {name} asked for: the caps below are {name}'s"
    return (PRESETS.get(chosen) if chosen else None), note


# --- measurements ---------------------------------------------------------------------------------


def measure_generators(
    paths: Mapping[str, Path], examples: Sequence[DialogueExample], counts: Mapping[str, int]
) -> tuple[dict[str, Any], dict[str, GenerativeResponder]]:
    """``evaluate_generator`` (greedy only) on ``examples`` for each generator bundle."""
    results: dict[str, Any] = {}
    loaded: dict[str, GenerativeResponder] = {}
    for label, path in paths.items():
        started = time.perf_counter()
        responder = GenerativeResponder.load(path, device="cpu")
        r = evaluate_generator(
            responder,
            examples,
            counts,
            decodings={"greedy": STANDARD_DECODINGS["greedy"]},
            n_samples=0,
        )
        manifest = responder.manifest
        results[label] = {
            "model": r["model"],
            "n_examples": r["n_examples"],
            "perplexity": r["perplexity"],
            "greedy": r["decodings"]["greedy"],
            "context_turns": responder.inputs.max_context_turns,
            # the bundle's own decoding rules that greedy keeps (anti-LM, n-gram blocking)
            "anti_lm": [responder.decoding.anti_lm, responder.decoding.anti_lm_steps],
            "training": {
                k: manifest.training.get(k)
                for k in ("method", "preset", "steps", "best_step", "train_pairs", "wall_time_s")
                if manifest and k in manifest.training
            },
            "eval_wall_s": time.perf_counter() - started,
        }
        loaded[label] = responder
        logger.info("%s: perplexity %.2f", label, r["perplexity"])
    return results, loaded


def generator_ratios(gens: Mapping[str, Any], base_label: str) -> dict[str, Any]:
    """Dist-2, BLEU-4 and LF of every other generator against ``base_label`` (same run)."""
    base = gens[base_label]["greedy"]
    out = {}
    for label, g in gens.items():
        if label == base_label:
            continue
        m = g["greedy"]
        out[label] = {
            "dist-2_ratio": ratio(m["dist-2"], base["dist-2"]),
            "bleu-4_ratio": ratio(m["bleu-4"], base["bleu-4"]),
            "lf": m["lf"],
            "lf_ratio": ratio(m["lf"], base["lf"]),
            "max-ratio": m["max-ratio"],
        }
    return out


def measure_retrievers(
    paths: Mapping[str, Path],
    examples: Sequence[DialogueExample],
    counts: Mapping[str, int],
    latency_contexts: Sequence[Sequence[str]],
    share_idx: Sequence[int],
) -> tuple[dict[str, Any], dict[str, RetrievalResponder]]:
    """``evaluate_retriever`` per bundle, standard errors, served share on ``share_idx``."""
    results: dict[str, Any] = {}
    loaded: dict[str, RetrievalResponder] = {}
    share_contexts = [examples[i].context for i in share_idx]
    for label, path in paths.items():
        responder = RetrievalResponder.load(path, device="cpu")
        logger.info("retriever %s (%s)", label, responder.bundle_id)
        r = evaluate_retriever(responder, examples, counts, latency_contexts, warmup=LATENCY_WARMUP)
        r.pop("replies")
        r.pop("bundle_metrics", None)
        n = r["n_examples"]
        r["hits@1_se"] = standard_error(r["hits@1"], n)
        r["hits@5_se"] = standard_error(r["hits@5"], n)
        r["context_turns"] = responder.inputs.max_context_turns
        # What the bundle serves with: its TF-IDF re-ranking on the same test candidates.
        r["rerank_weight"] = responder.reranker.weight if responder.reranker else 0.0
        r["served_hits@1"], r["served_hits@5"] = r["hits@1"], r["hits@5"]
        if responder.reranker is not None:
            pool = list(dict.fromkeys(e.response for e in examples))
            cand = hits_candidates([e.response for e in examples], pool, int(r["hits_k"]), 0)
            scores = responder.candidate_scores([e.context for e in examples], pool, cand)
            hits = hits_at_k(torch.from_numpy(scores))
            r["served_hits@1"], r["served_hits@5"] = hits["hits@1"], hits["hits@5"]
        r["served_hits@1_se"] = standard_error(r["served_hits@1"], n)
        if responder.reranker is not None:  # the whole served path: encode, search, re-rank

            def served_top1(context: Sequence[str], rr: RetrievalResponder = responder) -> Any:
                return rr.respond([context], top_k=1)

            r["latency"]["served"] = latency_summary(
                time_per_query(served_top1, latency_contexts, warmup=LATENCY_WARMUP)
            )
        r["served_test"] = r.pop("served")  # over every test context
        r["served"] = served_share(responder, share_contexts)
        results[label] = r
        loaded[label] = responder
    return results, loaded


def measure_lexical(
    responses: Sequence[str],
    sources: Sequence[str],
    examples: Sequence[DialogueExample],
    turns: int,
    counts: Mapping[str, int],
    latency_contexts: Sequence[Sequence[str]],
    share_idx: Sequence[int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """TF-IDF and BM25 over ``responses``: ``evaluate_lexical`` (Hits@k/K with HitsEvaluator's
    candidates), standard errors, served share on ``share_idx`` and batch-1 latency."""
    from benchmarks.lexical import context_text, evaluate_lexical, make_retriever
    from benchmarks.retrieval import served_teacher_share

    results: dict[str, Any] = {}
    fitted: dict[str, Any] = {}
    for method in LEXICAL_METHODS:
        logger.info("lexical %s over %d responses", method, len(responses))
        retriever = make_retriever(method, responses)
        row = evaluate_lexical(retriever, examples, turns, counts)
        row.pop("replies")
        n = row["n_examples"]
        row["hits@1_se"] = standard_error(row["hits@1"], n)
        row["hits@5_se"] = standard_error(row["hits@5"], n)
        top1 = retriever.top1([context_text(examples[i].context, turns) for i in share_idx])
        row["served"] = served_teacher_share(sources, top1.tolist())

        def search(context: Sequence[str], r: Any = retriever) -> Any:
            return r.top1([context_text(context, turns)])

        row["latency"] = latency_summary(
            time_per_query(search, latency_contexts, warmup=LATENCY_WARMUP)
        )
        results[method] = row
        fitted[method] = retriever
    return results, fitted


def measure_generation_latency(
    responder: GenerativeResponder, contexts: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Greedy generation at batch 1 (``responder.respond``, KV cache), G2R's protocol."""
    decoding = greedy(responder)

    def reply(context: Sequence[str]) -> list[str]:
        return responder.respond([context], decoding)

    return latency_summary(time_per_query(reply, contexts, warmup=LATENCY_WARMUP))


def sample_replies(
    contexts: Sequence[Sequence[str]],
    generators: Mapping[str, GenerativeResponder],
    retrievers: Mapping[str, RetrievalResponder],
    lexical: Any | None,
    lexical_turns: int,
) -> dict[str, list[str]]:
    """Every generator's greedy reply, every retriever's top-1 and TF-IDF's top-1 per context."""
    out: dict[str, list[str]] = {}
    for label, g in generators.items():
        out[label] = g.respond(contexts, greedy(g))
    for label, r in retrievers.items():
        out[label] = [cands[0][0] if cands else "" for cands in r.respond(contexts, top_k=1)]
    if lexical is not None:
        from benchmarks.lexical import context_text

        ids = lexical.top1([context_text(c, lexical_turns) for c in contexts])
        out["tfidf"] = [lexical.responses[i] for i in ids.tolist()]
    return out


def pick_by_method(rets: Mapping[str, Any], methods: Sequence[str]) -> str | None:
    """The first retriever (by name) whose training method is one of ``methods``, in that order."""
    for method in methods:
        for label, r in rets.items():
            if r.get("method") == method:
                return label
    return None


def paper_table(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The papers' headline numbers against ours."""
    gens, rets = results["generators"], results["retrievers"]
    turns = results["meta"]["context_turns"]
    corpus = Path(results["meta"]["data"]).name  # "dailydialog" for the paper's corpus
    rows: list[dict[str, Any]] = []
    std = gens.get(STANDARD, {}).get("greedy")
    nd = gens.get(ND, {}).get("greedy")
    nd_note = (
        "ND paper Table 3 (DailyDialog, greedy; 6+6-layer d=512 Transformers trained to "
        f"convergence); ours: preset {results['meta']['preset']}, {corpus} test split "
        f"({gens[next(iter(gens))]['n_examples'] if gens else 0} pairs), {turns['generators']} "
        "context turn(s)"
    )
    anti = sorted({tuple(g["anti_lm"]) for g in gens.values() if g.get("anti_lm", [0])[0]})
    if anti:  # not the paper's protocol: say so where the comparison is made
        nd_note += (
            "; decoded with the bundles' anti-LM penalty (lambda / tokens "
            + ", ".join(f"{w:g} / {n}" for w, n in anti)
            + "), not plain greedy"
        )

    def row(name: str, paper: float, ours: float | None, note: str) -> None:
        rows.append(
            {
                "quantity": name,
                "paper": paper,
                "ours": ours,
                "ratio": ratio(ours, paper),
                "note": note,
            }
        )

    row(
        "ND Dist-2 ratio ND / Standard",
        PAPER_ND_ND_DIST2 / PAPER_ND_STANDARD_DIST2,
        ratio(nd["dist-2"], std["dist-2"]) if nd and std else None,
        nd_note,
    )
    row(
        "ND BLEU-4 ratio ND / Standard",
        PAPER_ND_ND_BLEU4 / PAPER_ND_STANDARD_BLEU4,
        ratio(nd["bleu-4"], std["bleu-4"]) if nd and std else None,
        nd_note,
    )
    row("Standard Dist-2", PAPER_ND_STANDARD_DIST2, std["dist-2"] if std else None, nd_note)
    row("ND Dist-2", PAPER_ND_ND_DIST2, nd["dist-2"] if nd else None, nd_note)
    k = next((r["hits_k"] for r in rets.values()), None)
    g2r_note = (
        "G2R paper Table 7: BST+ test, 256M-parameter Reddit-pretrained bi-encoder, K of Roller "
        f"et al. (not stated in the paper); ours: {corpus} test, K = "
        f"{k:.0f}"
        if k is not None
        else "G2R paper Table 7: BST+ test; ours: no retriever bundle"
    )
    be = pick_by_method(rets, ["biencoder"])
    row(
        "G2R Hits@1/K bi-encoder",
        PAPER_G2R_BIENCODER_HITS1,
        rets[be]["hits@1"] if be else None,
        f"{g2r_note}; measured: {be}" if be else f"{g2r_note}; no bi-encoder bundle in the folder",
    )
    g2r = pick_by_method(rets, ["g2r-d", "g2r-dm"])
    g2r_method = rets[g2r]["method"] if g2r else None
    row(
        "G2R Hits@1/K G2R-D",
        PAPER_G2R_D_HITS1,
        rets[g2r]["hits@1"] if g2r else None,
        f"{g2r_note}; measured: {g2r} ({g2r_method}"
        + (", the paper reports no G2R-DM Hits@1/K)" if g2r_method == "g2r-dm" else ")")
        if g2r
        else f"{g2r_note}; no G2R bundle in the folder",
    )
    lat = results["latency"]
    row(
        "retrieval vs generation speed-up (mean latency)",
        PAPER_G2R_SPEEDUP,
        lat.get("speedup_mean"),
        f"G2R paper Table 1: G2R-DM {PAPER_G2R_DM_MS} ms vs Blender 90M {PAPER_BLENDER_90M_MS} "
        "ms on an A100; ours: "
        + (
            f"{lat['retriever']} vs {lat['generator']} greedy, batch 1, CPU, "
            f"{results['meta']['machine']['threads']} torch thread(s), "
            f"models far smaller than the paper's; by p50 {lat['speedup_p50']:.1f}x"
            if lat.get("speedup_mean") is not None
            else "no served retriever and generator pair to time"
        ),
    )
    row(
        "retrieval vs generation speed-up on CPU (mean latency)",
        round(PAPER_BLENDER_90M_CPU_MS / PAPER_G2R_DM_CPU_MS, 1),
        lat.get("speedup_mean"),
        f"G2R paper Table 6 (CPU only, 40-core Xeon Silver 4210): G2R-DM {PAPER_G2R_DM_CPU_MS} "
        f"ms vs Blender 90M {PAPER_BLENDER_90M_CPU_MS} ms; ours: the row above",
    )
    return rows


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    import faiss
    import torch

    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    bundles = discover(args.artifacts)
    gen_paths, ret_paths = bundles["generator"], bundles["retriever"]
    if not gen_paths and not ret_paths:
        raise SystemExit(f"no generator or retriever bundles in {args.artifacts}")
    preset, preset_note = resolve_preset(args.preset, {**gen_paths, **ret_paths})
    threads = torch.get_num_threads()
    meta: dict[str, Any] = {
        "command": command,
        "artifacts": str(args.artifacts),
        "data": str(args.data),
        "split": "test",
        "max_examples": args.max_examples,
        "preset": preset.name if preset else args.preset,
        "preset_note": preset_note,
        "machine": machine_description(threads),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "faiss_threads": faiss.omp_get_max_threads(),
        "load_average_before": load_before,
        "other_bundles": sorted(bundles["other"]),
        # what the markdown states about the protocol
        "protocol": {
            "served_share_contexts": SERVED_SHARE_CONTEXTS,
            "sample_test_contexts": SAMPLE_TEST_CONTEXTS,
            "sample_turns": SAMPLE_TURNS,
            "probes": len(PROBES),
            "paper_g2r_speedup": PAPER_G2R_SPEEDUP,
        },
    }
    serving = read_serving(args.artifacts)
    meta["serving_file"] = serving is not None

    def turns_of(paths: Mapping[str, Path]) -> int:
        return max(
            (
                int(read_manifest(p).model_config["inputs"]["max_context_turns"])
                for p in paths.values()
            ),
            default=1,
        )

    gen_turns, ret_turns = turns_of(gen_paths), turns_of(ret_paths)
    if not ret_paths and preset and preset.retriever:
        ret_turns = preset.retriever.inputs.max_context_turns
    wide_turns = max(SAMPLE_TURNS, gen_turns, ret_turns)
    meta["context_turns"] = {
        "generators": gen_turns,
        "retrievers": ret_turns,
        "samples": wide_turns,
    }
    cache = SplitCache(args.data, preset.max_train_examples if preset else 0)

    def test_of(turns: int) -> list[DialogueExample]:
        test = cache.get(turns).test
        return test[: args.max_examples] if args.max_examples else test

    # 1. generators
    gen_examples = test_of(gen_turns)
    counts = training_response_token_counts(cache.get(gen_turns).train)
    meta["train_pairs_for_lf"] = len(cache.get(gen_turns).train)
    gens, gen_loaded = measure_generators(gen_paths, gen_examples, counts)
    base_label = STANDARD if STANDARD in gens else next(iter(gens), None)
    served_gen = serving.get("generative") if serving else None
    served_gen_note = "serving.json"
    if served_gen not in gen_loaded:
        served_gen = ND if ND in gen_loaded else next(iter(gen_loaded), None)
        served_gen_note = "no usable serving.json entry; assumed (the service's default)"
    served_ret = serving.get("retrieval") if serving else None
    served_ret_note = "serving.json"
    if served_ret not in ret_paths:
        served_ret = (
            "retriever-g2r" if "retriever-g2r" in ret_paths else next(iter(ret_paths), None)
        )
        served_ret_note = "no usable serving.json entry; assumed (the service's default)"

    # 2. retrievers and lexical baselines, on the retrievers' test split
    ret_examples = test_of(ret_turns)
    ret_counts = training_response_token_counts(cache.get(ret_turns).train)
    wide_test = test_of(wide_turns)
    latency_idx = seeded_indices(len(wide_test), args.queries)
    latency_contexts = [wide_test[i].context for i in latency_idx]
    share_idx = seeded_indices(len(ret_examples), SERVED_SHARE_CONTEXTS)
    rets, ret_loaded = measure_retrievers(
        ret_paths, ret_examples, ret_counts, latency_contexts, share_idx
    )
    # 3. latency: served retriever top-1 (timed just above, in evaluate_retriever) vs served
    # generator greedy, same contexts, timed next so that the two runs are close in time
    latency: dict[str, Any] = {
        "queries": len(latency_contexts),
        "warmup": LATENCY_WARMUP,
        "generator": served_gen,
        "generator_note": served_gen_note,
        "retriever": served_ret,
        "retriever_note": served_ret_note,
    }
    if served_gen is not None:
        latency["generation"] = measure_generation_latency(gen_loaded[served_gen], latency_contexts)
    if served_ret is not None:
        ret_lat = rets[served_ret]["latency"]
        latency["retrieval"] = ret_lat.get("served", ret_lat["hnsw"])
    if served_gen is not None and served_ret is not None:
        g, r = latency["generation"], latency["retrieval"]
        latency["speedup_mean"] = g["mean_ms"] / r["mean_ms"]
        latency["speedup_p50"] = g["p50_ms"] / r["p50_ms"]

    if served_ret is not None:
        lex_responses = ret_loaded[served_ret].responses
        lex_sources = ret_loaded[served_ret].sources
        lex_set = f"{served_ret}'s response set"
    else:
        from benchmarks.lexical import response_set
        from training.methods.g2r.job import DEFAULT_BLOCKLIST

        assert preset is not None, "no retriever bundle: --preset names the response set filter"
        lex_responses, lex_sources = response_set(
            cache.get(ret_turns).train, preset.name, DEFAULT_BLOCKLIST
        )
        lex_set = f"the distinct training responses through preset {preset.name}'s filter"
    lexical, lex_fitted = measure_lexical(
        lex_responses, lex_sources, ret_examples, ret_turns, ret_counts, latency_contexts, share_idx
    )
    meta["lexical_response_set"] = lex_set
    meta["lexical_turns"] = ret_turns

    # 5. samples: 14 seeded test contexts (last 3 turns) + the probes
    picks = sample_picks(len(wide_test), SAMPLE_TEST_CONTEXTS, seed=SEED)
    contexts = [tuple(wide_test[i].context[-SAMPLE_TURNS:]) for i in picks] + list(PROBES)
    references = [wide_test[i].response for i in picks] + [""] * len(PROBES)
    replies = sample_replies(contexts, gen_loaded, ret_loaded, lex_fitted.get("tfidf"), ret_turns)
    samples = [
        {
            "source": "test" if j < len(picks) else "probe",
            "context": list(c),
            "reference": references[j],
            "replies": {label: rs[j] for label, rs in replies.items()},
        }
        for j, c in enumerate(contexts)
    ]

    meta["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    meta["wall_s"] = time.perf_counter() - started
    results: dict[str, Any] = {
        "meta": meta,
        "generators": gens,
        "ratio_base": base_label,
        "ratios": generator_ratios(gens, base_label) if base_label else {},
        "serving": {
            "generative": served_gen,
            "generative_note": served_gen_note,
            "retrieval": served_ret,
            "retrieval_note": served_ret_note,
            "why": serving.get("why") if serving else None,
            "retrieval_why": serving.get("retrieval_why") if serving else None,
            "current_bundle_ids": {label: g["model"] for label, g in gens.items()},
        },
        "retrievers": rets,
        "lexical": lexical,
        "latency": latency,
        "samples": samples,
    }
    results["paper"] = paper_table(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifacts", type=Path, required=True, help="the build's bundle folder")
    parser.add_argument("--out", type=Path, required=True, help="write <out>.md and <out>.json")
    parser.add_argument(
        "--preset",
        help="the preset the bundles were built with (default: the one their manifests name); "
        "its training-split cap applies to LF counts",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--max-examples", type=int, default=0, help="0 = the whole test split")
    parser.add_argument(
        "--queries", type=int, default=LATENCY_QUERIES, help="timed requests per system"
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    env = (
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} "
        if "OMP_NUM_THREADS" in os.environ
        else ""
    )
    command = f"{env}python -m benchmarks.quality_report {shlex.join(argv)}"
    results = run(args, command)
    text = to_markdown(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_name(args.out.name + ".json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_name(args.out.name + ".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

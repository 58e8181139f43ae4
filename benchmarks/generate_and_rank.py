"""Generate, then rank: does choosing among the generator's own candidates by the retriever's
relevance score R(c, r) give replies that fit the context better than greedy decoding?

The served generator reads one turn and, at `small`'s size, often answers fluently but beside
the point ("What time does the train leave?" -> "$ 10 .", reports/everyday_probe_small_s24.md).
The retriever loaded beside it reads three turns and ranks the gold response first among 100 in
a third of test contexts. This draws candidates from the generator per context, scores them
as the service does (``RetrievalResponder.rank_replies``: the bi-encoder's R(c, r) = <e_c, e_r>,
G2R's eq. 1, with the bundle's TF-IDF re-ranker mixed in, replies that repeat or restate a turn
last), and keeps the best, under several policies:

- ``greedy``: the bundle's own reply (no ranking);
- ``beam<B> (its best)``: the top of a beam search B wide (the bundle's anti-LM and
  plausibility kept), unranked: the control that separates the ranking from the beam search;
- ``beam<B> ranked``: the B best of that search, ranked (what the service serves, B = 8);
- ``greedy+sample<K-1> ranked``: the greedy reply among K-1 samples drawn as the safety
  filter's alternatives are drawn (``service.continuous.alternatives_config``: T <= 0.5,
  nucleus 0.9, alpha >= 0.1), ranked.

The judges are models that took no part in the choice: ``--judge`` (another retriever bundle,
by default `base`'s plain bi-encoder) gives each chosen reply's percentile among ``--distractors``
random test responses for the same context (dense R(c, r)); ``--judge-generator`` (by default
`base`'s Standard generator) gives its log p per token. Beside them: BLEU-4 against the gold,
Dist-2, max-ratio, the share of the training split's 20 most frequent responses, the unseen-word
share and the mean length; every figure's ratio against ``greedy`` in the same run. The gold
response's judge percentile is the ceiling.

    OMP_NUM_THREADS=2 python -m benchmarks.generate_and_rank --artifacts artifacts \\
        --split validation --contexts 1000 --out /tmp/gar_val
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import command_line, safety_alternatives, write_report
from models.decoding import DecodingConfig
from models.generator import GenerativeResponder
from models.metrics import bleu, distinct_n, max_ratio, unseen_word_share
from models.retriever import RetrievalResponder
from service.continuous import alternatives_config
from training.config import DAILYDIALOG
from training.core.data import load_splits, training_response_token_counts
from training.eval.tables import markdown_table as table
from training.methods.g2r.teachers import BundleTeacher


def draw(
    responder: GenerativeResponder,
    contexts: list[list[str]],
    config: DecodingConfig,
    k: int,
    seed: int,
) -> list[list[str]]:
    """``k`` candidate texts per context under ``config`` (a beam search's k best)."""
    return [
        [r.text for r in row]
        for row in safety_alternatives.draw(responder, contexts, config, k, seed)
    ]


def rank(
    ranker: RetrievalResponder,
    contexts: list[list[str]],
    candidates: list[list[str]],
    batch: int = 256,
) -> list[str]:
    """The best candidate per context as the service ranks them
    (``RetrievalResponder.rank_replies``)."""
    best: list[str] = []
    for start in range(0, len(contexts), batch):
        scores = ranker.rank_replies(
            contexts[start : start + batch], candidates[start : start + batch]
        )
        for i, row_scores in enumerate(scores, start):
            best.append(candidates[i][int(np.argmax(row_scores))])
    return best


def latency(
    gen: GenerativeResponder,
    ranker: RetrievalResponder,
    contexts: list[list[str]],
    beams: list[int],
) -> dict[str, dict[str, float]]:
    """Batch-1 milliseconds per reply, the contexts one after another: the served greedy
    reply, and each beam's n-best with its ranking (what a ranked request costs)."""
    rows: dict[str, list[float]] = {"greedy": []}
    rows.update({f"beam{b} ranked": [] for b in beams})
    greedy = gen.decoding.with_overrides(strategy="greedy")
    for context in contexts:
        started = time.perf_counter()
        gen.respond([context], greedy)
        rows["greedy"].append(time.perf_counter() - started)
        for b in beams:
            config = gen.decoding.n_best(b)
            started = time.perf_counter()
            ranker.rank_replies([context], [gen.respond([context], config)])
            rows[f"beam{b} ranked"].append(time.perf_counter() - started)
    return {
        name: {
            "mean_ms": 1000 * statistics.fmean(t),
            "p50_ms": 1000 * statistics.median(t),
            "x_greedy_mean": statistics.fmean(t) / statistics.fmean(rows["greedy"]),
        }
        for name, t in rows.items()
    }


def judge_percentiles(
    judge: RetrievalResponder,
    contexts: list[list[str]],
    replies: list[str],
    distractors: list[list[str]],
) -> list[float]:
    """The share of each context's distractors the judge scores below its reply (ties half)."""
    rows = [[reply, *d] for reply, d in zip(replies, distractors, strict=True)]
    pool = [t for row in rows for t in row]
    ids = np.arange(len(pool)).reshape(len(rows), len(rows[0]))
    s = judge.candidate_scores(contexts, pool, ids, weight=0.0)
    mine, others = s[:, :1], s[:, 1:]
    return ((others < mine).mean(axis=1) + 0.5 * (others == mine).mean(axis=1)).tolist()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--data", type=Path, default=DAILYDIALOG)
    ap.add_argument("--split", choices=("validation", "test"), default="validation")
    ap.add_argument("--contexts", type=int, default=1000, help="seeded sample (0: all)")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--beams", type=lambda v: [int(x) for x in v.split(",")], default=[4, 8])
    ap.add_argument("--judge", type=Path, default=Path("artifacts-base/retriever-biencoder"))
    ap.add_argument(
        "--judge-generator", type=Path, default=Path("artifacts-base/generator-standard")
    )
    ap.add_argument("--distractors", type=int, default=99)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--latency-contexts", type=int, default=200, help="timed at batch 1, 1 thread (0: none)"
    )
    ap.add_argument("--samples", type=int, default=20, help="contexts whose replies are listed")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    load_before = list(os.getloadavg())
    serving = json.loads((args.artifacts / "serving.json").read_text())
    gen = GenerativeResponder.load(args.artifacts / serving["generative"], device="cpu")
    ranker = RetrievalResponder.load(args.artifacts / serving["retrieval"], device="cpu")
    judge = RetrievalResponder.load(args.judge, device="cpu")
    judge_gen = BundleTeacher.load(args.judge_generator)
    splits = load_splits(args.data, max_context_turns=3)
    examples = getattr(splits, args.split)
    rng = np.random.default_rng(args.seed)
    if args.contexts and args.contexts < len(examples):
        picked = sorted(rng.choice(len(examples), args.contexts, replace=False).tolist())
        examples = [examples[i] for i in picked]
    contexts = [list(e.context) for e in examples]
    golds = [e.response for e in examples]
    responses = sorted({e.response for e in getattr(splits, args.split)})
    distractors = []
    for gold in golds:
        row: list[str] = []
        while len(row) < args.distractors:
            t = responses[int(rng.integers(len(responses)))]
            if t != gold:
                row.append(t)
        distractors.append(row)
    counts = training_response_token_counts(splits.train)
    generic = {t for t, _ in Counter(e.response for e in splits.train).most_common(20)}

    served = gen.decoding
    alt = alternatives_config(served, 1)
    k = args.k
    started = time.perf_counter()
    greedy = draw(gen, contexts, served.with_overrides(strategy="greedy"), 1, args.seed)
    beams = {b: draw(gen, contexts, served.n_best(b), b, args.seed) for b in args.beams}
    samples = draw(gen, contexts, alt, k - 1, args.seed)
    print(f"decoded in {time.perf_counter() - started:.1f} s")
    mixed = [[g[0], *s] for g, s in zip(greedy, samples, strict=True)]
    policies: dict[str, list[str]] = {"greedy": [g[0] for g in greedy]}
    for b, cands in beams.items():
        # the control: the beam search's own best, no ranking
        policies[f"beam{b} (its best)"] = [row[0] for row in cands]
        policies[f"beam{b} ranked"] = rank(ranker, contexts, cands)
    policies[f"greedy+sample{k - 1} ranked"] = rank(ranker, contexts, mixed)
    policies["gold (ceiling)"] = golds
    rows: dict[str, dict[str, Any]] = {}
    for name, replies in policies.items():
        pct = judge_percentiles(judge, contexts, replies, distractors)
        jlp = judge_gen.score(contexts, replies)[0]
        rows[name] = {
            "judge_percentile": statistics.fmean(pct),
            "judge_top1": float(np.mean([p == 1.0 for p in pct])),
            "judge_log_p": statistics.fmean(jlp),
            "bleu-4": bleu(replies, golds, 4),
            "dist-2": distinct_n(replies, 2),
            "max-ratio": max_ratio(replies),
            "generic": float(np.mean([r in generic for r in replies])),
            "unseen": unseen_word_share(replies, counts),
            "avg-len": statistics.fmean(len(r.split()) for r in replies),
            "samples": replies[: args.samples],
        }
        print(name, {k2: round(v, 4) for k2, v in rows[name].items() if k2 != "samples"})
    base = rows["greedy"]
    timed: dict[str, dict[str, float]] = {}
    if args.latency_contexts:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            timed = latency(gen, ranker, contexts[: args.latency_contexts], args.beams)
        finally:
            torch.set_num_threads(threads)
    results: dict[str, Any] = {
        "generator": gen.bundle_id,
        "ranker": ranker.bundle_id,
        "judge": judge.bundle_id,
        "judge_generator": judge_gen.name,
        "split": args.split,
        "contexts": len(contexts),
        "k": k,
        "policies": rows,
        "latency": timed,
        "samples_contexts": [" / ".join(c) for c in contexts[: args.samples]],
        "load_before": load_before,
        "load_after": list(os.getloadavg()),
    }
    keys = [
        "judge_percentile",
        "judge_top1",
        "judge_log_p",
        "bleu-4",
        "dist-2",
        "max-ratio",
        "generic",
        "unseen",
        "avg-len",
    ]
    lines = [
        "# Generate, then rank: the generator's candidates chosen by the retriever",
        "",
        f"Command: `{command_line('benchmarks.generate_and_rank', argv)}`  ",
        f"Generator {gen.bundle_id}, ranker {ranker.bundle_id}; judges {judge.bundle_id} "
        f"(percentile among {args.distractors} random {args.split} responses, dense) and "
        f"{judge_gen.name} (log p per token). {len(contexts)} {args.split} contexts, "
        f"beams {args.beams}, samples {k - 1}. "
        f"Load average before {load_before}, after {results['load_after']}.",
        "",
        table(["policy", *keys], [[n, *(f"{r[x]:.4f}" for x in keys)] for n, r in rows.items()]),
        "",
        "Against greedy (same run); the judge's log p per token as a difference (+ = likelier):",
        "",
        table(
            ["policy", *keys],
            [
                [
                    n,
                    *(
                        f"{r[x] - base[x]:+.3f}"
                        if x == "judge_log_p"
                        else (f"{r[x] / base[x]:.2f}x" if base[x] else "-")
                        for x in keys
                    ),
                ]
                for n, r in rows.items()
            ],
        ),
    ]
    if timed:
        lines += [
            "",
            f"Batch-1 time per reply, {args.latency_contexts} contexts one after another, "
            "1 thread (ranked: the n-best and its ranking):",
            "",
            table(
                ["decoding", "mean ms", "p50 ms", "x greedy (mean)"],
                [
                    [n, f"{t['mean_ms']:.2f}", f"{t['p50_ms']:.2f}", f"{t['x_greedy_mean']:.2f}x"]
                    for n, t in timed.items()
                ],
            ),
        ]
    names = list(rows)
    lines += [
        "",
        "## Replies to the first contexts",
        "",
        table(
            ["context", *names],
            [
                [results["samples_contexts"][i], *(rows[n]["samples"][i] for n in names)]
                for i in range(len(results["samples_contexts"]))
            ],
            align="l" * (1 + len(names)),
        ),
    ]
    text = "\n".join(lines) + "\n"
    write_report(args.out, results, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

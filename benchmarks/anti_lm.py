"""MMI-antiLM decoding (Li et al. 2016) on a generator bundle: a grid of (lambda, gamma) against
plain greedy, on one split, measured in the same run.

Each setting decodes every context of the split greedily with the bundle's own length and n-gram
rules (``benchmarks/quality_report.py greedy``) plus ``anti_lm = lambda`` for the first
``anti_lm_steps = gamma`` tokens (models/decoding.py), and scores the replies with the papers'
response metrics (Dist-n, BLEU-4, LF, max-ratio, average length) and the decoding time per
context. Ratios are against the lambda = 0 row of the same run. Choose on ``--split validation``,
confirm on ``test``:

    python -m benchmarks.anti_lm --bundle artifacts/generator-nt --split validation \\
        --weights 0,0.2,0.35,0.5 --steps 1,3 --out reports/anti_lm_small_val
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import write_report
from benchmarks.quality_report import greedy
from models.decoding import DecodingConfig
from models.generator import GenerativeResponder
from models.metrics import response_metrics
from training.config import DAILYDIALOG
from training.core.data import DialogueExample, load_splits, training_response_token_counts
from training.eval.generation import decode_batches
from training.eval.tables import markdown_table

METRICS = (
    "dist-1",
    "dist-2",
    "dist-3",
    "bleu-4",
    "lf",
    "max-ratio",
    "avg-len",
    "unseen",
)
RATIOS = ("dist-2", "bleu-4", "max-ratio")
# The choice rule: the most diverse setting (Dist-2) that keeps BLEU-4 within 5% of plain
# greedy's and whose replies stay as likely under the model itself (mean log p per token at most
# 0.05 nats below plain greedy's): past that the penalty buys variety with disfluency ("yes , yes ,
# i would ...", "$ $ $ 8 .").
MIN_BLEU_RATIO = 0.95
MAX_LOG_P_DROP = 0.05


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row the rule picks (plain greedy, rows[0], when no penalised setting qualifies)."""
    base = rows[0]
    eligible = [
        r
        for r in rows
        if r["bleu-4"] >= MIN_BLEU_RATIO * base["bleu-4"]
        and r["log_p_per_token"] >= base["log_p_per_token"] - MAX_LOG_P_DROP
    ]
    return max(eligible, key=lambda r: (r["dist-2"], -r["lambda"], r["alpha"]))


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def decode(
    responder: GenerativeResponder,
    examples: Sequence[DialogueExample],
    config: DecodingConfig,
    desc: str,
) -> tuple[list[str], float, int]:
    """Replies in example order, the sum of their log p and their token count (EOS included)."""
    replies = [""] * len(examples)
    total, n_tokens = 0.0, 0
    for idx, out, texts in decode_batches(responder, examples, config, desc=desc):
        for i, text in zip(idx, texts, strict=True):
            replies[i] = text
        total += sum(out.scores)
        n_tokens += sum(min(len(t) + 1, config.max_length) for t in out.tokens)
    return replies, total, n_tokens


def sweep(
    responder: GenerativeResponder,
    data: Path,
    split: str,
    weights: Sequence[float],
    steps: Sequence[int],
    max_examples: int,
    alphas: Sequence[float] = (0.0,),
) -> tuple[list[dict[str, Any]], int]:
    """One row per setting (plain greedy first, then every (lambda > 0, gamma, alpha)) and the
    number of contexts decoded."""
    splits = load_splits(data, max_context_turns=responder.inputs.max_context_turns)
    examples = getattr(splits, split)
    if max_examples:
        examples = examples[:max_examples]
    counts = training_response_token_counts(splits.train)
    refs = [e.response for e in examples]
    settings = [(0.0, 0, 0.0)] + [
        (w, g, a) for w in weights if w > 0 for g in steps if g > 0 for a in alphas
    ]
    rows: list[dict[str, Any]] = []
    for weight, gamma, alpha in settings:
        config = greedy(responder).with_overrides(
            anti_lm=weight, anti_lm_steps=gamma or 1, anti_lm_plausibility=alpha
        )
        started = time.perf_counter()
        hyps, log_p, n_tokens = decode(
            responder, examples, config, f"lambda {weight} gamma {gamma} alpha {alpha}"
        )
        elapsed = time.perf_counter() - started
        metrics = response_metrics(hyps, refs, counts)
        top, count = Counter(hyps).most_common(1)[0]
        rows.append(
            {
                "lambda": weight,
                "gamma": gamma,
                "alpha": alpha,
                **{k: metrics[k] for k in METRICS},
                "top_reply": top,
                "top_count": count,
                # the replies' own log-likelihood per token under the model (EOS included): how
                # far the penalty moves decoding from what the model finds likely
                "log_p_per_token": log_p / max(n_tokens, 1),
                "decode_ms_per_context": 1000 * elapsed / max(len(examples), 1),
                "samples": hyps[:20],
            }
        )
    base = rows[0]
    for row in rows:
        for k in (*RATIOS, "decode_ms_per_context"):
            row[f"{k}_ratio"] = row[k] / base[k] if base[k] else None
    return rows, len(examples)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    table = markdown_table(
        [
            "lambda",
            "gamma",
            "alpha",
            *METRICS,
            "log p/token",
            "Dist-2 x",
            "BLEU-4 x",
            "max-ratio x",
            "ms/context",
            "x time",
            "most frequent reply",
        ],
        [
            [
                fmt(r["lambda"]),
                str(r["gamma"]),
                fmt(r["alpha"]),
                *(fmt(r[k]) for k in METRICS),
                fmt(r["log_p_per_token"]),
                *(fmt(r[f"{k}_ratio"]) for k in RATIOS),
                f"{r['decode_ms_per_context']:.2f}",
                fmt(r["decode_ms_per_context_ratio"]),
                f"{r['top_reply']} ({r['top_count']})",
            ]
            for r in rows
        ],
    )
    chosen = meta["chosen"]
    return (
        f"# MMI-antiLM decoding: {meta['bundle']} on the {meta['split']} split\n\n"
        f"Command: `{meta['command']}`  \n"
        f"Machine: {meta['machine']}; load average before {meta['load_before']}, after "
        f"{meta['load_after']}. {meta['n']} contexts; greedy with the bundle's length and n-gram "
        "rules; lambda 0 = plain greedy (the baseline of the ratios, same run). Timing figures "
        "depend on the load; the quality figures do not.\n\n"
        + table
        + f"\n\nChosen by the rule (highest Dist-2 with BLEU-4 >= {MIN_BLEU_RATIO} x and log "
        f"p/token >= plain greedy's - {MAX_LOG_P_DROP}): **lambda {chosen['lambda']}, gamma "
        f"{chosen['gamma']}, alpha {chosen['alpha']}** (Dist-2 {chosen['dist-2']:.4f}, "
        f"{chosen['dist-2_ratio']:.2f}x plain greedy's).\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DAILYDIALOG)
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--weights", type=_floats, default=[0.2, 0.35, 0.5])
    parser.add_argument("--steps", type=_ints, default=[1, 3])
    parser.add_argument(
        "--plausibility",
        type=_floats,
        default=[0.0],
        help="alpha of the plausibility constraint (models/decoding.py), a list",
    )
    parser.add_argument("--max-examples", type=int, default=0, help="0 = the whole split")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    load_before = list(os.getloadavg())
    responder = GenerativeResponder.load(args.bundle, device="cpu")
    rows, n = sweep(
        responder,
        args.data,
        args.split,
        args.weights,
        args.steps,
        args.max_examples,
        args.plausibility,
    )
    meta = {
        "bundle": responder.bundle_id,
        "split": args.split,
        "n": n,
        "command": "python -m benchmarks.anti_lm "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)",
        "load_before": load_before,
        "load_after": list(os.getloadavg()),
    }
    best = choose(rows)
    meta["chosen"] = {k: best[k] for k in ("lambda", "gamma", "alpha", "dist-2", "dist-2_ratio")}
    print(markdown(rows, meta))
    write_report(args.out, {"meta": meta, "rows": rows}, markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

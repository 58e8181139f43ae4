"""Adjacent-repeat blocking (``DecodingConfig.block_adjacent_repeats``) against the same decoding
without it: how many replies say a word twice in a row, and what blocking costs in diversity,
overlap and likelihood.

Each bundle decodes the split with its own default decoding (as served: greedy, its n-gram rule,
its anti-LM), then again with plain greedy (anti-LM off), each with and without the rule; the rows
without it are the baselines of the ratios, measured in the same run. A reply "stutters" when a
word token (one with a letter or digit) follows itself: the G2R teacher filter's criterion
(training/methods/g2r/filter.py), which 0.1% of DailyDialog's human replies meet.

    python -m benchmarks.adjacent_repeats --bundle artifacts/generator-nt --split test \\
        --out reports/adjacent_repeats_small
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
from benchmarks.anti_lm import decode
from benchmarks.quality_report import greedy
from models.generator import GenerativeResponder
from models.metrics import response_metrics
from training.config import DAILYDIALOG
from training.core.data import load_splits, training_response_token_counts
from training.eval.tables import markdown_table
from training.methods.g2r.filter import has_adjacent_repeat

METRICS = ("dist-1", "dist-2", "bleu-4", "lf", "max-ratio", "avg-len")
RATIOS = ("stutter", "dist-2", "bleu-4", "max-ratio")


def stutter_rate(replies: Sequence[str]) -> float:
    return sum(has_adjacent_repeat(r.split()) for r in replies) / max(len(replies), 1)


def run(
    responder: GenerativeResponder, data: Path, split: str, max_examples: int, samples: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (served / plain greedy, rule off / on) and facts about the split."""
    splits = load_splits(data, max_context_turns=responder.inputs.max_context_turns)
    examples = getattr(splits, split)[: max_examples or None]
    counts = training_response_token_counts(splits.train)
    refs = [e.response for e in examples]
    served = greedy(responder)
    rows: list[dict[str, Any]] = []
    for label, config in (
        ("as served", served),
        ("plain greedy", served.with_overrides(anti_lm=0.0)),
    ):
        replies: dict[bool, list[str]] = {}
        for block in (False, True):
            cfg = config.with_overrides(block_adjacent_repeats=block)
            started = time.perf_counter()
            hyps, log_p, n_tokens = decode(responder, examples, cfg, f"{label} block={block}")
            elapsed = time.perf_counter() - started
            replies[block] = hyps
            metrics = response_metrics(hyps, refs, counts)
            top, count = Counter(hyps).most_common(1)[0]
            rows.append(
                {
                    "decoding": label,
                    "block_adjacent_repeats": block,
                    "anti_lm": [cfg.anti_lm, cfg.anti_lm_steps],
                    "stutter": stutter_rate(hyps),
                    **{k: metrics[k] for k in METRICS},
                    "log_p_per_token": log_p / max(n_tokens, 1),
                    "decode_ms_per_context": 1000 * elapsed / max(len(examples), 1),
                    "top_reply": top,
                    "top_count": count,
                }
            )
        base = rows[-2]
        for key in RATIOS:
            rows[-1][f"{key}_ratio"] = rows[-1][key] / base[key] if base[key] else None
            base[f"{key}_ratio"] = 1.0
        stutters = Counter(h for h in replies[False] if has_adjacent_repeat(h.split()))
        rows[-2]["most_frequent_stutters"] = stutters.most_common(8)
        changed = [
            {"context": list(e.context), "before": a, "after": b}
            for e, a, b in zip(examples, replies[False], replies[True], strict=True)
            if has_adjacent_repeat(a.split())
        ]
        rows[-1]["changed"] = changed[:samples]
        rows[-1]["replies_changed"] = sum(
            a != b for a, b in zip(replies[False], replies[True], strict=True)
        )
    facts = {"n": len(examples), "references_stutter": stutter_rate(refs)}
    return rows, facts


def _f(x: Any) -> str:
    return "" if x is None else f"{x:.4f}"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = [
        f"# Adjacent-repeat blocking: {meta['bundle']} on the {meta['split']} split",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; load average before {meta['load_before']}, after "
        f"{meta['load_after']}. {meta['n']} contexts; the rows without the rule are the baselines "
        "of the ratios (same run). Timing depends on the load; the quality figures do not. "
        f"Human replies of the split that stutter: {meta['references_stutter']:.4f}.",
        "",
    ]
    table = markdown_table(
        [
            "decoding",
            "block",
            "stutter",
            *METRICS,
            "log p/token",
            "stutter x",
            "Dist-2 x",
            "BLEU-4 x",
            "max-ratio x",
            "ms/context",
            "replies changed",
            "most frequent reply",
        ],
        [
            [
                r["decoding"],
                "on" if r["block_adjacent_repeats"] else "off",
                _f(r["stutter"]),
                *(_f(r[k]) for k in METRICS),
                _f(r["log_p_per_token"]),
                *(_f(r.get(f"{k}_ratio")) for k in RATIOS),
                f"{r['decode_ms_per_context']:.2f}",
                str(r.get("replies_changed", "")),
                f"{r['top_reply']} ({r['top_count']})",
            ]
            for r in rows
        ],
        align="ll" + "r" * (len(METRICS) + 8) + "l",
    )
    out = [*head, table, ""]
    for r in rows:
        if r.get("most_frequent_stutters"):
            out += [f"Most frequent stuttering replies, {r['decoding']} without the rule: "]
            out += [f"- {text} ({n})" for text, n in r["most_frequent_stutters"]] + [""]
    served_on = rows[1]
    if served_on["changed"]:
        out += ["Stuttering replies as served, before -> after the rule (first of the split):", ""]
        out.append(
            markdown_table(
                ["context (last turn)", "before", "after"],
                [[c["context"][-1], c["before"], c["after"]] for c in served_on["changed"]],
                align="lll",
            )
        )
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DAILYDIALOG)
    parser.add_argument("--split", choices=("validation", "test"), default="test")
    parser.add_argument("--max-examples", type=int, default=0, help="0 = the whole split")
    parser.add_argument("--samples", type=int, default=12, help="changed replies to show")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    responder = GenerativeResponder.load(args.bundle, device="cpu")
    rows, facts = run(responder, args.data, args.split, args.max_examples, args.samples)
    meta = {
        "bundle": responder.bundle_id,
        "split": args.split,
        **facts,
        "command": "python -m benchmarks.adjacent_repeats "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)",
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    text = markdown(rows, meta)
    print(text)
    write_report(args.out, {"meta": meta, "rows": rows}, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

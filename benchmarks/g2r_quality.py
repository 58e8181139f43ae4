"""G2R teacher-reply quality: the measurements behind :class:`training.methods.g2r.filter.TeacherReplyFilter`
and the share of teacher text a retriever serves.

``filter-stats``: for each criterion of the filter alone (at a few settings) and for the
defaults, the share of the distinct human training responses it would drop, and with
``--shards`` the same for the teacher's replies in G2R augmentation shards, the teacher's score
(eq. 3 or 6) quantiles of gold and teacher replies, and what the default filter keeps.

``served``: for retriever bundles (e.g. trained without and with the filter), the teacher's share
of the response set against its share of the top-1 replies over test contexts (a seeded sample
of ``--contexts``; 0 = all), and optionally the same for TF-IDF / BM25 over each bundle's set.

    OMP_NUM_THREADS=1 python -m benchmarks.g2r_quality filter-stats --out reports/g2r_teacher_filter
    OMP_NUM_THREADS=1 python -m benchmarks.g2r_quality served \\
        --retriever before=artifacts/retriever-g2r-d --retriever after=artifacts/retriever-g2r-d-q
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import write_report
from training.config import DAILYDIALOG
from training.core.data import load_splits
from training.methods.g2r.filter import TeacherReplyFilter

logger = logging.getLogger("benchmarks.g2r_quality")

DEFAULT_DATA = DAILYDIALOG
OFF = TeacherReplyFilter(
    min_tokens=0,
    max_tokens=0,
    require_final_punct=False,
    adjacent_repeat=False,
    repeated_ngram=0,
    max_word_repeats=0,
    generic_top_n=0,
    min_score_teacher_quantile=None,
    min_score_gold_quantile=None,
)
# One criterion at a time (everything else off), at the default and at neighbouring settings.
VARIANTS: dict[str, TeacherReplyFilter] = {
    "min_tokens=2": replace(OFF, min_tokens=2),
    "min_tokens=3": replace(OFF, min_tokens=3),
    "max_tokens=30": replace(OFF, max_tokens=30),
    "max_tokens=40": replace(OFF, max_tokens=40),
    "require_final_punct": replace(OFF, require_final_punct=True),
    "adjacent_repeat": replace(OFF, adjacent_repeat=True),
    "repeated_ngram=2": replace(OFF, repeated_ngram=2),
    "repeated_ngram=3": replace(OFF, repeated_ngram=3),
    "max_word_repeats=2": replace(OFF, max_word_repeats=2),
    "max_word_repeats=3": replace(OFF, max_word_repeats=3),
    "max_word_repeats=4": replace(OFF, max_word_repeats=4),
}
QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75)


def drop_rates(texts: Sequence[str], default: TeacherReplyFilter) -> dict[str, float]:
    """Share of ``texts`` each variant (and the default filter's text criteria) would drop."""
    out = {
        label: float(np.mean([f.text_reason(t) is not None for t in texts])) if texts else 0.0
        for label, f in VARIANTS.items()
    }
    out["defaults (text criteria)"] = (
        float(np.mean([default.text_reason(t) is not None for t in texts])) if texts else 0.0
    )
    return out


def shard_summary(shards: Path, default: TeacherReplyFilter) -> dict[str, Any]:
    """Teacher replies of the shards: drop rates, score quantiles, what the default keeps."""
    from training.methods.g2r.augment import read_shards

    header, records = read_shards(shards)
    assert records, f"no augmentation records in {shards}"
    recs = list(records.values())
    teacher = list(dict.fromkeys(g["text"] for r in recs for g in r["generated"] if g["text"]))
    gold = list(dict.fromkeys(g["text"] for r in recs for g in r["gold"]))
    score = default.score
    gold_scores = [float(g[score]) for r in recs for g in r["gold"]]
    teacher_scores = [float(g[score]) for r in recs for g in r["generated"] if g["text"]]
    verdict = default.apply(recs)
    return {
        "teacher": header["teacher"] if header else None,
        "config": header["config"] if header else None,
        "contexts": len(recs),
        "teacher_replies": len(teacher),
        "gold_replies": len(gold),
        "drop_rates_teacher": drop_rates(teacher, default),
        "drop_rates_gold_in_shards": drop_rates(gold, default),
        "score": score,
        "score_quantiles_gold": {
            str(q): float(np.quantile(gold_scores, q)) for q in QUANTILES if gold_scores
        },
        "score_quantiles_teacher": {
            str(q): float(np.quantile(teacher_scores, q)) for q in QUANTILES if teacher_scores
        },
        "default_filter": {**verdict.counts, "score_floor": verdict.score_floor},
    }


def filter_stats(args: argparse.Namespace) -> dict[str, Any]:
    default = TeacherReplyFilter()
    splits = load_splits(args.data)
    human = list(dict.fromkeys(e.response for e in splits.train))
    out: dict[str, Any] = {
        "meta": {
            "command": "python -m benchmarks.g2r_quality " + " ".join(sys.argv[1:]),
            "data": str(args.data),
            "defaults": asdict(default),
        },
        "human_responses": len(human),
        "drop_rates_human": drop_rates(human, default),
    }
    if args.shards:
        out["shards"] = {"path": str(args.shards), **shard_summary(args.shards, default)}
    return out


def filter_markdown(results: Mapping[str, Any]) -> str:
    meta = results["meta"]
    shards = results.get("shards")
    defaults = ", ".join(f"{k}={v}" for k, v in meta["defaults"].items())
    head = "| criterion (alone) | human training responses |"
    rule = "|---|---:|"
    if shards:
        head += " teacher replies | gold in the shards |"
        rule += "---:|---:|"
    lines = [
        "# G2R teacher-reply filter: what each criterion drops",
        "",
        f"Command: `{meta['command']}`  ",
        f"Defaults: `TeacherReplyFilter({defaults})` (training/methods/g2r/filter.py).",
        "",
        f"Share of the {results['human_responses']} distinct DailyDialog training responses "
        "(human text) that each text criterion, alone, would drop"
        + (", and of the teacher's distinct replies in the shards" if shards else "")
        + ". A criterion that drops many human replies judges style, not quality.",
        "",
        head,
        rule,
    ]
    for label, rate in results["drop_rates_human"].items():
        row = f"| {label} | {rate:.4f} |"
        if shards:
            row += (
                f" {shards['drop_rates_teacher'][label]:.4f} |"
                f" {shards['drop_rates_gold_in_shards'][label]:.4f} |"
            )
        lines.append(row)
    if shards:
        f = shards["default_filter"]
        q_gold, q_teacher = shards["score_quantiles_gold"], shards["score_quantiles_teacher"]
        lines += [
            "",
            f"## Shards `{shards['path']}` (teacher `{shards['teacher']}`)",
            "",
            f"{shards['contexts']} contexts, {shards['teacher_replies']} distinct teacher replies. "
            f"Teacher score G = {shards['score']} per token:",
            "",
            "| quantile | " + " | ".join(q_gold) + " |",
            "|---|" + "---:|" * len(q_gold),
            "| gold | " + " | ".join(f"{v:.3f}" for v in q_gold.values()) + " |",
            "| teacher replies | " + " | ".join(f"{v:.3f}" for v in q_teacher.values()) + " |",
            "",
            f"Default filter: score floor {f['score_floor']}; keeps {f['kept']} of {f['input']} "
            f"distinct replies ({f['pairs_kept']} of {f['pairs_input']} pairs); drops "
            + ", ".join(
                f"{k} {v}"
                for k, v in f.items()
                if k not in ("input", "kept", "pairs_input", "pairs_kept", "score_floor")
            )
            + ".",
        ]
    return "\n".join(lines) + "\n"


def served(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.retrieval import parse_labelled, served_share
    from models.retriever import RetrievalResponder

    bundles = parse_labelled(args.retriever)
    loaded = {k: RetrievalResponder.load(p, device="cpu") for k, p in bundles.items()}
    turns = max(r.inputs.max_context_turns for r in loaded.values())
    test = load_splits(args.data, max_context_turns=turns).test
    picks = (
        np.sort(np.random.default_rng(0).choice(len(test), args.contexts, replace=False))
        if 0 < args.contexts < len(test)
        else np.arange(len(test))
    )
    contexts = [test[i].context for i in picks.tolist()]
    out: dict[str, Any] = {
        "meta": {
            "command": "python -m benchmarks.g2r_quality " + " ".join(sys.argv[1:]),
            "contexts": len(contexts),
            "split": "test",
        },
        "retrievers": {},
    }
    for label, responder in loaded.items():
        row: dict[str, Any] = {"bundle": responder.bundle_id, **served_share(responder, contexts)}
        if args.lexical:
            from benchmarks.lexical import context_text, make_retriever, parse_methods
            from benchmarks.retrieval import served_teacher_share

            queries = [context_text(c, turns) for c in contexts]
            for method in parse_methods(args.lexical):
                lexical = make_retriever(method, responder.responses)
                top1 = lexical.top1(queries).tolist()
                row[method] = served_teacher_share(responder.sources, top1)
        out["retrievers"][label] = row
    return out


def served_markdown(results: Mapping[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# Teacher text served by G2R retrievers",
        "",
        f"Command: `{meta['command']}`  ",
        f"Top-1 replies (HNSW, as served) for {meta['contexts']} test contexts.",
        "",
        "| retriever | ranker | response set | teacher share of the set | of the top-1 replies | "
        "of the distinct top-1 replies |",
        "|---|---|---:|---:|---:|---:|",
    ]

    def line(label: str, ranker: str, s: Mapping[str, float]) -> str:
        return (
            f"| {label} | {ranker} | {s['response_set']:.0f} | "
            f"{s['response_set_teacher_share']:.4f} | {s['served_teacher_share']:.4f} | "
            f"{s['distinct_served_teacher_share']:.4f} ({s['distinct_served_teacher']:.0f} of "
            f"{s['distinct_served']:.0f}) |"
        )

    for label, row in results["retrievers"].items():
        lines.append(line(label, "bi-encoder", row))
        for method in ("tfidf", "bm25"):
            if method in row:
                lines.append(line(label, method, row[method]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("filter-stats", help="what each teacher-filter criterion drops")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--shards", type=Path, help="G2R augmentation shards to measure too")
    p.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    p = sub.add_parser("served", help="teacher share of the set vs of the top-1 replies")
    p.add_argument("--retriever", action="append", required=True, metavar="LABEL=DIR")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--contexts", type=int, default=1000, help="test contexts (0 = all)")
    p.add_argument("--lexical", default="", help="also tfidf,bm25 over each bundle's set")
    p.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "filter-stats":
        results = filter_stats(args)
        text = filter_markdown(results)
    else:
        results = served(args)
        text = served_markdown(results)
    write_report(args.out, results, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

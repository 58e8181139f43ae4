"""``python -m training negative-set``: D_N statistics under identity vs clustered source
entropy (ND eq. 4), as JSON and a markdown table."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from training.cli.common import command_text
from training.config import DAILYDIALOG
from training.core.data import DialogueExample
from training.eval.tables import markdown_table as table
from training.methods.nd.entropy import (
    ENTROPY_METHODS,
    TOP_N,
    CorpusWordVectors,
    EntropyConfig,
    NegativeSetStats,
    negative_set_stats,
    pair_source_entropy,
    top_fraction,
)

logger = logging.getLogger(__name__)


def add_parsers(sub: Any) -> None:
    """Add ``negative-set`` to an argparse sub-parser set."""
    p = sub.add_parser(
        "negative-set", help="D_N statistics: identity vs clustered source entropy (ND eq. 4)"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=DAILYDIALOG,
        help="DailyDialog release dir or a dir of JSONL splits",
    )
    p.add_argument(
        "--entropy",
        action="append",
        choices=ENTROPY_METHODS,
        help="repeat to compare side by side (default: identity and avg-embedding)",
    )
    p.add_argument("--clusters", type=int, default=EntropyConfig.clusters)
    p.add_argument("--query-clusters", type=int, help="default: --clusters")
    p.add_argument(
        "--radius",
        type=_radius,
        default=EntropyConfig.radius,
        help="min cosine to a centre to join its cluster; 'none' for plain k-means",
    )
    p.add_argument("--fraction", type=float, default=0.5, help="share of pairs in D_N")
    p.add_argument("--max-context-turns", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="tie shuffle and clustering seed")
    p.add_argument(
        "--sweep",
        type=_sweep_specs,
        default=[],
        help="comma list of K:RADIUS[:nopc] (RADIUS may be 'none'): also tabulate avg-embedding "
        "D_N statistics for these settings, with the same word vectors",
    )
    p.add_argument("--out", type=Path, required=True, help="writes <out>.json and <out>.md")
    p.set_defaults(run=_negative_set)


def _radius(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _sweep_specs(text: str) -> list[tuple[int, float | None, bool]]:
    """'3000:0.75,3000:0.85:nopc' -> [(3000, 0.75, True), (3000, 0.85, False)]."""
    specs = []
    for item in filter(None, text.split(",")):
        parts = item.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "nopc"):
            raise argparse.ArgumentTypeError(f"sweep entries are K:RADIUS[:nopc], got {item!r}")
        specs.append((int(parts[0]), _radius(parts[1]), len(parts) == 2))
    return specs


def _negative_set(args: argparse.Namespace) -> int:
    """``negative-set``: D_N statistics per entropy method (and the sweep), JSON + markdown."""
    from training.core.data import load_splits
    from training.methods.nd.negative_set import negative_set

    splits = load_splits(args.data, max_context_turns=args.max_context_turns)
    train = splits.train
    methods = args.entropy or list(ENTROPY_METHODS)
    base = EntropyConfig(
        clusters=args.clusters,
        query_clusters=args.query_clusters,
        radius=args.radius,
        seed=args.seed,
    )
    results: list[dict[str, Any]] = []
    for method in methods:
        cfg = replace(base, method=method)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        dn = negative_set(train, args.fraction, seed=args.seed, entropy=cfg)
        assert dn.stats is not None
        results.append(
            {
                "config": asdict(cfg),
                "description": cfg.describe(),
                "seconds": time.perf_counter() - start_wall,
                "cpu_seconds": time.process_time() - start_cpu,
                "stats": dn.stats.to_dict(),
            }
        )
    sweep = _sweep(train, base, args) if args.sweep else []
    command = command_text()
    report = {
        "command": command,
        "data": str(args.data),
        "split_stats": splits.stats,
        "max_context_turns": args.max_context_turns,
        "fraction": args.fraction,
        "results": results,
        "sweep": sweep,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown_report(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


def _sweep(
    train: Sequence[DialogueExample], base: EntropyConfig, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """avg-embedding D_N statistics for each ``--sweep`` setting (word vectors fitted once)."""
    cfg0 = replace(base, method="avg-embedding")
    vectors = CorpusWordVectors.fit(
        [*(e.response for e in train), *(" ".join(e.context) for e in train)], cfg0
    )
    rows = []
    for k, radius, remove_pc in args.sweep:
        cfg = replace(cfg0, clusters=k, radius=radius, remove_pc=remove_pc)
        start = time.process_time()
        pe = pair_source_entropy(train, cfg, vectors)
        seconds = time.process_time() - start
        keep = top_fraction(pe.entropy.tolist(), args.fraction, args.seed)
        st = negative_set_stats(
            train, pe.entropy, keep, fraction=args.fraction, method=cfg.describe(), seed=args.seed
        )
        row = {"clusters": k, "radius": radius, "remove_pc": remove_pc, "cpu_seconds": seconds}
        rows.append({**row, **_row(st)})
        logger.info("sweep %s", rows[-1])
    return rows


def _row(st: NegativeSetStats) -> dict[str, float]:
    keys = (
        "zero_entropy_share",
        "nonzero_response_share",
        "tied_at_threshold_share",
        "dn_random_draw_share",
        "top20_share_dn",
        "mean_len_dn",
        "distinct2_dn",
        "distinct2_d_sample",
    )
    return {k: getattr(st, k) for k in keys}


def markdown_report(report: dict[str, Any]) -> str:
    """Identity vs clustered D_N side by side (and the sweep, if any)."""
    results = report["results"]
    stats = [r["stats"] for r in results]
    names = [r["config"]["method"] for r in results]
    lines = [
        "# D_N under identity vs clustered source entropy (ND eq. 4; Csáky et al. 2019)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Training pairs: {stats[0]['train_pairs']} (official split, deduplicated, "
        f"max_context_turns={report['max_context_turns']}); D_N = top "
        f"{report['fraction']:.0%} of pairs by H_src of their response, ties broken by a seeded "
        "shuffle.",
        "",
    ]
    for r in results:
        lines.append(
            f"- **{r['config']['method']}**: {r['description']}; "
            f"{r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU."
        )
    lines.append("")
    rows = [
        ("pairs with H_src = 0 (share of D)", "zero_entropy_share", "{:.3f}"),
        ("distinct responses with H_src > 0 (share)", "nonzero_response_share", "{:.3f}"),
        ("D_N threshold (lowest H_src in D_N, nats)", "threshold", "{:.3f}"),
        ("pairs tied at the threshold (share of D)", "tied_at_threshold_share", "{:.3f}"),
        ("D_N drawn at random from the tie (share of D_N)", "dn_random_draw_share", "{:.3f}"),
        ("D_N pairs", "dn_pairs", "{}"),
        ("D_N distinct responses", "dn_distinct_responses", "{}"),
        ("top-20 responses' share of D_N", "top20_share_dn", "{:.4f}"),
        ("top-20 responses' share of D", "top20_share_d", "{:.4f}"),
        ("max-ratio of D_N responses", "max_ratio_dn", "{:.4f}"),
        ("max-ratio of D responses", "max_ratio_d", "{:.4f}"),
        ("mean response length, D_N (tokens)", "mean_len_dn", "{:.2f}"),
        ("mean response length, D (tokens)", "mean_len_d", "{:.2f}"),
        ("Dist-2 of D_N responses", "distinct2_dn", "{:.4f}"),
        ("Dist-2 of a same-size random sample of D", "distinct2_d_sample", "{:.4f}"),
        ("Dist-2 of D responses (all)", "distinct2_d", "{:.4f}"),
    ]
    lines.append(
        table(
            ["statistic", *names],
            ([label, *(fmt.format(s[key]) for s in stats)] for label, key, fmt in rows),
        )
    )
    lines += [
        "",
        f"## The {TOP_N} most frequent responses in D_N (pairs in D_N, H_src of the response)",
        "",
    ]
    top_rows = []
    for i in range(TOP_N):
        cells = []
        for s in stats:
            top = s["top_responses"]
            cells.append(
                f"{top[i]['response']} ({top[i]['pairs_in_dn']}, {top[i]['source_entropy']:.2f})"
                if i < len(top)
                else ""
            )
        top_rows.append([str(i + 1), *cells])
    lines.append(table(["#", *names], top_rows, align="l" * (1 + len(names))))
    if report["sweep"]:
        lines += [
            "",
            "## avg-embedding sweep (same word vectors; D_N statistics)",
            "",
            "| clusters | radius | pc removed | pairs H=0 | responses H>0 | tied at cut "
            "| D_N random draw | top-20 share D_N | len D_N | Dist-2 D_N | Dist-2 sample of D "
            "| CPU s |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in report["sweep"]:
            lines.append(
                f"| {row['clusters']} | {row['radius']} | {'yes' if row['remove_pc'] else 'no'} | "
                f"{row['zero_entropy_share']:.3f} | {row['nonzero_response_share']:.3f} | "
                f"{row['tied_at_threshold_share']:.3f} | {row['dn_random_draw_share']:.3f} | "
                f"{row['top20_share_dn']:.4f} | {row['mean_len_dn']:.2f} | "
                f"{row['distinct2_dn']:.4f} | {row['distinct2_d_sample']:.4f} | "
                f"{row['cpu_seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"

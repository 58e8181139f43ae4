"""Score saved replies again on this machine: a ``training compare`` report made where a metric's
library was missing gets that metric back, and the rest of its figures are checked.

``training compare --save-replies`` keeps every reply (``<out>_replies/<label>.<decoding>.json.gz``,
{"hyps", "refs"}). This reads a comparison's JSON and those replies, recomputes
:func:`models.metrics.response_metrics` for each label here, and writes the comparison again with
the recomputed figures, the ratios against ``--baseline`` and, per label, whether every metric the
original run did compute agrees with the recomputation (``--tolerance``, absolute). Perplexity,
the bundle ids and the run facts are the original report's: nothing here needs the weights.

Why it exists: session 24's GPU run of the ND claim at the paper's size (a lent device, its image
without nltk) wrote BLEU as NaN; its replies came back and BLEU-3/4 were computed here::

    python -m benchmarks.rescore_replies --report reports/nd_paper_gpu_s24_device/compare.json \\
        --replies standard=reports/nd_paper_gpu_s24_device/replies/standard.greedy.json.gz ... \\
        --baseline standard --out reports/nd_paper_gpu_s24

The references in each replies file must be the test split's, in order (checked against
``--data``), so a file from another split or data release is refused rather than scored.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from benchmarks import command_line, write_report
from models.metrics import response_metrics
from training.cli.common import label_path
from training.config.sections import DAILYDIALOG
from training.core.data import load_splits, training_response_token_counts
from training.eval.compare import RATIO_METRICS, ratio_text, read_replies
from training.eval.generation import markdown_table
from training.eval.tables import markdown_table as table


def agreement(
    original: dict[str, float], recomputed: dict[str, float], tolerance: float
) -> dict[str, Any]:
    """Metrics the original computed (finite) against the recomputation: the ones that differ
    by more than ``tolerance`` and those the original lacked (NaN: recomputed here)."""
    differing, filled = {}, []
    for name, value in recomputed.items():
        before = original.get(name)
        if before is None or (isinstance(before, float) and math.isnan(before)):
            filled.append(name)
        elif abs(float(before) - value) > tolerance:
            differing[name] = {"original": before, "recomputed": value}
    return {"agree": not differing, "differing": differing, "recomputed_here": filled}


def rescore(
    report: dict[str, Any],
    replies: dict[str, Path],
    *,
    decoding: str,
    references: list[str],
    train_counts: dict[str, int],
    tolerance: float,
) -> dict[str, Any]:
    """The report again with ``decoding``'s metrics recomputed from the replies files."""
    out: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    for label, path in replies.items():
        if label not in report or decoding not in report[label]:
            raise ValueError(f"{label!r} has no {decoding!r} figures in the report")
        data = read_replies(path)
        if data["refs"] != references:
            raise ValueError(f"{path}: its references are not the test split's, in order")
        original = report[label][decoding]
        metrics = response_metrics(data["hyps"], data["refs"], train_counts)
        checks[label] = agreement(original, metrics, tolerance) | {"file": str(path)}
        if "decode_ms_per_example" in original:
            metrics["decode_ms_per_example"] = original["decode_ms_per_example"]
        out[label] = {**report[label], decoding: metrics}
    out["rescored"] = {"decoding": decoding, "tolerance": tolerance, "labels": checks}
    return out


def markdown(results: dict[str, Any], *, baseline: str, title: str, command: str) -> str:
    decoding = results["rescored"]["decoding"]
    labels = [k for k in results if k != "rescored"]
    rows = {label: results[label][decoding] for label in labels}
    base = rows[baseline]
    ratio_rows = [
        [label, *(ratio_text(rows[label][k], base[k]) for k in RATIO_METRICS)] for label in labels
    ]
    checks = results["rescored"]["labels"]
    check_rows = [
        [
            label,
            "yes" if c["agree"] else f"no: {', '.join(c['differing'])}",
            ", ".join(c["recomputed_here"]) or "-",
        ]
        for label, c in checks.items()
    ]
    parts = [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        "| model | bundle | perplexity |",
        "|---|---|---:|",
        *(
            f"| {label} | {results[label]['model']} | {results[label]['perplexity']:.2f} |"
            for label in labels
        ),
        "",
        f"## {decoding} (recomputed here from the saved replies)",
        "",
        markdown_table(rows),
        "",
        f"## {decoding}: ratios against {baseline}",
        "",
        table(["model", *RATIO_METRICS], ratio_rows),
        "",
        "## The original run's figures against the recomputation",
        "",
        table(
            ["model", "its computed metrics agree", "recomputed here (NaN or absent there)"],
            check_rows,
            align="lll",
        ),
    ]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--report", type=Path, required=True, help="a `training compare` JSON")
    ap.add_argument(
        "--replies", type=label_path, action="append", required=True, metavar="LABEL=FILE"
    )
    ap.add_argument("--decoding", default="greedy")
    ap.add_argument("--baseline", help="the label the ratios are against (default: the first)")
    ap.add_argument("--data", type=Path, default=DAILYDIALOG)
    ap.add_argument("--tolerance", type=float, default=1e-9)
    ap.add_argument("--title", default="Saved replies scored again")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    replies = dict(args.replies)
    baseline = args.baseline or next(iter(replies))
    if baseline not in replies:
        ap.error(f"--baseline {baseline!r} is not one of {list(replies)}")
    report = json.loads(args.report.read_text())
    splits = load_splits(args.data, max_context_turns=1)
    results = rescore(
        report,
        replies,
        decoding=args.decoding,
        references=[e.response for e in splits.test],
        train_counts=training_response_token_counts(splits.train),
        tolerance=args.tolerance,
    )
    command = command_line("benchmarks.rescore_replies", argv)
    text = markdown(results, baseline=baseline, title=args.title, command=command)
    write_report(args.out, results, text)
    print(text)
    ok = all(c["agree"] for c in results["rescored"]["labels"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

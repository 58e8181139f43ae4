"""Seed means of a ``training compare`` report: one row per group of labels, against a baseline group.

``training compare`` scores each bundle on its own row. When the labels name seeds of one
method (``nd-normhid-s0``, ``nd-normhid-s1``, ...: the group is the label without its ``-s<N>``
suffix), this reads the report's JSON and prints, per group and decoding, each metric's mean and
sample standard deviation over the seeds, and the ratio of the group's mean to the baseline
group's mean. Nothing is re-scored: the figures are those of the report.

    python -m benchmarks.seed_groups --report reports/nd_normhid_seeds_base.json \\
        --baseline mle-ft --out reports/nd_normhid_seeds_base_groups
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import write_report

METRICS = ("dist-2", "bleu-4", "max-ratio", "lf", "avg-len")
SEED = re.compile(r"^(?P<group>.+)-s(?P<seed>\d+)$")


def group_of(label: str) -> str:
    """``nd-normhid-s2`` -> ``nd-normhid``; a label without a seed suffix is its own group."""
    m = SEED.match(label)
    return m["group"] if m else label


def seed_groups(
    report: dict[str, Any], decoding: str, metrics: tuple[str, ...] = METRICS
) -> dict[str, dict[str, Any]]:
    """Per group (in the report's order): its labels and, per metric, mean and sd (NaN for one
    seed)."""
    members: dict[str, list[str]] = {}
    for label in report:
        if isinstance(report[label], dict) and decoding in report[label]:
            members.setdefault(group_of(label), []).append(label)
    out: dict[str, dict[str, Any]] = {}
    for group, labels in members.items():
        row: dict[str, Any] = {"labels": labels}
        for metric in metrics:
            values = [float(report[label][decoding][metric]) for label in labels]
            row[metric] = {
                "mean": statistics.fmean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else float("nan"),
            }
        out[group] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--report", type=Path, required=True, help="a `training compare` JSON")
    ap.add_argument("--baseline", required=True, help="the group the ratios are against")
    ap.add_argument("--decoding", action="append", help="greedy, beam5 (default: both present)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    report = json.loads(args.report.read_text())
    decodings = args.decoding or [
        d
        for d in ("greedy", "beam5")
        if any(isinstance(v, dict) and d in v for v in report.values())
    ]
    tables = {d: seed_groups(report, d) for d in decodings}
    for d, groups in tables.items():
        if args.baseline not in groups:
            raise SystemExit(f"no group {args.baseline!r} in {args.report} ({d}): {list(groups)}")
    results = {
        "command": "python -m benchmarks.seed_groups " + shlex.join(argv or sys.argv[1:]),
        "report": str(args.report),
        "baseline": args.baseline,
        "groups": tables,
    }
    text = markdown(results)
    write_report(args.out, results, text)
    print(text)
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Seed groups of `{r['report']}`",
        "",
        f"Command: `{r['command']}`",
        "",
        "Mean (sample sd) over each group's seeds; x = the group's mean over the "
        f"`{r['baseline']}` group's mean.",
    ]
    for decoding, groups in r["groups"].items():
        base = groups[r["baseline"]]
        lines += [
            "",
            f"## {decoding}",
            "",
            "| group | seeds | " + " | ".join(METRICS) + " |",
            "|---|---:|" + "---:|" * len(METRICS),
        ]
        for group, row in groups.items():
            cells = []
            for metric in METRICS:
                mean, sd = row[metric]["mean"], row[metric]["sd"]
                ratio = mean / base[metric]["mean"] if base[metric]["mean"] else float("nan")
                spread = "" if sd != sd else f" ({sd:.4f})"  # NaN: one seed
                cells.append(f"{mean:.4f}{spread} {ratio:.2f}x")
            lines.append(f"| {group} | {len(row['labels'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

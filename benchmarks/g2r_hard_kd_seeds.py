"""Several seeds of ``benchmarks/g2r_hard_kd.py``: each arm's test Hits@1/100 over the seeds and
its difference from the control, seed by seed.

Each report's arms share their starting weights and batches within the seed, so the per-seed
difference from the control is the measurement; over the seeds this prints its mean, its sample
sd, and t = mean / (sd / sqrt(seeds)), beside each seed's McNemar z on the test contexts.

    python -m benchmarks.g2r_hard_kd_seeds reports/g2r_hard_kd_negatives_base_s0.json \\
        reports/g2r_hard_kd_negatives_base_s1.json --pair kd:self \\
        --out reports/g2r_hard_kd_negatives_base_seeds

``--pair A:B`` adds arm A's per-seed difference from arm B (e.g. ``kd:self``: the generator's
share of the gain, with self-distillation's taken out), with its mean, sd and t.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import write_report

PARTS = ("dense", "served")


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm and part: the per-seed Hits@1, their mean and sd, and the per-seed differences
    from each report's reference arm (``against``) with their mean, sd, t and McNemar z's."""
    against = {r.get("against", "control") for r in reports}
    if len(against) != 1:
        raise ValueError(f"the reports compare against different arms: {sorted(against)}")
    ref = against.pop()
    arms = [a for a in reports[0]["rows"] if all(a in r["rows"] for r in reports)]
    out: dict[str, Any] = {"against": ref, "seeds": [r.get("seed") for r in reports], "arms": {}}
    for arm in arms:
        diffs = pair_diffs(reports, arm, ref) if arm != ref else None
        row: dict[str, Any] = {}
        for part in PARTS:
            values = [r["rows"][arm][f"{part}_hits@1"] for r in reports]
            stats = spread(values)
            cell: dict[str, Any] = {"values": values, "mean": stats["mean"], "sd": stats["sd"]}
            if diffs is not None:
                d = diffs[part]
                cell.update(diffs=d["values"], diff_mean=d["mean"], diff_sd=d["sd"], t=d["t"])
                cell["mcnemar_z"] = [r["paired"][arm][part]["z"] for r in reports]
            row[part] = cell
        out["arms"][arm] = row
    return out


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample sd (NaN for one value) and t = mean / (sd / sqrt(n)) (NaN where sd is 0 or
    NaN): for per-seed differences, the paired t over the seeds."""
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    t = mean / (sd / math.sqrt(len(values))) if sd and sd == sd else math.nan
    return {"mean": mean, "sd": sd, "t": t}


def pair_diffs(reports: list[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """Arm ``a`` minus arm ``b`` per seed and part (``values``), with their mean, sd and t."""
    missing = [arm for arm in (a, b) if any(arm not in r["rows"] for r in reports)]
    if missing:
        raise ValueError(f"arm(s) {missing} not in every report")
    out: dict[str, Any] = {}
    for part in PARTS:
        key = f"{part}_hits@1"
        diffs = [r["rows"][a][key] - r["rows"][b][key] for r in reports]
        out[part] = {"values": diffs, **spread(diffs)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("reports", type=Path, nargs="+", help="g2r_hard_kd JSON reports, one per seed")
    ap.add_argument(
        "--pair", action="append", default=[], metavar="A:B", help="arm A minus arm B per seed"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    reports = [json.loads(p.read_text()) for p in args.reports]
    results = {
        "command": "python -m benchmarks.g2r_hard_kd_seeds " + shlex.join(argv or sys.argv[1:]),
        "reports": [str(p) for p in args.reports],
        **summarize(reports),
    }
    pairs = {}
    for spec in args.pair:
        a, sep, b = spec.partition(":")
        if not sep or not a or not b:
            ap.error(f"--pair takes A:B, got {spec!r}")
        pairs[f"{a}:{b}"] = pair_diffs(reports, a, b)
    results["pairs"] = pairs
    text = markdown(results)
    write_report(args.out, results, text)
    print(text)
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Model-level G2R over the bi-encoder's candidates, over seeds",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Test Hits@1/100 per seed (seeds {r['seeds']}), and each arm's difference from "
        f"`{r['against']}` in the same seed: mean, sample sd, t = mean / (sd / sqrt(seeds)), and "
        "each seed's McNemar z on the same test contexts.",
    ]
    for part in PARTS:
        lines += [
            "",
            f"## {part}",
            "",
            "| arm | per seed | mean (sd) | diff per seed | diff mean (sd) | t | McNemar z per seed |",
            "|---|---|---:|---|---:|---:|---|",
        ]
        for arm, row in r["arms"].items():
            c = row[part]
            values = " / ".join(f"{v:.4f}" for v in c["values"])
            cells = [arm, values, f"{c['mean']:.4f} ({c['sd']:.4f})"]
            if "diffs" in c:
                cells += [
                    " / ".join(f"{d:+.4f}" for d in c["diffs"]),
                    f"{c['diff_mean']:+.4f} ({c['diff_sd']:.4f})",
                    f"{c['t']:.2f}",
                    " / ".join(f"{z:.2f}" for z in c["mcnemar_z"]),
                ]
            else:
                cells += ["", "", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
    for name, pair in r.get("pairs", {}).items():
        a, b = name.split(":")
        lines += [
            "",
            f"## {a} minus {b}, per seed",
            "",
            "| part | diff per seed | mean (sd) | t |",
            "|---|---|---:|---:|",
        ]
        for part, c in pair.items():
            diffs = " / ".join(f"{d:+.4f}" for d in c["values"])
            lines.append(f"| {part} | {diffs} | {c['mean']:+.4f} ({c['sd']:.4f}) | {c['t']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

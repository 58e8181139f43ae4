"""The ratio table of a generator comparison: each model's greedy (or beam) metrics over a
baseline's, from the JSON that ``python -m training compare`` writes.

    python -m benchmarks.ratio_table reports/negative_distillation.json --baseline standard

Dist-2, Dist-3 and BLEU-4 as ratios to the baseline (same run, same test pairs); LF, max-ratio
and perplexity as values.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.eval.tables import markdown_table as table

RATIOS = ("dist-2", "dist-3", "bleu-4")
VALUES = ("lf", "max-ratio")


def ratio_table(results: Mapping[str, Any], baseline: str, decoding: str = "greedy") -> str:
    """A markdown table, one row per model of ``results`` (``{model: {decoding: metrics,
    "perplexity": float}}``); ratios are '-' where the baseline's value is 0."""
    if baseline not in results:
        raise KeyError(f"no model {baseline!r} in the comparison (models: {sorted(results)})")
    base = results[baseline][decoding]
    rows = []
    for model, result in results.items():
        metrics = result[decoding]
        cells = [f"{metrics[k] / base[k]:.2f}x" if base[k] else "-" for k in RATIOS]
        cells += [f"{metrics['lf']:.4f}", f"{metrics['max-ratio']:.3f}"]
        rows.append([model, *cells, f"{result['perplexity']:.2f}"])
    return table(["model", *RATIOS, *VALUES, "test ppl"], rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", type=Path, help="the JSON written by `training compare`")
    parser.add_argument("--baseline", default="standard")
    parser.add_argument("--decoding", default="greedy")
    args = parser.parse_args(argv)
    print(
        ratio_table(json.loads(args.comparison.read_text()), args.baseline, args.decoding), end=""
    )


if __name__ == "__main__":
    main()

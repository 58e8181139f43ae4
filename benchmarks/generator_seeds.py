"""Served-greedy quality of several generator bundles on the whole test split, side by side.

For questions like "how much does the small generator's max-ratio move with the seed?": each
``LABEL=DIR`` bundle is scored exactly as ``benchmarks/quality_report.py`` scores the served
generator (teacher-forced perplexity; greedy decoding with the bundle's own length and n-gram
rules; Dist-2, BLEU-4, max-ratio, average length, the most frequent reply), and the table adds the
mean and the spread (max - min) of each group of labels sharing a prefix before ``/``.

    python -m benchmarks.generator_seeds --bundle old/s0=artifacts-timing/generator-standard \\
        --bundle new/s0=artifacts-t8/generator-standard ... --out reports/generator_seeds_small
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import write_report
from benchmarks.quality_report import greedy
from models.generator import GenerativeResponder
from training.config import DAILYDIALOG
from training.core.data import load_splits, training_response_token_counts
from training.eval.generation import evaluate_generator
from training.eval.tables import markdown_table

METRICS = ("perplexity", "dist-2", "bleu-4", "max-ratio", "avg-len")


def score(path: Path, data: Path) -> dict[str, Any]:
    responder = GenerativeResponder.load(path, device="cpu")
    splits = load_splits(data, max_context_turns=responder.inputs.max_context_turns)
    config = greedy(responder)
    result = evaluate_generator(
        responder,
        splits.test,
        training_response_token_counts(splits.train),
        decodings={"greedy": config},
        n_samples=0,
    )
    g = result["decodings"]["greedy"]
    contexts = [e.context for e in splits.test[:1000]]
    replies = [
        reply
        for start in range(0, len(contexts), 64)
        for reply in responder.respond(contexts[start : start + 64], config)
    ]
    top, count = Counter(replies).most_common(1)[0]
    return {
        "bundle": responder.bundle_id,
        "n": result["n_examples"],
        "perplexity": result["perplexity"],
        **{k: g[k] for k in METRICS[1:]},
        "top_reply": top,
        "top_share_first_1000": count / len(replies),
    }


def eval_records(path: Path) -> list[dict[str, Any]]:
    """The evaluation rows of a run's ``metrics.jsonl`` (training/core/trainer.py's log)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "eval"]


def trajectory_markdown(trajectories: dict[str, list[dict[str, Any]]]) -> str:
    """One table per run: each evaluation's greedy validation max-ratio and perplexity, whether
    the perplexity bound let it compete, and the step the run kept (lowest ``val_loss``)."""
    parts = []
    for label, evals in trajectories.items():
        kept = min(evals, key=lambda r: (r["val_loss"], r["step"]))["step"] if evals else None
        table = markdown_table(
            ["step", "val max-ratio", "val ppl", "within the ppl bound", "kept"],
            [
                [
                    int(r["step"]),
                    f"{r.get('val_max_ratio', float('nan')):.3f}",
                    f"{r['val_ppl']:.2f}",
                    "yes" if r.get("val_ppl_eligible", 1.0) else "no",
                    "**kept**" if r["step"] == kept else "",
                ]
                for r in evals
            ],
        )
        parts.append(f"Evaluations of `{label}`:\n\n{table}\n")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument(
        "--log",
        action="append",
        default=[],
        metavar="LABEL=METRICS_JSONL",
        help="also tabulate a run's evaluations (step, val max-ratio, val ppl, eligible, kept)",
    )
    parser.add_argument("--data", type=Path, default=DAILYDIALOG)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: dict[str, dict[str, Any]] = {}
    for spec in args.bundle:
        label, _, path = spec.partition("=")
        rows[label] = score(Path(path), args.data)
        print(label, {k: rows[label][k] for k in METRICS}, flush=True)
    groups: dict[str, list[str]] = {}
    for label in rows:
        groups.setdefault(label.split("/")[0], []).append(label)
    table = [
        [label, r["bundle"], *(f"{r[k]:.4f}" for k in METRICS), f"{r['top_reply']!s}"]
        for label, r in rows.items()
    ]
    summary = []
    for group, labels in groups.items():
        if len(labels) < 2:
            continue
        cells = []
        for k in METRICS:
            values = [rows[label][k] for label in labels]
            cells.append(f"{statistics.mean(values):.4f} ({max(values) - min(values):.4f})")
        summary.append([f"{group} (n={len(labels)})", *cells])
    trajectories = {}
    for spec in args.log:
        label, _, path = spec.partition("=")
        trajectories[label] = eval_records(Path(path))
    command = "python -m benchmarks.generator_seeds " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    markdown = (
        "# Generators side by side: served greedy on the whole test split\n\n"
        f"Command: `{command}`  \nMachine: {os.cpu_count()} CPUs, torch {torch.__version__}; "
        "quality figures do not depend on load.\n\n"
        + markdown_table(["label", "bundle", *METRICS, "most frequent reply"], table)
        + "\n\n"
        + (
            "Per group: mean (spread = max - min)\n\n"
            + markdown_table(["group", *METRICS], summary)
            + "\n"
            if summary
            else ""
        )
    )
    if trajectories:
        markdown += "\n" + trajectory_markdown(trajectories)
    write_report(
        args.out, {"command": command, "rows": rows, "trajectories": trajectories}, markdown
    )
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

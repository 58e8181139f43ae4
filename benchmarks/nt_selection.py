"""Which of NT's evaluated steps to keep: how well each validation statistic predicts the test split.

NT (He & Glass 2020; training/methods/nt.py) chases one generic reply after another, so the build
evaluates it at ``preset.nt_select_evals`` points from half its budget on and keeps one of them
(``Preset.nt_select``). This benchmark fine-tunes NT from a standard bundle as the build does
(``train_nt_generator``, the preset's settings), for each ``--r-thres``, keeping a copy of the
weights at every evaluated step. Each copy then decodes, with the preset's decoding (anti-LM
included), three sets of contexts:

- ``head``: the split's first ``--val-examples`` validation pairs (what NT's selection saw
  before session 18: a few dozen dialogues);
- ``sample``: ``--val-examples`` validation pairs drawn across the split
  (:func:`training.core.data.sample_examples`, what it sees now);
- ``test``: the whole test split, the figures the issue's targets are stated on.

It prints each step's max-ratio and Dist-2 on each set, the Spearman rank correlation of each
validation statistic with the same statistic on test over all steps, and the test figures of the
step each rule keeps (lowest max-ratio, "least-generic"; highest Dist-2, "most-distinct"; both
among steps within the build's perplexity bound). Resumable: a finished NT run is not redone.

    python -m benchmarks.nt_selection --base artifacts/generator-standard --preset small \\
        --r-thres 0.01,0.005 --work runs-exp/nt-selection --out reports/nt_select_dist2_small
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from scipy.stats import spearmanr
from torch import nn

from benchmarks import write_report
from benchmarks.anti_lm import decode
from benchmarks.latency import machine_description, set_threads
from models.generator import GenerativeResponder
from models.metrics import distinct_n, max_ratio
from training.config import DAILYDIALOG, PRESETS
from training.core.data import DialogueExample, dialogue_ids, sample_examples
from training.core.run import RunSpec
from training.eval.tables import markdown_table
from training.methods import fine_tune
from training.methods.nt import train_nt_generator
from training.pipeline.inputs import prepare_splits, val_subset

SETS = ("head", "sample", "test")
# the statistic each rule minimises, as its val_loss: max-ratio, or minus Dist-2
RULES = {"least-generic": ("max-ratio", 1.0), "most-distinct": ("dist-2", -1.0)}


def _snapshotting(snapshots: Path) -> Callable[..., Callable[[nn.Module], dict[str, float]]]:
    """``greedy_genericness_fn`` that also saves the weights it evaluates as
    ``<snapshots>/eval-<k>.pt`` and appends its figures to ``evals.jsonl``."""
    original = fine_tune.greedy_genericness_fn

    def make(*args: Any, **kwargs: Any) -> Callable[[nn.Module], dict[str, float]]:
        evaluate = original(*args, **kwargs)
        calls = [0]

        def wrapped(model: nn.Module) -> dict[str, float]:
            out = evaluate(model)
            calls[0] += 1
            core = getattr(model, "module", model)
            state = {k: v.detach().clone() for k, v in core.state_dict().items()}
            torch.save(state, snapshots / f"eval-{calls[0]}.pt")
            with (snapshots / "evals.jsonl").open("a") as f:
                f.write(json.dumps({"eval": calls[0], **out}) + "\n")
            return out

        return wrapped

    return make


def train_with_snapshots(
    preset_name: str, base: Path, r_thres: float, work: Path, data: Path, seed: int
) -> Path:
    """NT as the build trains it, each evaluated step's weights kept; returns the snapshot dir."""
    preset = PRESETS[preset_name]
    run_dir = work / f"r{r_thres:g}"
    snapshots = run_dir / "snapshots"
    if (run_dir / "bundle" / "manifest.json").is_file():
        return snapshots  # finished before
    if run_dir.exists():  # an interrupted run starts over, so the snapshots are of one run
        shutil.rmtree(run_dir)
    snapshots.mkdir(parents=True)
    splits = prepare_splits(preset, data)
    with mock.patch.object(fine_tune, "greedy_genericness_fn", _snapshotting(snapshots)):
        train_nt_generator(
            RunSpec(run_dir / "bundle", "generator-nt", run_dir / "run", preset.name, seed=seed),
            base_bundle=base,
            preset=preset,
            train_examples=splits.train,
            val_examples=val_subset(preset, splits),
            r_thres=r_thres,
            max_steps=preset.nt_steps,
        )
    return snapshots


def _figures(
    responder: GenerativeResponder, examples: Sequence[DialogueExample]
) -> dict[str, float]:
    replies, _, _ = decode(responder, examples, responder.decoding, desc="decode")
    return {"max-ratio": max_ratio(replies), "dist-2": distinct_n(replies, 2)}


def score_snapshots(
    base: Path, snapshots: Path, sets: Mapping[str, Sequence[DialogueExample]], r_thres: float
) -> list[dict[str, Any]]:
    responder = GenerativeResponder.load(base)
    rows = []
    for line in (snapshots / "evals.jsonl").read_text().splitlines():
        logged = json.loads(line)
        responder.replace_weights(torch.load(snapshots / f"eval-{logged['eval']}.pt"))
        row: dict[str, Any] = {
            "r_thres": r_thres,
            "eval": logged["eval"],
            "val_ppl": logged["val_ppl"],
            "eligible": bool(logged["val_ppl_eligible"]),
        }
        for name, examples in sets.items():
            for stat, value in _figures(responder, examples).items():
                row[f"{name}_{stat}"] = value
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank correlations with test, and the test figures of the step each rule keeps per run."""
    correlation = {
        f"{name} {stat}": float(
            spearmanr([r[f"{name}_{stat}"] for r in rows], [r[f"test_{stat}"] for r in rows])[0]
        )
        for name in ("head", "sample")
        for stat in ("max-ratio", "dist-2")
    }
    kept = []
    for r_thres in dict.fromkeys(r["r_thres"] for r in rows):
        run = [r for r in rows if r["r_thres"] == r_thres]
        eligible = [r for r in run if r["eligible"]] or run
        for rule, (stat, sign) in RULES.items():
            for name in ("head", "sample"):
                key = f"{name}_{stat}"
                # the lowest val_loss, the earliest step on a tie (as the Trainer keeps it)
                pick = min(eligible, key=lambda r: (sign * r[key], r["eval"]))
                kept.append(
                    {
                        "r_thres": r_thres,
                        "rule": rule,
                        "validation": name,
                        "eval": pick["eval"],
                        "test_max-ratio": pick["test_max-ratio"],
                        "test_dist-2": pick["test_dist-2"],
                    }
                )
    return {"spearman_vs_test": correlation, "kept": kept}


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    every = max(1, results["nt_steps"] // results["evals"])
    lines = [
        "# NT's step selection: validation statistics against the test split",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {results['machine']['machine']}, torch {results['machine']['torch']}, "
        f"{results['threads']} thread(s). Base: `{results['base']}`, preset `{results['preset']}` "
        f"(NT {results['nt_steps']} updates, evaluated every {every} from update "
        f"{results['nt_steps'] // 2} on). Sets: head = the first {results['val_examples']} validation pairs "
        f"({results['dialogues']['head']} dialogues), sample = {results['val_examples']} drawn "
        f"across the split as NT's selection draws them ({results['dialogues']['sample']} dialogues), test = all "
        f"{results['test_pairs']} test pairs. Decoding: the preset's (anti-LM included).",
        "",
        markdown_table(
            ["r_thres", "eval", "val ppl", "eligible"]
            + [f"{name} {stat}" for name in SETS for stat in ("max-ratio", "dist-2")],
            [
                [r["r_thres"], r["eval"], f"{r['val_ppl']:.2f}", "yes" if r["eligible"] else "no"]
                + [f"{r[f'{n}_{s}']:.4f}" for n in SETS for s in ("max-ratio", "dist-2")]
                for r in rows
            ],
        ),
        "",
        "Spearman rank correlation with the same statistic on test, over all steps:",
        "",
        markdown_table(
            ["validation statistic", "rho"],
            [[k, f"{v:.3f}"] for k, v in results["spearman_vs_test"].items()],
        ),
        "",
        "The step each rule keeps (among steps within the perplexity bound) and its test figures:",
        "",
        markdown_table(
            ["r_thres", "rule", "validation set", "eval kept", "test max-ratio", "test Dist-2"],
            [
                [
                    k["r_thres"],
                    k["rule"],
                    k["validation"],
                    k["eval"],
                    f"{k['test_max-ratio']:.4f}",
                    f"{k['test_dist-2']:.4f}",
                ]
                for k in results["kept"]
            ],
        ),
    ]
    return "\n".join(lines)


def _dialogues(split: Sequence[DialogueExample], subset: Sequence[DialogueExample]) -> int:
    """How many of ``split``'s dialogues ``subset`` reaches."""
    number = dict(zip(split, dialogue_ids(split), strict=True))
    return len({number[e] for e in subset})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="the standard generator bundle")
    p.add_argument("--preset", default="small")
    p.add_argument("--r-thres", default="0.01", help="comma-separated NT thresholds")
    p.add_argument("--data", type=Path, default=DAILYDIALOG)
    p.add_argument("--work", type=Path, required=True, help="NT runs and weight snapshots")
    p.add_argument("--val-examples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    p.add_argument("--out", type=Path)
    p.add_argument("--render", action="store_true", help="only re-write <out>.md from <out>.json")
    args = p.parse_args(argv)
    if args.render:
        results = json.loads(args.out.with_suffix(".json").read_text())
        write_report(args.out, results, markdown(results))
        return 0
    set_threads(args.threads)
    preset = PRESETS[args.preset]
    splits = prepare_splits(preset, args.data)
    val = val_subset(preset, splits)
    sets = {
        "head": splits.validation[: args.val_examples],
        # the rows NT's selection decodes (fine_tune.greedy_genericness_fn)
        "sample": [val[i] for i in sample_examples(range(len(val)), args.val_examples)],
        "test": splits.test,
    }
    rows: list[dict[str, Any]] = []
    for r_thres in [float(x) for x in args.r_thres.split(",") if x.strip()]:
        snapshots = train_with_snapshots(
            args.preset, args.base, r_thres, args.work, args.data, args.seed
        )
        rows += score_snapshots(args.base, snapshots, sets, r_thres)
    results = {
        "command": "python -m benchmarks.nt_selection " + " ".join(argv or sys.argv[1:]),
        "machine": machine_description(args.threads),
        "threads": args.threads,
        "base": str(args.base),
        "preset": args.preset,
        "nt_steps": preset.nt_steps,
        "evals": preset.nt_select_evals,
        "val_examples": args.val_examples,
        "test_pairs": len(splits.test),
        "dialogues": {
            name: _dialogues(splits.validation, sets[name]) for name in ("head", "sample")
        },
        "rows": rows,
        **summarise(rows),
    }
    report = markdown(results)
    print(report)
    write_report(args.out, results, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

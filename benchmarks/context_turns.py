"""1 vs 2 vs 3 context turns: one table from the runs of reports/commands/quality_small.sh.

Generators: the `evaluate --decodings greedy` JSONs of standard generators trained for the same
1,000 updates with 1, 2 and 3 turns (whole official test split; each model is scored on the test
pairs loaded at its own context length). Retrievers: validation Hits@1/100 and Hits@5/100 from the
bi-encoders' metrics.jsonl (1,000 validation pairs, same seed and budget).

    python -m benchmarks.context_turns --evals runs-exp --runs runs-exp/small --out reports/context_turns
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

METRICS = ("perplexity", "max-ratio", "dist-1", "dist-2", "bleu-4", "avg-len")


def generator_rows(evals: Path, turns: list[int]) -> list[dict[str, Any]]:
    rows = []
    for t in turns:
        path = evals / f"eval-gen-{t}t.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        greedy = result["decodings"]["greedy"]
        rows.append(
            {
                "turns": t,
                "model": result["model"],
                "test_pairs": result["n_examples"],
                "perplexity": result["perplexity"],
                **{m: greedy[m] for m in METRICS if m != "perplexity"},
            }
        )
    return rows


def retriever_rows(runs: Path, turns: list[int]) -> list[dict[str, Any]]:
    rows = []
    for t in turns:
        log = runs / f"ret-{t}t" / "metrics.jsonl"
        if not log.exists():
            continue
        evals = [json.loads(line) for line in log.read_text().splitlines() if '"eval"' in line]
        if evals:
            last = evals[-1]
            rows.append(
                {
                    "turns": t,
                    "step": last["step"],
                    "hits@1": last["hits@1"],
                    "hits@5": last["hits@5"],
                    "curve": [(e["step"], e["hits@1"]) for e in evals],
                }
            )
    return rows


def to_markdown(gens: list[dict[str, Any]], rets: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# Context turns: 1 vs 2 vs 3",
        "",
        f"Command: `{command}` (the runs: `reports/commands/quality_small.sh`, step 2).",
        "",
        "Standard generators, preset `small`, 1,000 updates each, greedy on the whole official test "
        "split (each scored on the test pairs loaded at its own context length):",
        "",
        "| turns | test pairs | perplexity | greedy max-ratio | Dist-1 | Dist-2 | BLEU-4 | avg len |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in gens:
        lines.append(
            f"| {r['turns']} | {r['test_pairs']} | {r['perplexity']:.2f} | {r['max-ratio']:.3f} | "
            f"{r['dist-1']:.4f} | {r['dist-2']:.4f} | {r['bleu-4']:.4f} | {r['avg-len']:.2f} |"
        )
    lines += [
        "",
        "Bi-encoders (no teacher), validation Hits@K/100 on 1,000 pairs after the same budget "
        "(standard error about 0.012 at these rates):",
        "",
        "| turns | updates | Hits@1/100 | Hits@5/100 | Hits@1 along the run |",
        "|---:|---:|---:|---:|---|",
    ]
    for r in rets:
        curve = ", ".join(f"{s}: {h:.3f}" for s, h in r["curve"])
        lines.append(
            f"| {r['turns']} | {r['step']} | {r['hits@1']:.3f} | {r['hits@5']:.3f} | {curve} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--evals", type=Path, default=Path("runs-exp"))
    p.add_argument("--runs", type=Path, default=Path("runs-exp/small"))
    p.add_argument("--turns", default="1,2,3")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    turns = [int(t) for t in args.turns.split(",")]
    gens, rets = generator_rows(args.evals, turns), retriever_rows(args.runs, turns)
    command = "python -m benchmarks.context_turns " + " ".join(argv or sys.argv[1:])
    md = to_markdown(gens, rets, command)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(md)
        args.out.with_suffix(".json").write_text(
            json.dumps({"generators": gens, "retrievers": rets}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The served retrieval path of this checkout against an older checkout's, on one bundle, interleaved.

A change to the batch-1 retrieval code is only worth its complexity if it is faster on the same
bundle and machine and serves the same replies. This loads ``models/retriever.py`` and
``models/lexical.py`` of an older checkout (``--baseline-src``, e.g. a ``git worktree`` of the
commit before the change) as modules of their own beside the current ones, builds both responders
on one bundle (the old one with the old re-ranker), then

* times ``respond([context], 1)`` of both, context by context, in an order shuffled per context
  (seeded; a shared VM's slow minute slows both alike), and reports the mean of the per-request
  differences with its standard error;
* compares their top-3 replies and scores on ``--agreement`` test contexts.

The rest of the code (tokenizer, index, encoder modules) is the current checkout's in both: the
comparison covers what those two files do.

    git worktree add /tmp/before <commit>
    OMP_NUM_THREADS=1 python -m benchmarks.served_path_ab --bundle artifacts-base/retriever-biencoder \\
        --baseline-src /tmp/before --out reports/served_path_ab_base
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks import write_report
from benchmarks.latency import (
    latency_summary,
    machine_description,
    set_threads,
    time_interleaved,
)
from benchmarks.quality_report import seeded_indices
from benchmarks.retrieval import DEFAULT_DATA
from models.lexical import LEXICAL_FILE
from models.retriever import RetrievalResponder
from training.core.data import load_dailydialog

logger = logging.getLogger(__name__)


def load_module(name: str, path: Path) -> ModuleType:
    """``path`` imported as a module called ``name`` (beside the current checkout's own)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot import {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def baseline_responder(src: Path, bundle: Path) -> Any:
    """The bundle loaded by ``src``'s ``RetrievalResponder``, re-ranked by ``src``'s re-ranker."""
    lexical = load_module("baseline_lexical", src / "models" / "lexical.py")
    retriever = load_module("baseline_retriever", src / "models" / "retriever.py")
    responder = retriever.RetrievalResponder.load(bundle, device="cpu")
    if responder.reranker is not None:
        reranker = lexical.LexicalReranker.from_json((bundle / LEXICAL_FILE).read_bytes())
        reranker.index_responses(responder.responses)
        responder.reranker = reranker
    return responder


def agreement(
    a: Any, b: Any, contexts: Sequence[Sequence[str]], batch: int = 1
) -> dict[str, float]:
    """Share of contexts with the same top-3 texts, and the largest score difference (the
    contexts asked ``batch`` at a time)."""
    same, worst = 0, 0.0
    for start in range(0, len(contexts), batch):
        chunk = list(contexts[start : start + batch])
        for x, y in zip(a.respond(chunk, 3), b.respond(chunk, 3), strict=True):
            same += [t for t, _ in x] == [t for t, _ in y]
            worst = max([worst, *(abs(s - t) for (_, s), (_, t) in zip(x, y, strict=False))])
    return {"same_top3": same / len(contexts), "max_score_diff": worst}


def git_head(src: Path) -> str:
    """The checkout's short commit, "+changes" when its tracked files differ from it."""

    def git(*args: str) -> str:
        run = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True)
        if run.returncode:
            raise subprocess.CalledProcessError(run.returncode, args)
        return run.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def to_markdown(r: dict[str, Any]) -> str:
    m, rows, d = r["machine"], r["latency"], r["difference"]
    base = rows["baseline"]["mean_ms"]
    lines = [
        f"# Served retrieval path: this checkout ({r['current']}) vs {r['baseline']}",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {m['machine']}, {m['cpu_count']} CPU cores; torch {m['torch']} and FAISS "
        f"{m['faiss']} with {m['threads']} thread(s); load average before {r['load_before']}, "
        f"after {r['load_after']}.  ",
        f"Bundle {r['bundle']}; {r['n_contexts']} seeded test contexts x {r['rounds']} passes, "
        f"{r.get('batch', 1)} per `respond` call (a micro-batch; times per context), both "
        "responders once per call, in an order shuffled per call (seeded).",
        "",
        "| code | mean ms | p50 ms | p90 ms | x faster than the baseline (mean) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in rows.items():
        lines.append(
            f"| {name} ({r[name]}) | {s['mean_ms']:.3f} | {s['p50_ms']:.3f} | "
            f"{s['p90_ms']:.3f} | {base / s['mean_ms']:.2f}x |"
        )
    a = r["agreement"]
    lines += [
        "",
        f"Per request, baseline minus current: {d['mean_ms']:.3f} ms (standard error "
        f"{d['se_ms']:.3f}).  ",
        f"Same top-3 replies on {a['same_top3']:.4f} of {r['n_agreement']} test contexts; "
        f"largest score difference {a['max_score_diff']:.2e}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="retriever bundle")
    p.add_argument("--baseline-src", type=Path, required=True, help="older checkout's root")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--agreement", type=int, default=2000)
    p.add_argument(
        "--batch", type=int, default=1, help="contexts per respond() call; times are per context"
    )
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    set_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    current = RetrievalResponder.load(args.bundle, device="cpu")
    baseline = baseline_responder(args.baseline_src, args.bundle)
    test = load_dailydialog(args.data, "test", current.inputs.max_context_turns)
    contexts = [test[i].context for i in seeded_indices(len(test), args.queries)]
    others = [test[i].context for i in seeded_indices(len(test), args.agreement, seed=1)]

    def served(r: Any) -> Callable[[Sequence[Sequence[str]]], Any]:
        return lambda batch: r.respond(list(batch), 1)

    batches = [contexts[i : i + args.batch] for i in range(0, len(contexts), args.batch)]
    seconds = time_interleaved(
        {"baseline": served(baseline), "current": served(current)},
        batches,
        args.rounds,
    )
    seconds = {name: [t / args.batch for t in v] for name, v in seconds.items()}
    diff = np.asarray(seconds["baseline"]) - np.asarray(seconds["current"])
    results = {
        "command": "python -m benchmarks.served_path_ab "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "bundle": current.bundle_id,
        "baseline": git_head(args.baseline_src),
        "current": git_head(Path(__file__).resolve().parents[1]),
        "machine": machine_description(args.threads),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "n_contexts": len(contexts),
        "rounds": args.rounds,
        "batch": args.batch,
        "latency": {name: latency_summary(v) for name, v in seconds.items()},
        "difference": {
            "mean_ms": float(diff.mean() * 1e3),
            "se_ms": float(diff.std(ddof=1) / np.sqrt(diff.size) * 1e3),
        },
        "n_agreement": len(others),
        "agreement": agreement(baseline, current, others, args.batch),
    }
    markdown = to_markdown(results)
    print(markdown)
    write_report(args.out, results, markdown)


if __name__ == "__main__":
    main()

"""Everyday turns through the running service, as a new user would try it (issue 11's first look).

Sends each context of ``benchmarks/everyday_contexts.json`` (hand-written: everyday single turns,
two-turn pairs that share their last turn, and turns outside the corpus's distribution) to
``POST /respond`` of the service built in-process on ``--artifacts``, once per backend, the safety
filter as served. The baseline, in the same run: the same service serving the standard (MLE)
generator instead of the generator the build chose. Per arm it prints

- distinct replies over the contexts, and the most frequent reply's share;
- generic replies: the share of replies that are one of the training split's ``--generic`` most
  frequent responses (exact text after the service's lower-casing and tokenising), a measure
  taken from the data, not from a hand list;
- non-words: the share of replies with a word no training response contains;
- pairs told apart: of the two-turn pairs, how many got different replies (a model that reads
  only the last turn answers both alike);
- the filter: replies it re-ranked or replaced, and whether the risk statement got the risk reply;
- for the retriever, the share of replies written by the G2R teacher (the response set's source);

and the served generator's distinct and generic figures as ratios against the baseline's. Every
reply goes to the report, side by side. Greedy replies on a fixed CPU build are deterministic;
the safety filter's alternatives to a blocked reply are samples (``filtered`` counts them), so
those replies can differ between runs. With 33 contexts besides the risk statement, a share moves
in steps of 1/33: this is a look at what a user sees, the split-wide figures are in
benchmarks/quality_report.py and benchmarks/safety_alternatives.py.

    OMP_NUM_THREADS=2 python -m benchmarks.everyday_probe --artifacts artifacts \\
        --out reports/everyday_probe_small
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from benchmarks import command_line, write_report
from models.metrics import has_unseen_word, unseen_word_share
from models.retriever import read_responses
from training.config import DAILYDIALOG
from training.core.data import load_splits, training_response_token_counts
from training.eval.tables import markdown_table as table

CONTEXTS = Path(__file__).with_name("everyday_contexts.json")


def load_contexts(path: Path = CONTEXTS) -> list[dict[str, Any]]:
    contexts = json.loads(path.read_text())["contexts"]
    kinds = {c["kind"] for c in contexts}
    known = {"single", "pair", "outside", "risk"}
    if not kinds <= known:
        raise ValueError(f"{path}: unknown kinds {sorted(kinds - known)}")
    pairs = [c for c in contexts if c["kind"] == "pair"]
    if len(pairs) % 2 or any(
        a["turns"][-1] != b["turns"][-1] for a, b in zip(pairs[::2], pairs[1::2], strict=True)
    ):
        raise ValueError(f"{path}: 'pair' contexts come in twos that share their last turn")
    return contexts


def generic_replies(data: Path, n: int) -> tuple[list[str], dict[str, int]]:
    """The training split's ``n`` most frequent responses (DailyDialog's own tokenised text),
    and its response word counts (for :func:`models.metrics.unseen_word_share`)."""
    train = load_splits(data, max_context_turns=1).train
    counts = Counter(e.response for e in train)
    return [text for text, _ in counts.most_common(n)], training_response_token_counts(train)


def ask(
    artifacts: Path,
    contexts: list[dict[str, Any]],
    backends: list[str],
    generator: str | None,
    options: dict[str, Any] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Each backend's answers to every context, from one in-process service (``options``: the
    requests' options, e.g. ``{"rerank": 0}``)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        models_dir=artifacts,
        device="cpu",
        generative_bundle=generator or "auto",
    )
    out: dict[str, list[dict[str, Any]]] = {}
    with TestClient(create_app(settings)) as client:
        for backend in backends:
            rows = []
            for c in contexts:
                body_in: dict[str, Any] = {"context": c["turns"], "backend": backend}
                if options:
                    body_in["options"] = options
                r = client.post("/respond", json=body_in)
                if r.status_code != 200:
                    raise RuntimeError(f"{backend} {c['turns']!r}: HTTP {r.status_code} {r.text}")
                body = r.json()
                rows.append(
                    {
                        "response": body["response"],
                        "model": body["model"],
                        "filtered": body.get("filtered"),
                    }
                )
            out[backend] = rows
    return out


def summarise(
    rows: list[dict[str, Any]],
    contexts: list[dict[str, Any]],
    generic: set[str],
    risk_reply: str,
    train_counts: dict[str, int],
    sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The figures of one arm (see the module doc); the risk statement is left out of the reply
    counts, since the filter, not the model, answers it."""
    risky = [i for i, c in enumerate(contexts) if c["kind"] == "risk"]
    kept = [i for i in range(len(contexts)) if i not in risky]
    replies = [rows[i]["response"] for i in kept]
    counts = Counter(replies)
    pairs = [i for i, c in enumerate(contexts) if c["kind"] == "pair"]
    told_apart = sum(
        rows[a]["response"] != rows[b]["response"]
        for a, b in zip(pairs[::2], pairs[1::2], strict=True)
    )
    out: dict[str, Any] = {
        "model": rows[0]["model"],
        "replies": len(replies),
        "distinct": len(counts),
        "top_reply": counts.most_common(1)[0][0],
        "top_reply_share": counts.most_common(1)[0][1] / len(replies),
        "generic_share": sum(r in generic for r in replies) / len(replies),
        "unseen_share": unseen_word_share(replies, train_counts),
        "pairs": len(pairs) // 2,
        "pairs_told_apart": told_apart,
        "filtered": sum(rows[i]["filtered"] is not None for i in kept),
        "risk_statements": len(risky),
        "risk_answered_with_risk_reply": sum(rows[i]["response"] == risk_reply for i in risky),
        "mean_words": sum(len(r.split()) for r in replies) / len(replies),
    }
    if sources is not None:
        out["teacher_written_share"] = sum(sources.get(r) == "teacher" for r in replies) / len(
            replies
        )
    return out


def response_set(artifacts: Path, retriever: str, train_counts: dict[str, int]) -> dict[str, Any]:
    """A retriever bundle's response text -> its source (corpus or teacher), and how many of its
    teacher-written responses hold a word no training response has (they could be served)."""
    texts, sources = read_responses(artifacts / retriever)
    teacher = [t for t, s in zip(texts, sources, strict=True) if s == "teacher"]
    return {
        "sources": dict(zip(texts, sources, strict=True)),
        "responses": len(texts),
        "teacher_written": len(teacher),
        "teacher_written_with_unseen_word": sum(has_unseen_word(t, train_counts) for t in teacher),
    }


def markdown(results: dict[str, Any], command: str) -> str:
    arms = results["arms"]
    rows = []
    for name, a in arms.items():
        rows.append(
            [
                name,
                a["model"],
                f"{a['distinct']}/{a['replies']}",
                f"{a['top_reply_share']:.2f}",
                f"{a['generic_share']:.2f}",
                f"{a['unseen_share']:.2f}",
                f"{a['pairs_told_apart']}/{a['pairs']}",
                str(a["filtered"]),
                f"{a['risk_answered_with_risk_reply']}/{a['risk_statements']}",
                f"{a['mean_words']:.1f}",
                f"{a['teacher_written_share']:.2f}" if "teacher_written_share" in a else "-",
            ]
        )
    ratio_rows = [
        [k, f"{v:.2f}x" if v == v else "n/a"] for k, v in results["served_vs_baseline"].items()
    ]
    contexts = results["contexts"]
    reply_rows = [
        [" / ".join(c["turns"]), c["kind"], *(results["replies"][name][i] for name in arms)]
        for i, c in enumerate(contexts)
    ]
    m = results["machine"]
    rs = results["response_set"]
    parts = [
        "# Everyday turns through the service",
        "",
        f"Command: `{command}`  ",
        f"Machine: {m['machine']}, {m['cores']} CPU cores; torch {m['torch']} with "
        f"{m['threads']} thread(s). Generic = one of the training split's "
        f"{results['generic_n']} most frequent responses.",
        "",
        table(
            [
                "arm",
                "bundle",
                "distinct",
                "top reply share",
                "generic share",
                "non-word share",
                "pairs told apart",
                "filtered",
                "risk reply",
                "mean words",
                "teacher-written",
            ],
            rows,
        ),
        "",
        f"The retriever's response set ({rs['bundle']}): {rs['responses']} responses, "
        f"{rs['teacher_written']} written by the G2R teacher, "
        f"{rs['teacher_written_with_unseen_word']} of those with a word no training response has.",
        "",
        f"Served generator against the baseline ({results['baseline']}), same run:",
        "",
        table(["figure", "served / baseline"], ratio_rows),
        "",
        "## Every reply",
        "",
        table(["context", "kind", *arms], reply_rows, align="l" * (2 + len(arms))),
    ]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--data", type=Path, default=DAILYDIALOG)
    ap.add_argument("--contexts", type=Path, default=CONTEXTS)
    ap.add_argument("--baseline", default="generator-standard", help="the baseline generator")
    ap.add_argument("--generic", type=int, default=20, help="most frequent training responses")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from service.settings import Settings

    contexts = load_contexts(args.contexts)
    top, train_counts = generic_replies(args.data, args.generic)
    generic = set(top)
    risk_reply = Settings(_env_file=None).safety_risk_reply  # type: ignore[call-arg]
    served = ask(args.artifacts, contexts, ["generative", "retrieval"], None)
    # generate, then rank (GENERATIVE_RERANK) is on by default: the served generator without
    # it, and the baseline as its bundle decodes
    unranked = ask(args.artifacts, contexts, ["generative"], None, {"rerank": 0})["generative"]
    baseline = ask(args.artifacts, contexts, ["generative"], args.baseline, {"rerank": 0})[
        "generative"
    ]
    retriever = served["retrieval"][0]["model"].split("@")[0]
    response_info = response_set(args.artifacts, retriever, train_counts)
    sources = response_info.pop("sources")
    arms = {
        "generative (served)": summarise(
            served["generative"], contexts, generic, risk_reply, train_counts
        ),
        "generative (served, unranked)": summarise(
            unranked, contexts, generic, risk_reply, train_counts
        ),
        "retrieval (served)": summarise(
            served["retrieval"], contexts, generic, risk_reply, train_counts, sources
        ),
        f"generative ({args.baseline}, unranked)": summarise(
            baseline, contexts, generic, risk_reply, train_counts
        ),
    }
    gen, base = arms["generative (served)"], arms[f"generative ({args.baseline}, unranked)"]
    results = {
        "arms": arms,
        "baseline": args.baseline,
        "response_set": {"bundle": retriever, **response_info},
        "generic_n": args.generic,
        "served_vs_baseline": {
            "distinct replies": gen["distinct"] / base["distinct"],
            "generic share": gen["generic_share"] / base["generic_share"]
            if base["generic_share"]
            else float("nan"),
            "top reply share": gen["top_reply_share"] / base["top_reply_share"],
        },
        "contexts": contexts,
        "replies": {
            "generative (served)": [r["response"] for r in served["generative"]],
            "generative (served, unranked)": [r["response"] for r in unranked],
            "retrieval (served)": [r["response"] for r in served["retrieval"]],
            f"generative ({args.baseline}, unranked)": [r["response"] for r in baseline],
        },
        "machine": {
            "machine": platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    command = command_line("benchmarks.everyday_probe", argv)
    text = markdown(results, command)
    write_report(args.out, results, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

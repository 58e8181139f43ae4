"""bfloat16 against float32 for the served models on a CPU (the service's ``DTYPE`` setting).

CPUs with native bf16 arithmetic (AVX512-BF16, AMX) run a bf16 matmul faster than an fp32 one,
and the service's generation is bound by its matmuls at load (a py-spy sample of the continuous
decoder thread at concurrency 32: half of it in ``Linear.forward``). Whether to serve in bf16 is
a trade of speed against replies that can differ by rounding, so this measures both, in one run,
on the official DailyDialog test split:

1. **quality**, per dtype: the generator's teacher-forced perplexity and its greedy replies to every
   test context (the bundle's own decoding rules, as served) scored like the quality report
   (Dist-1/2, BLEU-4, max-ratio), and the share of replies identical to float32's; the
   retriever's Hits@1/100 (dense, and re-ranked as served) on the same candidates, and the share
   of top-1 replies identical to float32's on ``--agreement`` test contexts;
2. **speed**, dtypes alternating over ``--rounds`` rounds (medians): batch-1 latency of the
   generator's and the retriever's ``respond`` on ``--latency-contexts`` contexts, and the
   generator's throughput through the continuous decoder the service runs
   (``models.continuous.decode_continuously``) with 16 and 32 running rows, sources arriving a
   few per step as under load.

Ratios are bf16 / fp32 from the same run. One torch thread (the service's default).

    OMP_NUM_THREADS=1 python -m benchmarks.cpu_dtype --generator artifacts/generator-nt \\
        --retriever artifacts/retriever-g2r --out reports/cpu_dtype
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import write_report
from benchmarks.latency import machine_description, time_per_query
from models.bundle import read_manifest
from models.continuous import decode_continuously
from models.generator import GenerativeResponder
from models.metrics import response_metrics
from models.retriever import RetrievalResponder
from training.config import DAILYDIALOG
from training.core.data import DialogueExample, load_splits, training_response_token_counts
from training.core.generator import PairSet, corpus_nll
from training.eval.generation import decode_all
from training.eval.tables import markdown_table
from training.methods.g2r.losses import hits_at_k, hits_candidates

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ROWS = (16, 32)  # running rows of the continuous decoder (MAX_BATCH)
ARRIVALS_PER_STEP = 3  # sources joining per decoder step in the throughput runs


def generator_quality(
    path: Path, dtype: torch.dtype, examples: Sequence[DialogueExample], counts: Any
) -> dict[str, Any]:
    responder = GenerativeResponder.load(path, dtype=dtype)
    decoding = responder.decoding.with_overrides(strategy="greedy", num_return_sequences=1)
    nll, tokens = corpus_nll(
        responder.model, PairSet.encode(examples, responder.tokenizer, responder.inputs)
    )
    replies = decode_all(responder, examples, decoding, desc=f"greedy {dtype}")
    metrics = response_metrics(replies, [e.response for e in examples], counts)
    return {"perplexity": float(np.exp(nll / max(tokens, 1))), **metrics, "replies": replies}


def retriever_quality(
    path: Path, dtype: torch.dtype, examples: Sequence[DialogueExample], agreement: int
) -> dict[str, Any]:
    responder = RetrievalResponder.load(path, dtype=dtype)
    pool = list(dict.fromkeys(e.response for e in examples))
    cand = hits_candidates([e.response for e in examples], pool, 100, 0)
    contexts = [e.context for e in examples]
    out: dict[str, Any] = {}
    for name, weight in (("dense", 0.0), ("served", None)):
        scores = responder.candidate_scores(contexts, pool, cand, weight=weight)
        out[f"{name}_hits@1"] = hits_at_k(torch.from_numpy(scores))["hits@1"]
    with torch.inference_mode():
        out["top1"] = [responder.respond([c])[0][0][0] for c in contexts[:agreement]]
    return out


def same_share(a: Sequence[str], b: Sequence[str]) -> float:
    return float(np.mean([x == y for x, y in zip(a, b, strict=True)]))


def speed_round(
    gen: GenerativeResponder, ret: RetrievalResponder, contexts: Sequence[Sequence[str]]
) -> dict[str, float]:
    """One round for one dtype: batch-1 latencies (ms) and continuous-decoding replies/s."""
    out: dict[str, float] = {}
    with torch.inference_mode():
        gen_times = time_per_query(lambda c: gen.respond([c]), contexts, warmup=2)
        ret_times = time_per_query(lambda c: ret.respond([c]), contexts, warmup=2)
        out["generator_b1_ms"] = 1000 * statistics.median(gen_times)
        out["retriever_b1_ms"] = 1000 * statistics.median(ret_times)
        src = gen.encode_contexts(contexts)
        sources = [[t for t in row.tolist() if t != gen.tokenizer.pad_id] for row in src]
        config = gen.decoding.with_overrides(num_return_sequences=1)
        arrivals = [i // ARRIVALS_PER_STEP for i in range(len(sources))]
        for rows in ROWS:
            started = time.perf_counter()
            decode_continuously(
                gen.model,
                sources,
                [config] * len(sources),
                arrivals=arrivals,
                max_rows=rows,
                prior=gen.prior if config.anti_lm > 0 else None,
            )
            out[f"continuous_{rows}_replies_s"] = len(sources) / (time.perf_counter() - started)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    # the bundles' own settings, from their manifests (no model loaded twice)
    gen_turns = read_manifest(args.generator).model_config["inputs"]["max_context_turns"]
    ret_turns = read_manifest(args.retriever).model_config["inputs"]["max_context_turns"]
    gen_splits = load_splits(args.data, gen_turns)
    ret_test = load_splits(args.data, ret_turns).test
    counts = training_response_token_counts(gen_splits.train)
    quality: dict[str, dict[str, Any]] = {}
    for name, dtype in DTYPES.items():
        print(f"quality: {name}", file=sys.stderr, flush=True)
        quality[name] = {
            "generator": generator_quality(args.generator, dtype, gen_splits.test, counts),
            "retriever": retriever_quality(args.retriever, dtype, ret_test, args.agreement),
        }
    base = quality["float32"]
    for name in DTYPES:
        gen, ret = quality[name]["generator"], quality[name]["retriever"]
        gen["same_replies"] = same_share(gen["replies"], base["generator"]["replies"])
        ret["same_top1"] = same_share(ret["top1"], base["retriever"]["top1"])
    for name in DTYPES:  # the texts themselves stay out of the JSON
        del quality[name]["generator"]["replies"], quality[name]["retriever"]["top1"]

    loaded = {
        name: (
            GenerativeResponder.load(args.generator, dtype=dtype),
            RetrievalResponder.load(args.retriever, dtype=dtype),
        )
        for name, dtype in DTYPES.items()
    }
    contexts = [e.context for e in ret_test[: args.latency_contexts]]
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in DTYPES}
    for r in range(args.rounds):
        order = list(DTYPES) if r % 2 == 0 else list(DTYPES)[::-1]
        for name in order:
            rounds[name].append(speed_round(*loaded[name], contexts))
            print(f"speed round {r} {name}: {rounds[name][-1]}", file=sys.stderr, flush=True)
    speed = {
        name: {key: statistics.median(x[key] for x in rs) for key in rs[0]}
        for name, rs in rounds.items()
    }
    return {"quality": quality, "speed": speed, "rounds": rounds}


def render(result: dict[str, Any]) -> str:
    meta, q, s = result["meta"], result["quality"], result["speed"]
    names = list(DTYPES)

    def row(label: str, values: list[float], fmt: str, ratio: bool = True) -> list[str]:
        r = f"{values[1] / values[0]:.2f}x" if ratio and values[0] else "-"
        return [label, *(format(v, fmt) for v in values), r]

    quality_rows = [
        row("generator perplexity", [q[n]["generator"]["perplexity"] for n in names], ".2f"),
        *(
            row(f"generator greedy {m}", [q[n]["generator"][m] for n in names], ".4f")
            for m in ("dist-1", "dist-2", "bleu-4", "max-ratio")
        ),
        row(
            "generator replies identical to float32",
            [q[n]["generator"]["same_replies"] for n in names],
            ".3f",
            False,
        ),
        row(
            "retriever Hits@1/100 dense", [q[n]["retriever"]["dense_hits@1"] for n in names], ".4f"
        ),
        row(
            "retriever Hits@1/100 served",
            [q[n]["retriever"]["served_hits@1"] for n in names],
            ".4f",
        ),
        row(
            "retriever top-1 identical to float32",
            [q[n]["retriever"]["same_top1"] for n in names],
            ".3f",
            False,
        ),
    ]
    speed_rows = [
        row(
            "generator batch-1 p50 ms (greedy, as served)",
            [s[n]["generator_b1_ms"] for n in names],
            ".2f",
        ),
        row(
            "retriever batch-1 p50 ms (re-ranked, as served)",
            [s[n]["retriever_b1_ms"] for n in names],
            ".2f",
        ),
        *(
            row(
                f"continuous decoding, {rows} rows: replies/s",
                [s[n][f"continuous_{rows}_replies_s"] for n in names],
                ".1f",
            )
            for rows in ROWS
        ),
    ]
    return "\n".join(
        [
            "# bfloat16 vs float32 on this CPU (the DTYPE setting)",
            "",
            f"Command: `{meta['command']}`",
            "",
            f"Machine: {meta['machine']}; load average {meta['load_before']} before, "
            f"{meta['load_after']} after. Generator {meta['generator']}, retriever "
            f"{meta['retriever']}; DailyDialog test split ({meta['data']}). Speed: medians of "
            f"{meta['rounds']} rounds, the dtypes alternating; {meta['latency_contexts']} contexts "
            f"per round. Ratio = bfloat16 / float32.",
            "",
            "## Quality",
            "",
            markdown_table(["measure", *names, "ratio"], quality_rows),
            "",
            "## Speed",
            "",
            markdown_table(["measure", *names, "ratio"], speed_rows),
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--generator", type=Path, default=Path("artifacts/generator-nt"))
    p.add_argument("--retriever", type=Path, default=Path("artifacts/retriever-g2r"))
    p.add_argument("--data", type=Path, default=DAILYDIALOG)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latency-contexts", type=int, default=192)
    p.add_argument("--agreement", type=int, default=1000, help="retrieval top-1 contexts")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load_before = [round(x, 2) for x in os.getloadavg()]
    result = run(args)
    result["meta"] = {
        "command": "OMP_NUM_THREADS=1 python -m benchmarks.cpu_dtype "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": "{machine}, {cpu_count} CPUs, torch {torch}, 1 thread".format(
            **machine_description(1)
        ),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "generator": read_manifest(args.generator).bundle_id,
        "retriever": read_manifest(args.retriever).bundle_id,
        "data": str(args.data),
        "rounds": args.rounds,
        "latency_contexts": args.latency_contexts,
    }
    text = render(result)
    print(text)
    write_report(args.out, result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

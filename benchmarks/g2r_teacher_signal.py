"""Does the generator know what the retriever does not? Its eq. 6 score beside the served ranking.

G2R (Kim et al. 2021) distils a generator into a retriever on the premise that the generator
ranks replies better. Three measurements on the DailyDialog test split (K = 100: the gold and 99
random test responses, seed 0, as every retrieval report):

1. *The teacher alone*: Hits@1/100 when the generator ranks the 100 candidates by eq. 3
   (G_LL = log P(r|c) / |r|) and by eq. 6 (G_MI = (log P(r|c) - log P(r)) / |r|), on the first
   ``--alone`` test contexts (100 teacher scores each), beside the retriever on the same contexts.
2. *The teacher on top of the retriever*: the served (re-ranked) retriever's ``--top`` best
   candidates re-scored as ``served + beta * G_MI`` (the rest keep their served order below them),
   ``beta`` chosen on ``--val`` validation contexts; test Hits@1/100 at that beta on the whole
   split, with the paired wins and losses against the served ranking.
3. *What it costs at batch 1*: the served retrieval (top ``--top``), the generator's score of
   those candidates (one encoder and one teacher-forced decoder pass in float32; log P(r) of each
   response read from a table computed once, as a bundle would store it), and greedy
   generation, interleaved over 200 test contexts.

    OMP_NUM_THREADS=2 python -m benchmarks.g2r_teacher_signal \\
        --retriever artifacts-base/retriever-biencoder --generator artifacts-base/generator-standard \\
        --out reports/g2r_teacher_signal_base
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import write_report
from benchmarks.latency import latency_summary, machine_description, set_threads, time_interleaved
from benchmarks.retrieval_stages import seeded_indices
from models.decoding import sequence_log_likelihood
from models.device import native_bf16
from models.retriever import RetrievalResponder
from training.config import DAILYDIALOG
from training.core.data import DialogueExample, load_splits, sample_examples
from training.methods.g2r.losses import hits_at_k, hits_candidates
from training.methods.g2r.teachers import BundleTeacher, teacher_scores

BETAS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


class MIScorer:
    """Eq. 3 and eq. 6 for (context, response) pairs, log P(r) (the content-free contexts'
    average, as ``BundleTeacher.score``) computed once per distinct response."""

    def __init__(self, teacher: BundleTeacher, batch_size: int = 256, *, bf16: bool = True) -> None:
        self.teacher = teacher
        self.batch_size = batch_size
        self.bf16 = bf16  # bf16 matmuls where native, as the teacher scores in training
        self.dummies: dict[str, list[float]] = {}

    def _autocast(self) -> Any:
        device = self.teacher.responder.device
        on = self.bf16 and native_bf16(device)
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)

    @torch.inference_mode()
    def _prime(self, responses: Sequence[str]) -> None:
        r, tok = self.teacher.responder, self.teacher.responder.tokenizer
        todo = [t for t in dict.fromkeys(responses) if t not in self.dummies]
        with self._autocast():
            for s in range(0, len(todo), self.batch_size):
                texts = todo[s : s + self.batch_size]
                ids = tok.encode_responses(texts, r.inputs.max_target_len)
                tgt_in, tgt_out = (t.to(r.device) for t in tok.decoder_io(ids))
                d = torch.stack(
                    [
                        sequence_log_likelihood(
                            r.model, tok.pad([src] * len(texts), r.device), tgt_in, tgt_out
                        )[0]
                        for src in self.teacher._dummy_sources
                    ]
                )
                self.dummies.update(zip(texts, d.T.tolist(), strict=True))

    @torch.inference_mode()
    def score(
        self, contexts: Sequence[Sequence[str]], responses: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(G_LL, G_MI) per pair."""
        self._prime(responses)
        r, tok = self.teacher.responder, self.teacher.responder.tokenizer
        ll_out: list[float] = []
        mi_out: list[float] = []
        with self._autocast():
            for s in range(0, len(responses), self.batch_size):
                rows = range(s, min(s + self.batch_size, len(responses)))
                src = r.encode_contexts([contexts[i] for i in rows])
                ids = tok.encode_responses([responses[i] for i in rows], r.inputs.max_target_len)
                tgt_in, tgt_out = (t.to(r.device) for t in tok.decoder_io(ids))
                ll, n = sequence_log_likelihood(r.model, src, tgt_in, tgt_out)
                dummies = torch.tensor([self.dummies[responses[i]] for i in rows]).T
                g_ll, g_mi = teacher_scores(ll, n, dummies)
                ll_out += g_ll.tolist()
                mi_out += g_mi.tolist()
        return np.asarray(ll_out), np.asarray(mi_out)


def served_scores(
    responder: RetrievalResponder, examples: Sequence[DialogueExample]
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The served (re-ranked) scores (N, 100) of each context's candidates, the pool and the
    candidates (column 0 the gold)."""
    pool = list(dict.fromkeys(e.response for e in examples))
    cand = hits_candidates([e.response for e in examples], pool, 100, 0)
    scores = responder.candidate_scores([e.context for e in examples], pool, cand)
    return np.asarray(scores, dtype=np.float64), pool, cand


def top_mi(
    scorer: MIScorer,
    examples: Sequence[DialogueExample],
    served: np.ndarray,
    pool: Sequence[str],
    cand: np.ndarray,
    top: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The served top-``top`` columns of each row and the teacher's G_MI of those candidates."""
    cols = np.argsort(-served, axis=1, kind="stable")[:, :top]
    contexts = [examples[i].context for i in range(len(examples)) for _ in range(top)]
    responses = [pool[cand[i, j]] for i in range(len(examples)) for j in cols[i]]
    _, mi = scorer.score(contexts, responses)
    return cols, mi.reshape(len(examples), top)


def reranked_gold_first(
    served: np.ndarray, cols: np.ndarray, mi: np.ndarray, beta: float
) -> np.ndarray:
    """Per row: is the gold (column 0) first once the top columns are re-scored by
    served + beta * G_MI? (Only the top columns can be first: they hold the served maximum and
    re-scoring reorders them among themselves.)"""
    mixed = np.take_along_axis(served, cols, axis=1) + beta * mi
    return cols[np.arange(len(cols)), mixed.argmax(axis=1)] == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--retriever", type=Path, required=True)
    ap.add_argument(
        "--generator", type=Path, required=True, help="the teacher (a generator bundle)"
    )
    ap.add_argument("--data", type=Path, default=DAILYDIALOG)
    ap.add_argument("--top", type=int, default=3, help="served candidates the teacher re-scores")
    ap.add_argument("--val", type=int, default=2000, help="validation contexts that choose beta")
    ap.add_argument(
        "--alone", type=int, default=300, help="test contexts ranked by the teacher alone"
    )
    ap.add_argument("--timed", type=int, default=200, help="test contexts timed at batch 1")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    machine = machine_description(args.threads)
    responder = RetrievalResponder.load(args.retriever, device="cpu")
    teacher = BundleTeacher.load(args.generator)
    scorer = MIScorer(teacher)
    splits = load_splits(args.data, max_context_turns=responder.inputs.max_context_turns)
    test = list(splits.test)
    val = sample_examples(splits.validation, args.val, seed=0)

    started = time.perf_counter()
    v_served, v_pool, v_cand = served_scores(responder, val)
    v_cols, v_mi = top_mi(scorer, val, v_served, v_pool, v_cand, args.top)
    by_beta = {b: float(reranked_gold_first(v_served, v_cols, v_mi, b).mean()) for b in BETAS}
    beta = max(BETAS, key=lambda b: (by_beta[b], -b))
    t_served, t_pool, t_cand = served_scores(responder, test)
    t_cols, t_mi = top_mi(scorer, test, t_served, t_pool, t_cand, args.top)
    base = reranked_gold_first(t_served, t_cols, t_mi, 0.0)
    mixed = reranked_gold_first(t_served, t_cols, t_mi, beta)
    n = len(test)
    wins, losses = int((mixed & ~base).sum()), int((base & ~mixed).sum())
    rerank = {
        "top": args.top,
        "val_contexts": len(val),
        "val_hits@1_by_beta": {str(b): v for b, v in by_beta.items()},
        "beta": beta,
        "test_contexts": n,
        "test_hits@1_served": float(base.mean()),
        "test_hits@1_reranked": float(mixed.mean()),
        "test_hits@1_by_beta": {
            str(b): float(reranked_gold_first(t_served, t_cols, t_mi, b).mean()) for b in BETAS
        },
        "se": math.sqrt(mixed.mean() * (1 - mixed.mean()) / n),
        "wins": wins,
        "losses": losses,
        # sign test on the discordant pairs, normal approximation
        "sign_z": (wins - losses) / math.sqrt(wins + losses) if wins + losses else 0.0,
    }

    k = min(args.alone, n)
    alone_rows = list(range(k))
    contexts = [test[i].context for i in alone_rows for _ in range(t_cand.shape[1])]
    responses = [t_pool[j] for i in alone_rows for j in t_cand[i]]
    ll, mi = scorer.score(contexts, responses)
    dense, _ = responder.candidate_score_parts(
        [test[i].context for i in alone_rows], t_pool, t_cand[:k], lexical=False
    )
    alone = {
        "contexts": k,
        "teacher_ll_hits@1": hits_at_k(torch.from_numpy(ll.reshape(k, -1)))["hits@1"],
        "teacher_mi_hits@1": hits_at_k(torch.from_numpy(mi.reshape(k, -1)))["hits@1"],
        "retriever_dense_hits@1": hits_at_k(torch.from_numpy(dense))["hits@1"],
        "retriever_served_hits@1": hits_at_k(torch.from_numpy(t_served[:k]))["hits@1"],
    }
    quality_s = time.perf_counter() - started

    gen = teacher.responder
    picks = seeded_indices(n, args.timed, 0)
    queries = [test[i].context for i in picks]
    table = {
        i: [r for r, _ in responder.respond([test[i].context], top_k=args.top)[0]] for i in picks
    }
    # at batch 1 in float32, as the generator serves on a CPU (autocast would cast every weight
    # to bf16 on every call); log P(r) read from a table computed once, as a bundle would hold it
    serving_scorer = MIScorer(teacher, bf16=False)
    serving_scorer._prime([r for rs in table.values() for r in rs])
    by_context = dict(zip(range(len(picks)), picks, strict=True))

    def rescore(q_index: int) -> None:
        i = by_context[q_index]
        serving_scorer.score([test[i].context] * len(table[i]), table[i])

    rows = {
        "retrieval as served (top-k)": lambda q: responder.respond([queries[q]], top_k=args.top),
        "teacher score of the top-k (eq. 6)": rescore,
        "greedy generation": lambda q: gen.respond([queries[q]]),
    }
    timed = time_interleaved(rows, list(range(len(queries))), 3)
    latency = {name: latency_summary(s) for name, s in timed.items()}
    gen_mean = latency["greedy generation"]["mean_ms"]
    results = {
        "command": "python -m benchmarks.g2r_teacher_signal " + shlex.join(argv or sys.argv[1:]),
        "machine": machine,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "retriever": responder.bundle_id,
        "teacher": teacher.name,
        "quality_wall_s": round(quality_s, 1),
        "alone": alone,
        "rerank": rerank,
        "latency": latency,
        "x_faster_than_generation": {name: gen_mean / v["mean_ms"] for name, v in latency.items()},
    }
    write_report(args.out, results, markdown(results))
    print(markdown(results))
    return 0


def markdown(r: dict[str, Any]) -> str:
    a, rr, lat = r["alone"], r["rerank"], r["latency"]
    m = r["machine"]
    lines = [
        "# The generator's eq. 6 score beside the served retriever",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {m['machine']}, {m['cpu_count']} CPU cores, torch {m['torch']} with "
        f"{m['threads']} thread(s); load average at start {m['load_average_at_start']}, at end "
        f"{r['load_average_at_end']}. Retriever `{r['retriever']}`, teacher `{r['teacher']}`. "
        "DailyDialog test, K = 100 (the gold and 99 random test responses, seed 0).",
        "",
        f"## The teacher alone (first {a['contexts']} test contexts)",
        "",
        "| ranking | Hits@1/100 |",
        "|---|---:|",
        f"| teacher, eq. 3 (LL / length) | {a['teacher_ll_hits@1']:.4f} |",
        f"| teacher, eq. 6 (MI / length) | {a['teacher_mi_hits@1']:.4f} |",
        f"| retriever, dense | {a['retriever_dense_hits@1']:.4f} |",
        f"| retriever, as served (TF-IDF re-ranked) | {a['retriever_served_hits@1']:.4f} |",
        "",
        f"## The teacher re-scoring the served top {rr['top']} (whole test split)",
        "",
        f"beta chosen on {rr['val_contexts']} validation contexts: **{rr['beta']}**.",
        "",
        "| beta | validation Hits@1/100 | test Hits@1/100 |",
        "|---:|---:|---:|",
    ]
    for b, v in rr["val_hits@1_by_beta"].items():
        lines.append(f"| {b} | {v:.4f} | {rr['test_hits@1_by_beta'][b]:.4f} |")
    lines += [
        "",
        f"Test, {rr['test_contexts']} contexts: served {rr['test_hits@1_served']:.4f}, re-scored "
        f"{rr['test_hits@1_reranked']:.4f} (SE {rr['se']:.4f}), "
        f"{rr['test_hits@1_reranked'] / rr['test_hits@1_served']:.3f}x; contexts the re-scoring "
        f"turns right {rr['wins']}, turns wrong {rr['losses']} (sign test z {rr['sign_z']:.2f}).",
        "",
        "## Batch-1 cost (200 test contexts, 3 passes, interleaved)",
        "",
        "| row | mean ms | p50 ms | p90 ms | x faster than greedy generation (mean) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in lat.items():
        lines.append(
            f"| {name} | {v['mean_ms']:.3f} | {v['p50_ms']:.3f} | {v['p90_ms']:.3f} | "
            f"{r['x_faster_than_generation'][name]:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

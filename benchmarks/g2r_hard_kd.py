"""Can a bi-encoder learn what the generator adds to its ranking? Model-level G2R over its own candidates.

``benchmarks/g2r_teacher_signal.py`` measures that the generator's eq. 6 score, added to the
served ranking of a trained bi-encoder, ranks the gold first more often. This benchmark asks
whether distillation carries that into the bi-encoder, so that serving does not pay for the
generator. From a trained retriever bundle:

1. For ``--contexts`` training contexts (and ``--val`` validation ones), candidates are the gold
   and the bi-encoder's top ``--k`` of 99 random responses of its set (``--candidates random``:
   the test protocol's difficulty, where the measured signal lives), or its top ``--k`` of the
   whole index (``--candidates index``: the hardest negatives); the generator scores each pair
   with eq. 6 (G_MI).
2. The teacher's distribution over a context's candidates is softmax(s_0 + beta * G_MI), s_0 the
   starting bi-encoder's score: the hybrid ranking, beta chosen where it ranks the gold first
   most often on the validation candidates.
3. Two continuations of the bundle's model for ``--steps`` updates on the same batches and the
   same learning rates (Noam continued past the bundle's steps): *control*, eq. 2 as the
   bundle was trained; *kd*, eq. 2 plus ``--kd-weight`` x the eq. 4 cross-entropy of the
   student's softmax over 32 contexts' candidates against the teacher's distribution (G2R's
   L_KD, over these candidates instead of the teacher's own sampled replies).
4. Test Hits@1/100, dense and as served (the bundle's TF-IDF re-ranker), for the bundle, the
   control and the kd model (whole test split; K = 100, seed 0, as every retrieval report).

``--kd-contexts final`` distils over contexts the bi-encoder never trained on instead: the last
turns of each training dialogue (its final utterance is a gold response in training but never
part of a context), with no gold among the candidates, only the bi-encoder's top ``--k``. On
training contexts the student ranks its memorised golds first more often than the hybrid teacher
(reports/g2r_hard_kd_base.md), which is where that teacher's ranking un-teaches; on unseen
contexts it does not know the answer, the case where consulting the generator was measured to help.

    OMP_NUM_THREADS=2 python -m benchmarks.g2r_hard_kd --retriever artifacts-base/retriever-biencoder \\
        --teacher artifacts-base/generator-standard --preset base --out reports/g2r_hard_kd_base
"""

from __future__ import annotations

import argparse
import copy
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
from benchmarks.g2r_teacher_signal import MIScorer
from benchmarks.latency import machine_description, set_threads
from models.biencoder import BiEncoder
from models.lexical import mix_scores
from models.retriever import RetrievalResponder
from models.safety import load_blocklist
from training.config import DAILYDIALOG, get_retriever_preset
from training.core.data import (
    DialogueExample,
    dailydialog_dialogues,
    load_splits,
    sample_examples,
)
from training.core.generator import bucketed_batches
from training.methods.g2r.batches import RetrievalTrainSet
from training.methods.g2r.data import ResponseFilter, build_retrieval_data
from training.methods.g2r.job import DEFAULT_BLOCKLIST
from training.methods.g2r.losses import (
    G2RDistillationLoss,
    hits_candidates,
)
from training.methods.g2r.teachers import BundleTeacher

BETAS = (0.0, 5.0, 10.0, 20.0, 30.0, 40.0, 60.0, 80.0)
KD_CONTEXTS = 32  # contexts per update whose candidates enter L_KD


def candidate_sets(
    responder: RetrievalResponder,
    examples: Sequence[DialogueExample],
    k: int,
    mode: str,
    seed: int,
    gold: bool = True,
) -> list[list[str]]:
    """Per example: the gold (unless not ``gold``), then the bi-encoder's top ``k`` (of 99 random
    responses of its set, or of the whole index), no text twice."""
    rng = np.random.default_rng(seed)
    vectors = responder.index.vectors() if mode == "random" else None
    out: list[list[str]] = []
    texts = responder.responses
    with torch.inference_mode(), responder.untraced():
        for s in range(0, len(examples), 256):
            chunk = examples[s : s + 256]
            emb = responder.embed(responder.encode_contexts([e.context for e in chunk]))
            if vectors is None:
                _, hits = responder.index.search(emb, k + 4)
                rows = [[i for i in row if i >= 0] for row in hits.tolist()]
            else:
                rows = []
                for q in emb:
                    ids = rng.choice(len(texts), min(99 + 8, len(texts)), replace=False).tolist()
                    top = np.argsort(-(vectors[ids] @ q), kind="stable")
                    rows.append([ids[j] for j in top])
            for e, row in zip(chunk, rows, strict=True):
                cands = [e.response] if gold else []
                for i in row:
                    if texts[i] not in cands:
                        cands.append(texts[i])
                    if len(cands) == k + (1 if gold else 0):
                        break
                out.append(cands)
    return out


def final_contexts(
    data_dir: Path, turns: int, exclude: Sequence[DialogueExample]
) -> list[DialogueExample]:
    """The last ``turns`` turns of each training dialogue as a context with no response: text
    the bi-encoder read only as replies, never as a context. Distinct, and none that is the
    context of an ``exclude`` example (give every split's: a dialogue's ending can recur as
    the middle of another, or as a validation or test context)."""
    held = {tuple(e.context) for e in exclude}
    seen: set[tuple[str, ...]] = set()
    out = []
    for dialogue in dailydialog_dialogues(data_dir, "train"):
        context = tuple(dialogue[-turns:])
        if len(dialogue) >= 2 and context not in held and context not in seen:
            seen.add(context)
            out.append(DialogueExample(context=context, response=""))
    return out


class CandidateSet:
    """Tokenised contexts and candidate lists, with the teacher's G_MI of each pair."""

    def __init__(
        self,
        responder: RetrievalResponder,
        examples: Sequence[DialogueExample],
        cands: Sequence[Sequence[str]],
        mi: np.ndarray,
    ) -> None:
        tok, inputs = responder.tokenizer, responder.inputs
        keep = [i for i, c in enumerate(cands) if len(c) == len(cands[0])]
        self.contexts = tok.encode_contexts(
            [list(examples[i].context)[-inputs.max_context_turns :] for i in keep],
            inputs.max_source_len,
        )
        self.responses = [
            [r or [tok.unk_id] for r in tok.encode_responses(cands[i], inputs.max_target_len)]
            for i in keep
        ]
        self.mi = torch.from_numpy(mi[keep]).float()
        self.tokenizer = tok

    def __len__(self) -> int:
        return len(self.contexts)

    def student_scores(self, model: BiEncoder, rows: Sequence[int]) -> torch.Tensor:
        """(len(rows), k + 1) dot-product scores of each context's candidates."""
        tok = self.tokenizer
        c = model.encode_contexts(tok.pad([self.contexts[i] for i in rows], "cpu")).float()
        flat = [r for i in rows for r in self.responses[i]]
        r = model.encode_responses(tok.pad(flat, "cpu")).float().view(len(rows), -1, c.size(1))
        return (c[:, None, :] * r).sum(-1)

    @torch.inference_mode()
    def all_scores(self, model: BiEncoder) -> torch.Tensor:
        was = model.training
        model.eval()
        out = torch.cat(
            [
                self.student_scores(model, range(s, min(s + 256, len(self))))
                for s in range(0, len(self), 256)
            ]
        )
        model.train(was)
        return out


def teacher_distribution(
    s0: torch.Tensor, mi: torch.Tensor, beta: float, target: str
) -> torch.Tensor:
    """The teacher's distribution over each row's candidates (column 0 the gold).

    ``hybrid``: softmax(s_0 + beta * G_MI). ``negatives``: the gold keeps the starting student's
    probability softmax(s_0)[0] and the rest of the mass goes to the other candidates by
    softmax(s_0 + beta * G_MI) over them alone, so the teacher reorders the negatives without
    moving the gold (on training contexts the student ranks its memorised gold first more often
    than the hybrid teacher does)."""
    hybrid = (s0 + beta * mi).softmax(dim=1)
    if target == "hybrid":
        return hybrid
    gold = s0.softmax(dim=1)[:, :1]
    rest = (s0 + beta * mi)[:, 1:].softmax(dim=1)
    return torch.cat([gold, (1 - gold) * rest], dim=1)


def continue_training(
    model: BiEncoder,
    trainset: RetrievalTrainSet,
    preset: Any,
    steps: int,
    start_step: int,
    *,
    kd: CandidateSet | None,
    teacher_probs: torch.Tensor | None,
    kd_weight: float,
    seed: int,
) -> list[dict[str, float]]:
    """``steps`` updates of eq. 2 (plus ``kd_weight`` x L_KD over ``kd``'s candidates)."""
    cfg = preset.train
    loss_fn = G2RDistillationLoss(1.0, 1.0, symmetric=preset.symmetric_loss)
    opt = torch.optim.AdamW(
        model.parameters(), lr=0.0, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0
    )
    lengths = trainset.context_lengths()
    batches = [
        b
        for epoch in range(1, 100)
        for b in bucketed_batches(lengths, cfg.batch_size, seed=seed, epoch=epoch)
    ][:steps]
    rng = np.random.default_rng(seed + 1)
    logs: list[dict[str, float]] = []
    model.train()
    for step, indices in enumerate(batches, start=1):
        s = start_step + step  # eq. 17 (Noam) continued from where the bundle's run ended
        lr = cfg.lr_scale * cfg.lr_dim**-0.5 * min(s**-0.5, s * cfg.warmup_steps**-1.5)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = trainset.collate(indices)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            c, r = model(batch.context_ids, batch.response_ids)
        loss, log = loss_fn(
            BiEncoder.score(c.float(), r.float()), batch.positive, batch.negative, batch.teacher
        )
        if kd is not None and teacher_probs is not None:
            rows = rng.choice(len(kd), KD_CONTEXTS, replace=False).tolist()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                student = kd.student_scores(model, rows)
            l_kd = -(teacher_probs[rows] * student.float().log_softmax(dim=1)).sum(dim=1).mean()
            loss = loss + kd_weight * l_kd
            log["kd"] = l_kd.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)  # as the Trainer
        opt.step()
        if step % 100 == 0 or step == len(batches):
            logs.append({"step": step, **{k: round(v, 4) for k, v in log.items()}})
            print(logs[-1], flush=True)
    model.eval()
    return logs


def test_hits(
    responder: RetrievalResponder, test: Sequence[DialogueExample]
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Dense and served Hits@1/100 of ``responder``'s current model on the test split (the
    protocol of every retrieval report), and per context whether the gold came first."""
    pool = list(dict.fromkeys(e.response for e in test))
    cand = hits_candidates([e.response for e in test], pool, 100, 0)
    with responder.untraced():
        dense, lexical = responder.candidate_score_parts([e.context for e in test], pool, cand)
    served = dense
    if lexical is not None and responder.reranker is not None:
        served = mix_scores(dense, lexical, responder.reranker.weight)
    flags = {
        name: (np.asarray(x)[:, 1:] >= np.asarray(x)[:, :1]).sum(axis=1) == 0
        for name, x in (("dense", dense), ("served", served))
    }
    return {f"{k}_hits@1": float(v.mean()) for k, v in flags.items()}, flags


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """``b`` against ``a`` on the same contexts: the contexts only ``b`` gets right (wins), only
    ``a`` (losses), and McNemar's z = (wins - losses) / sqrt(wins + losses)."""
    wins, losses = int((b & ~a).sum()), int((a & ~b).sum())
    z = (wins - losses) / math.sqrt(wins + losses) if wins + losses else 0.0
    return {"wins": wins, "losses": losses, "z": z}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--retriever", type=Path, required=True)
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument(
        "--preset", default="base", help="the retriever preset the bundle was trained with"
    )
    ap.add_argument("--data", type=Path, default=DAILYDIALOG)
    ap.add_argument("--contexts", type=int, default=12000)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--candidates", choices=("random", "index"), default="random")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--kd-weight", type=float, default=1.0)
    ap.add_argument(
        "--kd-target",
        choices=("hybrid", "negatives"),
        default="hybrid",
        help="hybrid: the teacher's whole distribution; negatives: the gold keeps the starting "
        "student's probability and the teacher orders only the rest",
    )
    ap.add_argument(
        "--kd-contexts",
        choices=("train", "final"),
        default="train",
        help="train: training contexts with their gold among the candidates; final: each "
        "training dialogue's last turns (never a training context), candidates without a gold",
    )
    ap.add_argument(
        "--beta",
        type=float,
        help="the teacher's beta instead of the validation choice (a sensitivity check: the "
        "validation criterion is flat across much of the grid)",
    )
    ap.add_argument("--seed", type=int, default=0, help="the continuation's batches and KD draws")
    ap.add_argument(
        "--sample-seed", type=int, default=0, help="which training and validation contexts"
    )
    ap.add_argument(
        "--arms",
        default="control,kd",
        help="control, kd (the teacher at the validation beta), self (the same L_KD with beta 0:"
        " distillation from the starting student alone, isolating the teacher's part)",
    )
    ap.add_argument(
        "--scores", type=Path, help="a file keeping the scored candidates (reused when it matches)"
    )
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.kd_contexts == "final" and args.kd_target != "hybrid":
        ap.error("--kd-contexts final has no gold to keep: --kd-target hybrid")
    set_threads(args.threads)
    machine = machine_description(args.threads)
    started = time.perf_counter()
    preset = get_retriever_preset(args.preset)
    responder = RetrievalResponder.load(args.retriever, device="cpu", int8=False)
    assert responder.manifest is not None
    start_step = int(responder.manifest.training.get("steps") or preset.train.max_steps)
    splits = load_splits(args.data, max_context_turns=responder.inputs.max_context_turns)
    seed0 = args.sample_seed
    val = sample_examples(splits.validation, args.val, seed=seed0 + 1)
    if args.kd_contexts == "final":
        unseen = final_contexts(
            args.data,
            responder.inputs.max_context_turns,
            [*splits.train, *splits.validation, *splits.test],
        )
        train = sample_examples(unseen, args.contexts, seed=seed0)
    else:
        train = sample_examples(splits.train, args.contexts, seed=seed0)
    scorer = MIScorer(BundleTeacher.load(args.teacher))
    key = {
        "retriever": responder.bundle_id,
        "teacher": scorer.teacher.name,
        "candidates": args.candidates,
        "k": args.k,
        "contexts": args.contexts,
        "val": args.val,
        "sample_seed": seed0,
        **({"kd_contexts": args.kd_contexts} if args.kd_contexts != "train" else {}),
    }
    cached = (
        torch.load(args.scores, weights_only=False)
        if args.scores and args.scores.is_file()
        else None
    )
    if cached is None or cached["key"] != key:
        cached = {"key": key, "sets": {}}
        for name, examples, seed in (("val", val, seed0 + 1), ("train", train, seed0)):
            with_gold = name == "val" or args.kd_contexts == "train"
            cands = candidate_sets(
                responder, examples, args.k, args.candidates, seed, gold=with_gold
            )
            contexts = [e.context for e, c in zip(examples, cands, strict=True) for _ in c]
            _, mi = scorer.score(contexts, [r for c in cands for r in c])
            width = max(len(c) for c in cands)
            padded = np.full((len(cands), width), np.nan)
            at = 0
            for i, c in enumerate(cands):
                padded[i, : len(c)] = mi[at : at + len(c)]
                at += len(c)
            cached["sets"][name] = (cands, padded)
        cached["scoring_s"] = round(time.perf_counter() - started, 1)
        if args.scores:
            torch.save(cached, args.scores)
    sets = {
        name: CandidateSet(responder, examples, *cached["sets"][name])
        for name, examples in (("val", val), ("train", train))
    }
    scoring_s = cached["scoring_s"]

    start = copy.deepcopy(responder.model.state_dict())
    s0_val = sets["val"].all_scores(responder.model)
    gold_first = {
        b: float(((s0_val + b * sets["val"].mi).argmax(dim=1) == 0).float().mean()) for b in BETAS
    }
    chosen = max(BETAS, key=lambda b: (gold_first[b], -b))
    beta = chosen if args.beta is None else args.beta
    s0_train = sets["train"].all_scores(responder.model)
    teacher_probs = teacher_distribution(s0_train, sets["train"].mi, beta, args.kd_target)
    # the same L_KD without the generator: the teacher is the starting student alone (beta 0)
    self_probs = teacher_distribution(s0_train, sets["train"].mi, 0.0, args.kd_target)

    test = list(splits.test)
    rows: dict[str, Any] = {}
    flags: dict[str, dict[str, np.ndarray]] = {}
    rows["bundle"], flags["bundle"] = test_hits(responder, test)
    blocked = tuple(load_blocklist(DEFAULT_BLOCKLIST))
    data = build_retrieval_data(
        splits.train,
        None,
        ResponseFilter(preset.response_min_tokens, preset.response_max_tokens, blocked),
    )
    trainset = RetrievalTrainSet(
        data,
        responder.tokenizer,
        responder.inputs,
        positives_per_context=preset.positives_per_context,
        random_negatives=preset.random_negatives,
        seed=args.seed,
    )
    logs = {}
    arms = args.arms.split(",")
    targets = {"control": None, "kd": teacher_probs, "self": self_probs}
    for arm in arms:
        responder.model.load_state_dict(start)
        t0 = time.perf_counter()
        logs[arm] = continue_training(
            responder.model,
            trainset,
            preset,
            args.steps,
            start_step,
            kd=sets["train"] if targets[arm] is not None else None,
            teacher_probs=targets[arm],
            kd_weight=args.kd_weight,
            seed=args.seed,
        )
        hits, flags[arm] = test_hits(responder, test)
        rows[arm] = {**hits, "train_s": round(time.perf_counter() - t0, 1)}
    against = "control" if "control" in arms else "bundle"
    pairs = {
        arm: {part: paired(flags[against][part], flags[arm][part]) for part in ("dense", "served")}
        for arm in rows
        if arm != against
    }
    n = len(test)
    results = {
        "command": "python -m benchmarks.g2r_hard_kd " + shlex.join(argv or sys.argv[1:]),
        "machine": machine,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "retriever": responder.bundle_id,
        "teacher": scorer.teacher.name,
        "candidates": args.candidates,
        "k": args.k,
        "contexts": len(sets["train"]),
        "val_contexts": len(sets["val"]),
        "scoring_s": round(scoring_s, 1),
        "val_gold_first_by_beta": {str(b): v for b, v in gold_first.items()},
        "beta": beta,
        "beta_chosen_on_validation": chosen,
        "kd_contexts": args.kd_contexts,
        # with a gold in column 0: how often student and teacher rank it first
        "train_gold_first": {
            "student": float((s0_train.argmax(1) == 0).float().mean()),
            "teacher": float((teacher_probs.argmax(1) == 0).float().mean()),
        }
        if args.kd_contexts == "train"
        else None,
        # how often the teacher's first choice is the starting student's
        "train_teacher_agrees": float(
            (teacher_probs.argmax(1) == s0_train.argmax(1)).float().mean()
        ),
        "steps": args.steps,
        "kd_weight": args.kd_weight,
        "kd_target": args.kd_target,
        "test_contexts": n,
        "seed": args.seed,
        "sample_seed": seed0,
        "rows": rows,
        "against": against,
        "paired": pairs,
        "se": {k: math.sqrt(v * (1 - v) / n) for k, v in rows[against].items() if "hits" in k},
        "logs": logs,
    }
    write_report(args.out, results, markdown(results))
    print(markdown(results))
    return 0


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    pool = "99 random responses of its set" if r["candidates"] == "random" else "its whole index"
    if r.get("kd_contexts", "train") == "train":
        sets = f", for {r['contexts']} training and {r['val_contexts']} validation contexts,"
    else:
        sets = (
            f" for {r['val_contexts']} validation contexts; for the {r['contexts']} distillation "
            "contexts (the last turns of training dialogues, never a training context) the top "
            "ones alone, no gold;"
        )
    chosen = r.get("beta_chosen_on_validation", r["beta"])
    beta = (
        f"chosen on validation: **{r['beta']}**"
        if r["beta"] == chosen
        else f"**{r['beta']}** as given (validation would choose {chosen})"
    )
    lines = [
        "# Model-level G2R over the bi-encoder's own candidates, against the same continuation without it",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {m['machine']}, {m['cpu_count']} CPU cores, torch {m['torch']} with "
        f"{m['threads']} thread(s); load average at start {m['load_average_at_start']}, at end "
        f"{r['load_average_at_end']}. Retriever `{r['retriever']}`, teacher `{r['teacher']}`.",
        "",
        f"Candidates: the gold and the bi-encoder's top {r['k']} of {pool}{sets} scored by the "
        f"teacher (eq. 6) in {r['scoring_s']} s. beta (teacher = softmax(s_0 + beta G_MI)) "
        f"{beta}; the gold first among the candidates:",
        "",
        "| beta | validation |",
        "|---:|---:|",
    ]
    lines += [f"| {b} | {v:.4f} |" for b, v in r["val_gold_first_by_beta"].items()]
    tg = r["train_gold_first"]
    if tg is not None:
        lines += [
            "",
            f"On the training candidates the gold is first for the student in {tg['student']:.3f}"
            f" of contexts and for the teacher in {tg['teacher']:.3f}.",
        ]
    if "train_teacher_agrees" in r:
        lines += [
            "",
            "The teacher's first choice is the starting student's in "
            f"{r['train_teacher_agrees']:.3f} of the distillation contexts.",
        ]
    lines += [
        "",
        f"## Test Hits@1/100 ({r['test_contexts']} contexts; {r['steps']} more updates, "
        f"L_KD weight {r['kd_weight']}, target {r.get('kd_target', 'hybrid')})",
        "",
        "| model | dense | as served | training s |",
        "|---|---:|---:|---:|",
    ]
    for name, row in r["rows"].items():
        lines.append(
            f"| {name} | {row['dense_hits@1']:.4f} | {row['served_hits@1']:.4f} | "
            f"{row.get('train_s', '')} |"
        )
    base = r.get("against", "control")
    lines += [
        "",
        f"Against {base}, the same test contexts (McNemar: contexts only this model gets right / "
        f"only {base}; binomial SE of one model's served Hits@1 {r['se']['served_hits@1']:.4f}):",
        "",
        "| model | dense diff | wins / losses | z | served diff | wins / losses | z |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in r.get("paired", {}).items():
        row, ref = r["rows"][name], r["rows"][base]
        cells = []
        for part in ("dense", "served"):
            diff = row[f"{part}_hits@1"] - ref[f"{part}_hits@1"]
            cells += [
                f"{diff:+.4f}",
                f"{p[part]['wins']} / {p[part]['losses']}",
                f"{p[part]['z']:.2f}",
            ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

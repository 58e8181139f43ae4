"""Negative training for the malicious-response problem (He & Glass, ACL 2020, Algorithm 1).

For each malicious target y, gibbs-enum (:mod:`training.methods.malicious.attack`) finds a trigger x; while the pair
still *hits* under the chosen criterion c(x, y), the model takes a negative update on it and a
positive MLE update on a training pair:

    theta <- theta - lr * grad log P(y | x)                     (negative update)
    theta <- theta + lr * lambda_POS * grad log P(y_pos | x_pos)  (positive update)

i.e. one step on L = L_NEG + lambda_POS L_MLE (eq. 4). *Frequent word avoiding* (FWA, section 4.2):
no negative gradient reaches the words {<EOS>, you, i, me, are, to, do}, so "i hate you <EOS>"
only pushes down "hate". Each iteration re-searches every target's trigger, as in the paper.

Batched for speed: targets go through in mini-batches (the paper's 100); a batch's hits take
their negative updates together (mean over the hit pairs) with one positive batch per update,
until no pair of the batch hits or ``max_updates`` is reached. Later iterations start each search
from the target's previous trigger plus fresh restarts (``warm_start``). The run checkpoints after
every target batch (weights, optimizer, RNG, triggers, log) and resumes from the last one.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from models.bundle import Manifest
from models.generator import GenerativeResponder
from models.seq2seq import Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.core.checkpoint import (
    atomic_torch_save,
    load_checkpoint_file,
    rng_state,
    set_rng_state,
)
from training.core.data import training_response_token_counts
from training.core.generator import PairSet
from training.core.losses import frequent_word_weights, smoothed_nll
from training.core.run import RunSpec
from training.methods.malicious.attack import (
    HitThresholds,
    SearchResult,
    TargetBatch,
    gibbs_enum,
    judge,
    score_triggers,
    target_log_probs,
)
from training.methods.malicious.config import FWA_WORDS, MaliciousNTConfig
from training.methods.malicious.experiment import average_log_likelihood, load_attack_context
from training.methods.malicious.lm import ResponseLM

__all__ = ["fwa_ids", "fwa_weights", "negative_loss", "train_malicious_nt"]

logger = logging.getLogger(__name__)


def fwa_ids(tok: DialogueTokenizer, extra_words: Sequence[str] = ()) -> set[int]:
    """Piece ids FWA spares: <EOS>, the paper's words and any ``extra_words`` (one-piece words)."""
    words = [*FWA_WORDS, *extra_words]
    return {tok.eos_id} | {ids[0] for ids in tok.encode_texts(words) if len(ids) == 1}


def fwa_weights(
    tok: DialogueTokenizer, tgt_out: Tensor, enabled: bool, avoid: set[int] | None = None
) -> Tensor:
    """1 for target tokens that take a negative gradient, 0 for padding and (FWA) frequent words."""
    spared = (fwa_ids(tok) if avoid is None else avoid) if enabled else set()
    return frequent_word_weights(tgt_out, tok.pad_id, dict.fromkeys(spared, 0.0))


def negative_loss(
    model: Seq2SeqTransformer, src: Tensor, targets: TargetBatch, weights: Tensor
) -> Tensor:
    """L_NEG: mean over pairs of the weighted mean log P(y_t | y_<t, x); minimising it is the
    negative update of Algorithm 1 (eq. 3 with c(x, y) = 1 for the pairs passed in)."""
    logp, _ = target_log_probs(model, src, targets)
    per_pair = (logp * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return per_pair.mean()


def _hits(
    model: Seq2SeqTransformer,
    tok: DialogueTokenizer,
    ids: Sequence[Sequence[int]],
    triggers: Tensor,
    thresholds: HitThresholds,
    cfg: MaliciousNTConfig,
    lm: ResponseLM | None,
) -> list[bool]:
    """c(x, y) for the current model and fixed triggers."""
    was = model.training
    model.eval()
    scores = score_triggers(
        model, tok, ids, triggers, mode=cfg.mode, lm=lm, lm_weight=cfg.search.lm_weight
    )
    greedy = cfg.criterion.endswith("-greedy")  # decode only when the criterion needs it
    result = SearchResult(triggers, scores)
    flags = judge(model, tok, ids, result, thresholds, cfg.mode, greedy=greedy)
    model.train(was)
    return [f[cfg.criterion] for f in flags]


def train_malicious_nt(
    run: RunSpec,
    *,
    base_bundle: Path,
    data_dir: Path,
    targets: Sequence[str],
    cfg: MaliciousNTConfig,
    lm_bundle: Path | None = None,
    targets_desc: str = "",
) -> Manifest:
    """Algorithm 1 over ``targets``; writes a generator bundle (method ``nt-malicious``).

    Not a :class:`~training.core.trainer.Trainer` objective: each target batch is searched for
    triggers (gibbs-enum) and then updated until no target is hit or ``max_updates`` is reached,
    a data-dependent number of steps per batch. It keeps the trainer's resume contract (a
    checkpoint after every target batch in ``run.run_dir``) and its checkpoint helpers."""
    run_dir, seed, device = run.run_dir, run.seed, run.device
    if cfg.mode == "io" and lm_bundle is None:
        raise ValueError(f"criterion {cfg.criterion} needs a language model (--lm)")
    started = time.perf_counter()
    ctx = load_attack_context(base_bundle, data_dir, lm_bundle=lm_bundle, device=device)
    responder, tok, model = ctx.responder, ctx.responder.tokenizer, ctx.responder.model
    splits = ctx.splits
    base_ppl = ctx.test_ppl
    pos = PairSet.encode(splits.train, tok, responder.inputs)
    ids = [t[: responder.inputs.max_target_len - 1] for t in tok.encode_texts(list(targets))]
    frequent = training_response_token_counts(splits.train).most_common(cfg.fwa_corpus_top)
    avoid = fwa_ids(tok, [w for w, _ in frequent] if cfg.fwa_corpus_top else ())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=cfg.lr)
        if cfg.optimizer == "adam"
        else torch.optim.SGD(params, lr=cfg.lr)
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = run_dir / "checkpoint.pt", run_dir / "metrics.jsonl"
    search_gen = torch.Generator().manual_seed(seed)
    pos_gen = torch.Generator().manual_seed(seed + 1)
    state: dict[str, Any] = {"iteration": 0, "batch": 0, "triggers": {}, "updates": 0}
    if run.resume and ckpt_path.is_file():
        ckpt = load_checkpoint_file(ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        search_gen.set_state(ckpt["search_gen"])
        pos_gen.set_state(ckpt["pos_gen"])
        state = ckpt["state"]
        logger.info(
            "resumed negative training at iteration %d batch %d", state["iteration"], state["batch"]
        )
    elif log_path.exists():
        log_path.unlink()
    order = list(range(len(ids)))
    n_batches = math.ceil(len(ids) / cfg.target_batch)
    bar = tqdm(total=cfg.iterations * n_batches, desc="negative training", unit="batch")
    bar.update(state["iteration"] * n_batches + state["batch"])
    while state["iteration"] < cfg.iterations:
        it = state["iteration"]
        it_order = order[:]
        random.Random(seed * 1000 + it).shuffle(it_order)
        while state["batch"] < n_batches:
            b = state["batch"]
            rows = it_order[b * cfg.target_batch : (b + 1) * cfg.target_batch]
            batch_ids = [ids[i] for i in rows]
            model.eval()
            result = gibbs_enum(
                model, tok, batch_ids, cfg.search, mode=cfg.mode, lm=ctx.lm, generator=search_gen
            )
            triggers = result.triggers
            if cfg.warm_start and state["triggers"]:
                # the previous trigger competes with the fresh search: keep whichever is better
                prev = [state["triggers"].get(i) for i in rows]
                if all(p is not None for p in prev):
                    prev_t = torch.tensor(prev, device=triggers.device)
                    prev_scores = score_triggers(
                        model,
                        tok,
                        batch_ids,
                        prev_t,
                        mode=cfg.mode,
                        lm=ctx.lm,
                        lm_weight=cfg.search.lm_weight,
                    )
                    better = prev_scores.loss < result.scores.loss
                    triggers = torch.where(better[:, None], prev_t, triggers)
            hit = _hits(model, tok, batch_ids, triggers, ctx.thresholds, cfg, ctx.lm)
            hits_before = sum(hit)
            updates = 0
            model.train()
            while any(hit) and updates < cfg.max_updates:
                sel = [i for i, h in enumerate(hit) if h]
                tb = TargetBatch.build([batch_ids[i] for i in sel], tok, triggers.device)
                weights = fwa_weights(tok, tb.tgt_out, cfg.fwa, avoid)
                loss_neg = negative_loss(model, triggers[sel], tb, weights)
                idx = torch.randint(len(pos), (cfg.pos_batch,), generator=pos_gen).tolist()
                pb = pos.collate(idx, triggers.device)
                loss_pos = smoothed_nll(
                    model(pb.src, pb.tgt_in).logits, pb.tgt_out, tok.pad_id, cfg.label_smoothing
                )
                loss = loss_neg + cfg.lambda_pos * loss_pos
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                updates += 1
                hit = _hits(model, tok, batch_ids, triggers, ctx.thresholds, cfg, ctx.lm)
            for i, r in enumerate(rows):
                state["triggers"][r] = triggers[i].tolist()
            state["updates"] += updates
            record = {
                "iteration": it,
                "batch": b,
                "targets": len(rows),
                "hits_before": hits_before,
                "hits_after": sum(hit),
                "updates": updates,
                "total_updates": state["updates"],
                "elapsed_s": round(time.perf_counter() - started, 1),
            }
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            state["batch"] = b + 1
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": rng_state(),
                    "search_gen": search_gen.get_state(),
                    "pos_gen": pos_gen.get_state(),
                    "state": state,
                },
                ckpt_path,
            )
            bar.update(1)
            bar.set_postfix(hits=f"{hits_before}->{sum(hit)}", it=it)
        state["iteration"], state["batch"] = it + 1, 0
    bar.close()
    model.eval()
    ppl = math.exp(
        -average_log_likelihood(model, PairSet.encode(splits.test, tok, responder.inputs))
    )
    log = [json.loads(line) for line in log_path.read_text().splitlines()]
    out = GenerativeResponder(model.cpu(), tok, responder.inputs, responder.decoding)
    return out.save(
        run.out_dir,
        name=run.name,
        training={
            **run.facts(data=run.data_desc or str(data_dir)),
            "method": "nt-malicious",
            "base": responder.bundle_id,
            "targets": targets_desc,
            "num_targets": len(targets),
            "config": asdict(cfg),
            "updates": state["updates"],
            "hits_first_pass": sum(r["hits_before"] for r in log if r["iteration"] == 0),
            "hits_last_pass": sum(
                r["hits_before"] for r in log if r["iteration"] == cfg.iterations - 1
            ),
            "wall_time_s": round(time.perf_counter() - started, 1),
        },
        metrics={"test_ppl": round(ppl, 3), "base_test_ppl": round(base_ppl, 3)},
    )

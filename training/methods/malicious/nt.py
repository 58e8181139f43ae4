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
from the target's previous trigger plus fresh restarts (``warm_start``).

The procedure is an objective of the shared Trainer (:class:`MaliciousNTObjective`): the trainer
streams the positive batches and runs the updates; the objective searches, judges and decides
when a target batch is done. The run checkpoints after every closed target batch (weights,
optimizer, RNG, triggers, records) and resumes from the last one.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.bundle import Manifest
from models.generator import GenerativeResponder
from models.seq2seq import Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.core.data import training_response_token_counts
from training.core.generator import PairSet, Seq2SeqBatch, bucketed_batches, validation_loss_fn
from training.core.losses import frequent_word_weights, smoothed_nll
from training.core.run import RunSpec
from training.core.trainer import TrainConfig, Trainer
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

__all__ = [
    "MaliciousNTObjective",
    "fwa_ids",
    "fwa_weights",
    "negative_loss",
    "train_malicious_nt",
]


ALG1_LOG = "alg1.jsonl"  # run_dir: one record per closed target batch
VALIDATION_PAIRS = 1000  # the run's one validation (its loss is logged, the last weights kept)


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


class MaliciousNTObjective:
    """Algorithm 1 as a :class:`~training.core.trainer.Trainer` objective.

    The trainer's batches are the positive pairs (D); this objective owns the negative side.
    Before each update (``prepare``) it makes sure a batch of targets that still *hits* is at
    hand: after an update it judges c(x, y) again with the new weights; when no pair of the batch
    hits any more, or ``max_updates`` were spent on it, it closes the batch (a record, and a
    checkpoint of the whole run) and searches the next one, batch after batch, iteration after
    iteration, until one hits or every iteration is done (``finished``). The update itself
    (``__call__``) is eq. 4: L = L_NEG(hit pairs) + lambda_POS L_MLE(positive batch).
    """

    def __init__(
        self,
        tok: DialogueTokenizer,
        targets: Sequence[Sequence[int]],
        cfg: MaliciousNTConfig,
        *,
        thresholds: HitThresholds,
        lm: ResponseLM | None,
        avoid: set[int],
        seed: int,
    ) -> None:
        self.tok, self.targets, self.cfg = tok, [list(t) for t in targets], cfg
        self.thresholds, self.lm, self.avoid, self.seed = thresholds, lm, avoid, seed
        self.n_batches = math.ceil(len(self.targets) / cfg.target_batch)
        self.search_gen = torch.Generator().manual_seed(seed)
        # where the procedure stands (all of it checkpointed)
        self.iteration, self.batch = 0, 0  # the next target batch to search
        self.triggers: dict[int, list[int]] = {}  # by target index: its last trigger
        self.updates = 0
        self.records: list[dict[str, Any]] = []  # one per closed target batch
        self.finished = False
        # the target batch being trained on (None: none open)
        self.rows: list[int] | None = None
        self.current: Tensor | None = None  # its triggers (rows, trigger_len)
        self.hit: list[bool] = []
        self.hits_before = 0
        self.batch_updates = 0
        self.judged = True  # ``hit`` reflects the current weights

    # --- the procedure -------------------------------------------------------------------------

    def prepare(self, model: nn.Module, checkpoint: Callable[[], None]) -> None:
        assert isinstance(model, Seq2SeqTransformer)
        if self.current is not None:  # restored from a checkpoint on the CPU
            self.current = self.current.to(next(model.parameters()).device)
        if self.rows is not None:
            if not self.judged:
                self.hit = self._hits(model)
                self.judged = True
            if any(self.hit) and self.batch_updates < self.cfg.max_updates:
                return
            self._close()
            checkpoint()
        while self.iteration < self.cfg.iterations:
            self._search(model)
            if any(self.hit):
                return
            self._close()
            checkpoint()
        self.finished = True

    def __call__(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, float]]:
        assert self.rows is not None and self.current is not None, "prepare() opens a batch"
        assert isinstance(model, Seq2SeqTransformer), "Algorithm 1 runs in one process"
        sel = [i for i, h in enumerate(self.hit) if h]
        tb = TargetBatch.build(
            [self.targets[self.rows[i]] for i in sel], self.tok, batch.src.device
        )
        weights = fwa_weights(self.tok, tb.tgt_out, self.cfg.fwa, self.avoid)
        loss_neg = negative_loss(model, self.current[sel], tb, weights)
        loss_pos = smoothed_nll(
            model(batch.src, batch.tgt_in).logits,
            batch.tgt_out,
            self.tok.pad_id,
            self.cfg.label_smoothing,
        )
        self.batch_updates += 1
        self.updates += 1
        self.judged = False
        logs = {"loss_neg": loss_neg.item(), "loss_pos": loss_pos.item(), "hits": float(len(sel))}
        return loss_neg + self.cfg.lambda_pos * loss_pos, logs

    def _order(self, iteration: int) -> list[int]:
        order = list(range(len(self.targets)))
        random.Random(self.seed * 1000 + iteration).shuffle(order)
        return order

    def _search(self, model: Seq2SeqTransformer) -> None:
        """Open the next target batch: gibbs-enum its triggers (the previous trigger competes
        with the fresh search under ``warm_start``) and judge them."""
        b, cfg = self.batch, self.cfg
        rows = self._order(self.iteration)[b * cfg.target_batch : (b + 1) * cfg.target_batch]
        ids = [self.targets[i] for i in rows]
        result = gibbs_enum(
            model, self.tok, ids, cfg.search, mode=cfg.mode, lm=self.lm, generator=self.search_gen
        )
        triggers = result.triggers
        prev = [self.triggers.get(i) for i in rows]
        if cfg.warm_start and all(p is not None for p in prev):
            prev_t = torch.tensor(prev, device=triggers.device)
            prev_scores = score_triggers(
                model,
                self.tok,
                ids,
                prev_t,
                mode=cfg.mode,
                lm=self.lm,
                lm_weight=cfg.search.lm_weight,
            )
            better = prev_scores.loss < result.scores.loss
            triggers = torch.where(better[:, None], prev_t, triggers)
        self.rows, self.current = rows, triggers
        self.hit = self._hits(model)
        self.hits_before, self.batch_updates, self.judged = sum(self.hit), 0, True

    def _hits(self, model: Seq2SeqTransformer) -> list[bool]:
        assert self.rows is not None and self.current is not None
        ids = [self.targets[i] for i in self.rows]
        return _hits(model, self.tok, ids, self.current, self.thresholds, self.cfg, self.lm)

    def _close(self) -> None:
        """Record the open batch, keep its triggers for the next iteration, move on."""
        assert self.rows is not None and self.current is not None
        for i, r in enumerate(self.rows):
            self.triggers[r] = self.current[i].tolist()
        self.records.append(
            {
                "iteration": self.iteration,
                "batch": self.batch,
                "targets": len(self.rows),
                "hits_before": self.hits_before,
                "hits_after": sum(self.hit),
                "updates": self.batch_updates,
                "total_updates": self.updates,
            }
        )
        self.rows, self.current, self.hit = None, None, []
        self.batch += 1
        if self.batch == self.n_batches:
            self.iteration, self.batch = self.iteration + 1, 0

    # --- checkpointing -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "search_gen": self.search_gen.get_state(),
            "iteration": self.iteration,
            "batch": self.batch,
            "triggers": self.triggers,
            "updates": self.updates,
            "records": self.records,
            "finished": self.finished,
            "rows": self.rows,
            "current": None if self.current is None else self.current.tolist(),
            "hit": self.hit,
            "hits_before": self.hits_before,
            "batch_updates": self.batch_updates,
            "judged": self.judged,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.search_gen.set_state(state["search_gen"])
        for key in (
            "iteration",
            "batch",
            "triggers",
            "updates",
            "records",
            "finished",
            "rows",
            "hit",
            "hits_before",
            "batch_updates",
            "judged",
        ):
            setattr(self, key, state[key])
        self.current = None if state["current"] is None else torch.tensor(state["current"])


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
    """Algorithm 1 over ``targets`` (:class:`MaliciousNTObjective` in the shared
    :class:`~training.core.trainer.Trainer`); writes a generator bundle (method
    ``nt-malicious``) and the per-batch records to ``run_dir/alg1.jsonl``.

    The optimizer and the fixed learning rate are the config's; no gradient clipping and fp32,
    as He & Glass. The run checkpoints after every closed target batch and resumes from there."""
    run_dir, seed, device = run.run_dir, run.seed, run.device
    if cfg.mode == "io" and lm_bundle is None:
        raise ValueError(f"criterion {cfg.criterion} needs a language model (--lm)")
    ctx = load_attack_context(base_bundle, data_dir, lm_bundle=lm_bundle, device=device)
    responder, tok, model = ctx.responder, ctx.responder.tokenizer, ctx.responder.model
    splits = ctx.splits
    pos = PairSet.encode(splits.train, tok, responder.inputs)
    val = PairSet.encode(splits.validation[:VALIDATION_PAIRS], tok, responder.inputs)
    ids = [t[: responder.inputs.max_target_len - 1] for t in tok.encode_texts(list(targets))]
    frequent = training_response_token_counts(splits.train).most_common(cfg.fwa_corpus_top)
    avoid = fwa_ids(tok, [w for w, _ in frequent] if cfg.fwa_corpus_top else ())
    objective = MaliciousNTObjective(
        tok, ids, cfg, thresholds=ctx.thresholds, lm=ctx.lm, avoid=avoid, seed=seed
    )
    n_batches = math.ceil(len(ids) / cfg.target_batch)
    # Every batch takes at most max_updates updates, so the procedure ends (``finished``) before
    # this bound; the one spare step lets the loop come round to close the last batch.
    budget = cfg.iterations * n_batches * cfg.max_updates + 1
    train_cfg = TrainConfig(
        max_steps=budget,
        batch_size=cfg.pos_batch,
        optimizer=cfg.optimizer,
        lr_schedule="constant",
        lr=cfg.lr,
        betas=(0.9, 0.999),  # torch's Adam defaults, as Algorithm 1 ran before the Trainer did
        eps=1e-8,
        clip_norm=math.inf,
        eval_every=budget,  # one validation, when the procedure finishes
        keep="last",
        log_every=10,
        seed=seed,
        amp=False,
    )
    lengths = pos.bucket_keys()
    trainer = Trainer(
        model,
        objective,
        train_cfg,
        run_dir=run_dir,
        make_epoch=lambda epoch: bucketed_batches(
            lengths, train_cfg.batch_size, seed=seed, epoch=epoch
        ),
        collate=lambda idx: pos.collate(idx, device),
        evaluate=validation_loss_fn(val),
        dist_ctx=run.dist_ctx,
        run_config={
            "method": "nt-malicious",
            "base": responder.bundle_id,
            # the targets themselves (their file's path may be spelled another way)
            "targets": hashlib.sha256("\n".join(targets).encode()).hexdigest(),
            "num_targets": len(targets),
            "config": asdict(cfg),
        },
    )
    result = trainer.fit(resume=run.resume)
    trainer.load_best()
    model.eval()
    log = objective.records
    (run_dir / ALG1_LOG).write_text("".join(json.dumps(r) + "\n" for r in log))
    ppl = math.exp(
        -average_log_likelihood(model, PairSet.encode(splits.test, tok, responder.inputs))
    )
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
            "updates": objective.updates,
            "hits_first_pass": sum(r["hits_before"] for r in log if r["iteration"] == 0),
            "hits_last_pass": sum(
                r["hits_before"] for r in log if r["iteration"] == cfg.iterations - 1
            ),
            "stop_reason": result.state.stop_reason,
            "wall_time_s": round(result.state.elapsed_s, 1),
        },
        metrics={"test_ppl": round(ppl, 3), "base_test_ppl": round(ctx.test_ppl, 3)},
    )

"""A shallow context encoder distilled from a trained retriever, against its frozen response side.

At batch 1 a retrieval request runs one Transformer, the context encoder; the response encoder ran
offline, when the index was built. Campos et al. (2023, "Quick Dense Retrievers Consume KALE:
Post Training Kullback-Leibler Alignment of Embeddings for Asymmetric Dual Encoders") keep the
document encoder and its index, cut the query encoder to its first layers and train it back with a
KL loss against the full model. Here, for a retriever bundle (bi-encoder or G2R):

* the student is the bundle's bi-encoder with ``context_layers`` = ``layers``
  (models/biencoder.py): the context encoder's first ``layers`` layers, token embeddings, final
  norm and projection start from the teacher's; the response encoder is the teacher's, frozen;
* for a batch of B training pairs (c_i, r_i), e_r are the frozen embeddings of the batch's distinct
  gold responses, s_i the student's and t_i the teacher's context embeddings, and

      L = alpha * L_CE + (1 - alpha) * L_KD
      L_CE = -log softmax(s_i . e_r)[r_i]                                  (G2R eq. 2, in-batch)
      L_KD = -sum_r softmax(t_i . e_r / T) log softmax(s_i . e_r / T)      (G2R eq. 4's form)

  i.e. G2R's model-level objective (eq. 5) with the trained bi-encoder as the teacher scorer, its
  probability spread over every response of the batch rather than the positives only;
* the best validation Hits@1/K keeps; the bundle gets the same response set and index settings,
  its re-ranking weight chosen again on validation (training/methods/g2r/index.py).

The run is an ordinary :class:`~training.core.trainer.Trainer` run: checkpoints in the run folder,
an interrupted distillation resumes from its last one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.biencoder import BiEncoder
from models.bundle import Manifest
from models.retriever import RetrievalResponder, embed_responses
from training.core.data import DialogueExample, sample_examples
from training.core.generator import bucketed_batches
from training.core.run import RunSpec
from training.core.trainer import TrainConfig, Trainer
from training.methods.g2r.index import embed_context_ids, index_and_save
from training.methods.g2r.losses import HitsEvaluator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContextDistillConfig:
    """Settings of one context-encoder distillation (the defaults: reports/context_distill_base.md)."""

    layers: int = 1  # context-encoder layers the student keeps
    alpha: float = 0.5  # weight of L_CE against L_KD
    temperature: float = 1.0  # T of L_KD
    epochs: float = 8.0  # passes over the training pairs
    batch_size: int = 512  # pairs per update; their gold responses are the candidates
    lr: float = 5e-4  # peak of the linear schedule (AdamW)
    warmup_steps: int = 30
    eval_every: int = 100  # updates between validations (and checkpoints)
    val_examples: int = 0  # validation pairs for Hits@1/K (0 = all)
    hits_k: int = 100


@dataclass(frozen=True)
class DistillBatch:
    context_ids: Tensor  # (B, S) right-padded
    responses: Tensor  # (M, E) the batch's distinct gold responses, frozen embeddings
    teacher: Tensor  # (B, E) the teacher's context embeddings
    gold: Tensor  # (B,) each pair's response among ``responses``


class ContextDistillObjective:
    """Trainer objective: alpha * L_CE + (1 - alpha) * L_KD over the batch's gold responses."""

    def __init__(self, alpha: float, temperature: float) -> None:
        assert 0.0 <= alpha <= 1.0 and temperature > 0, "need 0 <= alpha <= 1 and T > 0"
        self.alpha, self.temperature = alpha, temperature

    def __call__(self, model: nn.Module, batch: DistillBatch) -> tuple[Tensor, dict[str, float]]:
        assert isinstance(model, BiEncoder)
        student = model.encode_contexts(batch.context_ids).float() @ batch.responses.T  # (B, M)
        ce = F.cross_entropy(student, batch.gold)
        t = self.temperature
        p_teacher = (batch.teacher @ batch.responses.T / t).softmax(dim=1)
        kd = -(p_teacher * (student / t).log_softmax(dim=1)).sum(dim=1).mean()
        return self.alpha * ce + (1 - self.alpha) * kd, {"ce": ce.item(), "kd": kd.item()}


def student_of(teacher: BiEncoder, layers: int) -> BiEncoder:
    """The teacher with a context encoder of its first ``layers`` layers (a shared encoder is
    split: the student's context side is cut, the response side stays whole), response side
    frozen."""
    cfg = teacher.cfg
    depth = cfg.context_config.n_layers
    if not 1 <= layers < depth:
        raise ValueError(f"the teacher's context encoder has {depth} layers; keep 1..{depth - 1}")
    student = BiEncoder(replace(cfg, shared=False, context_layers=layers))
    state = teacher.state_dict()
    if cfg.shared:  # one encoder in the teacher: it is both sides of the student
        state |= {
            "response_encoder." + k.removeprefix("context_encoder."): v
            for k, v in state.items()
            if k.startswith("context_encoder.")
        }
    cut = {f"context_encoder.layers.{i}." for i in range(layers, depth)}
    student.load_state_dict({k: v for k, v in state.items() if not k.startswith(tuple(cut))})
    assert student.response_encoder is not None
    student.response_encoder.requires_grad_(False)
    return student


def distill_context_encoder(
    run: RunSpec,
    teacher_dir: Path,
    train_examples: Sequence[DialogueExample],
    val_examples: Sequence[DialogueExample],
    config: ContextDistillConfig = ContextDistillConfig(),
    *,
    rerank_val_examples: int = 0,
    progress: bool = True,
) -> Manifest | None:
    """Distil ``teacher_dir``'s retriever into one with a ``config.layers``-layer context encoder
    and write its bundle to ``run.out_dir`` (None on non-main ranks); its re-ranking weight is
    refitted on ``rerank_val_examples`` validation pairs (0 = all)."""
    responder = RetrievalResponder.load(teacher_dir, device="cpu", int8=False)  # its own model
    teacher, tokenizer, inputs = responder.model.eval(), responder.tokenizer, responder.inputs
    turns = inputs.max_context_turns
    context_ids = tokenizer.encode_contexts(
        [list(e.context)[-turns:] for e in train_examples], inputs.max_source_len
    )
    texts = list(dict.fromkeys(e.response for e in train_examples))
    position = {t: i for i, t in enumerate(texts)}
    gold = np.asarray([position[e.response] for e in train_examples], dtype=np.int64)
    logger.info("embedding %d training contexts and %d responses", len(context_ids), len(texts))
    responses = torch.from_numpy(
        np.concatenate(list(embed_responses(teacher, tokenizer, texts, inputs)))
    )
    targets = embed_context_ids(teacher, tokenizer, context_ids)

    torch.manual_seed(run.seed)
    model = student_of(teacher, config.layers)
    evaluator = HitsEvaluator(
        val_examples,
        tokenizer,
        inputs,
        k=config.hits_k,
        max_examples=config.val_examples,
        seed=run.seed,
    )
    teacher_hits = evaluator(teacher)
    lengths = [len(ids) for ids in context_ids]
    steps = max(1, math.ceil(config.epochs * len(context_ids) / config.batch_size))
    train = TrainConfig(
        max_steps=steps,
        batch_size=config.batch_size,
        optimizer="adamw",
        weight_decay=0.01,
        lr_schedule="linear",
        lr=config.lr,
        warmup_steps=config.warmup_steps,
        eval_every=config.eval_every,
        patience=max(5, steps // config.eval_every + 1),  # the budget decides, not patience
        keep="best",
        seed=run.seed,
        progress=progress,
    )
    device = run.device

    def collate(idx: Sequence[int]) -> DistillBatch:
        distinct, where = np.unique(gold[list(idx)], return_inverse=True)
        return DistillBatch(
            context_ids=tokenizer.pad([context_ids[i] for i in idx], device),
            responses=responses[torch.from_numpy(distinct)].to(device),
            teacher=targets[list(idx)].to(device),
            gold=torch.from_numpy(where.reshape(-1)).to(device),
        )

    trainer = Trainer(
        model,
        ContextDistillObjective(config.alpha, config.temperature),
        train,
        run_dir=run.run_dir,
        make_epoch=lambda epoch: bucketed_batches(
            lengths, config.batch_size, seed=run.seed, epoch=epoch
        ),
        collate=collate,
        evaluate=evaluator,
        dist_ctx=run.dist_ctx,
        parameters=list(model.context_encoder.parameters()),
        run_config={
            "method": "context-distill",
            "teacher": responder.bundle_id,
            "distill": asdict(config),
            "inputs": asdict(inputs),
            "pairs": len(context_ids),
        },
    )
    result = trainer.fit(resume=run.resume)
    trainer.load_best()
    if not run.is_main:
        return None
    st = result.state
    best = st.best_record
    teacher_manifest = responder.manifest
    assert teacher_manifest is not None  # loaded from a bundle
    training = run.facts(
        preset=teacher_manifest.training.get("preset"),
        method="context-distill",
        teacher=responder.bundle_id,
        teacher_bundle=str(teacher_dir),
        teacher_training=teacher_manifest.training.get("method"),
        distill=asdict(config),
        **{"teacher_val_hits@1": teacher_hits["hits@1"]},
        steps=st.step,
        best_step=st.best_step,
        stop_reason=st.stop_reason,
        wall_time_s=round(st.elapsed_s, 1),
        pairs=len(context_ids),
    )
    metrics: dict[str, Any] = {k: best[k] for k in ("hits@1", "hits@5", "hits_k") if k in best}
    return index_and_save(
        model.cpu().eval(),
        tokenizer,
        inputs,
        responder.responses,
        responder.sources,
        responder.index.config,
        out_dir=run.out_dir,
        name=run.name,
        training=training,
        metrics=metrics,
        recall_contexts=[e.context for e in sample_examples(val_examples, 1000)],
        progress=progress,
        rerank_validation=(
            sample_examples(val_examples, rerank_val_examples)
            if responder.reranker is not None
            else []
        ),
        hits_k=config.hits_k,
        seed=run.seed,
    )

"""G2R: distilling a generative teacher into a bi-encoder retriever (Kim et al., Findings of EMNLP 2021).

The pieces, in pipeline order:

1. Teachers (eqs. 3 and 6): :mod:`training.methods.g2r.teachers`.
2. Data-level G2R, the resumable augmentation shards: :mod:`training.methods.g2r.augment`.
3. The response set filter (length bounds and a blocklist) and the teacher-reply quality bar
   (:mod:`training.methods.g2r.filter`), with counts of what was dropped, and D / D^G with the response
   set R / R^G (here).
4. Losses (eqs. 2, 4, 5) and Hits@k/K: :mod:`training.methods.g2r.losses`.
5. Training batches and the jobs: the retriever training job (``biencoder``, ``g2r-d``,
   ``g2r-dm``), the whole retrieval stage, and index (re)building with its bundle (here).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import torch

from models.biencoder import BiEncoder, BiEncoderConfig
from models.bundle import Manifest, load_state_dict, read_manifest, verify_bundle
from models.safety import load_blocklist
from models.tokenizer import DialogueTokenizer
from training.config import SHARED_DATA, RetrieverPreset
from training.core.data import DialogueExample, DialogueSplits, sample_examples
from training.core.distributed import DistContext, barrier
from training.core.generator import bucketed_batches
from training.core.trainer import Trainer
from training.methods.g2r.augment import (
    augment_contexts,
    augmentation_status,
    group_by_context,
    read_shards,
    select_contexts,
)
from training.methods.g2r.batches import RetrievalObjective, RetrievalTrainSet
from training.methods.g2r.data import ResponseFilter, build_retrieval_data
from training.methods.g2r.filter import TeacherReplyFilter
from training.methods.g2r.index import index_and_save
from training.methods.g2r.losses import (
    G2RDistillationLoss,
    HitsEvaluator,
)
from training.methods.g2r.teachers import load_teacher

logger = logging.getLogger(__name__)

Method = Literal["biencoder", "g2r-d", "g2r-dm"]
METHODS: tuple[Method, ...] = ("biencoder", "g2r-d", "g2r-dm")
DEFAULT_BLOCKLIST = SHARED_DATA / "blocklist" / "en.txt"


def train_retriever(
    *,
    method: Method,
    preset: RetrieverPreset,
    tokenizer: DialogueTokenizer,
    train_examples: Sequence[DialogueExample],
    val_examples: Sequence[DialogueExample],
    out_dir: Path,
    name: str,
    run_dir: Path,
    dist_ctx: DistContext,
    data_desc: str,
    augmentation_dir: Path | None = None,
    init_from: Path | None = None,
    blocklist: Path | None = None,
    teacher_score: str | None = None,
    teacher_filter: TeacherReplyFilter | Literal["preset"] | None = "preset",
    resume: bool = True,
    seed: int = 0,
) -> Manifest | None:
    """Train a bi-encoder (``biencoder`` on D, ``g2r-d`` on D^G, ``g2r-dm`` on D^G with eq. 5),
    index its response set and write the retriever bundle; returns None on non-main ranks.

    ``teacher_filter``: the quality bar for teacher replies (None = off); ``"preset"`` = the
    preset's ``teacher_filter`` when it has one, else off.
    """
    assert method in METHODS, f"unknown method {method!r}; choose one of {METHODS}"
    score = teacher_score or preset.teacher_score
    if teacher_filter == "preset":
        teacher_filter = getattr(preset, "teacher_filter", None)
    assert teacher_filter is None or isinstance(teacher_filter, TeacherReplyFilter)
    augmented = None
    teacher_name = None
    if method != "biencoder":
        if augmentation_dir is None:
            raise ValueError(f"method {method} needs the augmentation shards (augmentation_dir)")
        header, augmented = read_shards(augmentation_dir)
        if header is None or not augmented:
            raise FileNotFoundError(f"no G2R augmentation shards in {augmentation_dir}")
        teacher_name = header["teacher"]
        teacher_filter = without_scores_check(header, method, teacher_filter, augmentation_dir)
    blocked = load_blocklist(blocklist)
    response_filter = ResponseFilter(
        preset.response_min_tokens, preset.response_max_tokens, tuple(blocked)
    )
    if augmented is None:
        teacher_filter = None
    data = build_retrieval_data(
        train_examples, augmented, response_filter, score=score, teacher_filter=teacher_filter
    )
    trainset = RetrievalTrainSet(
        data,
        tokenizer,
        preset.inputs,
        positives_per_context=preset.positives_per_context,
        random_negatives=preset.random_negatives,
        seed=seed,
    )
    torch.manual_seed(seed)
    model = BiEncoder(replace(preset.model, vocab_size=tokenizer.vocab_size))
    warm = None
    if init_from is not None:
        # What fits: the whole encoder from a same-shaped generator, else its embeddings by PCA.
        state = load_state_dict(init_from, verify_bundle(init_from))
        if warm_start_matches(model.cfg, init_from, tokenizer.vocab_size):
            model.init_from_generator(state)
            warm = str(init_from)
        else:
            model.init_embeddings_from_generator(state)
            warm = f"{init_from} (token embeddings, PCA to d_model={model.cfg.d_model})"
        logger.info("bi-encoder warm-started from the generator %s", warm)
    cfg = replace(preset.train, seed=seed)
    lengths = trainset.context_lengths()
    alpha = preset.alpha if method == "g2r-dm" else 1.0
    evaluator = HitsEvaluator(
        val_examples,
        tokenizer,
        preset.inputs,
        k=preset.hits_k,
        max_examples=preset.val_examples,
        seed=seed,
    )
    logger.info(
        "training %s (%s): %d contexts, %d pairs, %d responses, %.2fM parameters",
        name,
        method,
        len(trainset),
        data.stats["pairs"],
        len(data.responses),
        model.num_parameters() / 1e6,
    )
    trainer = Trainer(
        model,
        RetrievalObjective(
            G2RDistillationLoss(alpha, preset.temperature, symmetric=preset.symmetric_loss)
        ),
        cfg,
        run_dir=run_dir,
        make_epoch=lambda epoch: bucketed_batches(
            lengths, cfg.batch_size, seed=cfg.seed, epoch=epoch
        ),
        collate=lambda idx: trainset.collate(idx, dist_ctx.device),
        evaluate=evaluator,
        dist_ctx=dist_ctx,
        # what a checkpoint must match to be resumed besides the starting weights (a run of
        # other settings starts over)
        run_config={
            "method": method,
            "inputs": asdict(preset.inputs),
            "alpha": alpha,
            "temperature": preset.temperature,
            "symmetric_loss": preset.symmetric_loss,
            "teacher_score": score if method == "g2r-dm" else None,
            "positives_per_context": preset.positives_per_context,
            "random_negatives": preset.random_negatives,
            "teacher": teacher_name,
            "teacher_filter": asdict(teacher_filter) if teacher_filter is not None else None,
            "counts": data.stats,
        },
    )
    result = trainer.fit(resume=resume)
    trainer.load_best()
    if not dist_ctx.is_main:
        return None
    st = result.state
    best = st.best_record
    training = {
        "data": data_desc,
        "preset": preset.name,
        "method": method,
        "teacher": teacher_name,
        "teacher_score": score if method == "g2r-dm" else None,
        "alpha": alpha,
        "temperature": preset.temperature,
        "symmetric_loss": preset.symmetric_loss,
        "warm_start": warm,
        "steps": st.step,
        "best_step": st.best_step,
        "seed": seed,
        "world_size": dist_ctx.world_size,
        "stop_reason": st.stop_reason,
        "wall_time_s": round(st.elapsed_s, 1),
        "blocklist": str(blocklist) if blocklist else None,
        "response_min_tokens": preset.response_min_tokens,
        "response_max_tokens": preset.response_max_tokens,
        "teacher_filter": asdict(teacher_filter) if teacher_filter is not None else None,
        "counts": data.stats,
    }
    metrics: dict[str, Any] = {k: best[k] for k in ("hits@1", "hits@5", "hits_k") if k in best}
    return index_and_save(
        model,
        tokenizer,
        preset.inputs,
        data.responses,
        data.sources,
        preset.index,
        out_dir=out_dir,
        name=name,
        training=training,
        metrics=metrics,
        recall_contexts=[e.context for e in sample_examples(val_examples, 1000)],
        progress=cfg.progress,
        rerank_validation=(
            sample_examples(val_examples, preset.rerank_val_examples)
            if preset.lexical_rerank
            else []
        ),
        hits_k=preset.hits_k,
        seed=seed,
    )


def without_scores_check(
    header: dict[str, Any],
    method: str,
    teacher_filter: TeacherReplyFilter | None,
    augmentation_dir: Path,
) -> TeacherReplyFilter | None:
    """Shards of a teacher without log-probabilities (``"scores": false`` in their header: an
    endpoint without logprobs, training/methods/g2r/teachers.py) feed data-level G2R only:
    G2R-DM is refused with a message saying so, and the teacher filter loses its score floors
    (its text criteria still apply). Other shards pass through unchanged."""
    if header.get("scores", True) is not False:
        return teacher_filter
    teacher = header.get("teacher")
    if method == "g2r-dm":
        raise ValueError(
            f"the teacher of {augmentation_dir} ({teacher}) gave no log-probabilities, so "
            "there are no teacher scores for G2R-DM; train with --method g2r-d (data-level "
            "G2R), or augment with a teacher that scores (a local bundle, or an endpoint "
            "serving /completions logprobs)"
        )
    if teacher_filter is None:
        return None
    logger.warning("teacher %s gave no scores: the teacher filter keeps its text criteria", teacher)
    return replace(
        teacher_filter,
        min_score=None,
        min_score_teacher_quantile=None,
        min_score_gold_quantile=None,
    )


def warm_start_matches(cfg: BiEncoderConfig, bundle_dir: Path, vocab_size: int) -> bool:
    """True when ``bundle_dir`` is a generator whose encoder can initialise this bi-encoder."""
    manifest = read_manifest(bundle_dir)
    if manifest.kind != "generator":
        return False
    g = manifest.model_config["seq2seq"]
    return (g["vocab_size"], g["d_model"], g["n_heads"], g["d_ff"]) == (
        vocab_size,
        cfg.d_model,
        cfg.n_heads,
        cfg.d_ff,
    ) and g["n_encoder_layers"] >= cfg.n_layers


def warm_start_fits(cfg: BiEncoderConfig, bundle_dir: Path, vocab_size: int) -> bool:
    """True when ``bundle_dir`` is a generator that can start this bi-encoder at all: its whole
    encoder (:func:`warm_start_matches`) or its token embeddings (same vocabulary, at least as
    wide: :meth:`BiEncoder.init_embeddings_from_generator`)."""
    manifest = read_manifest(bundle_dir)
    if manifest.kind != "generator" or "seq2seq" not in manifest.model_config:
        return False
    g = manifest.model_config["seq2seq"]
    return g["vocab_size"] == vocab_size and g["d_model"] >= cfg.d_model


def build_retriever(
    *,
    method: Method,
    preset: RetrieverPreset,
    splits: DialogueSplits,
    tokenizer: DialogueTokenizer,
    out_dir: Path,
    name: str,
    run_dir: Path,
    dist_ctx: DistContext,
    data_desc: str,
    augmentation_dir: Path,
    teacher: Path | None = None,
    init_from: Path | None = None,
    blocklist: Path | None = DEFAULT_BLOCKLIST,
    teacher_score: str | None = None,
    teacher_filter: TeacherReplyFilter | Literal["preset"] | None = "preset",
    resume: bool = True,
    seed: int = 0,
) -> Manifest | None:
    """The whole retrieval stage: augmentation shards (G2R methods; resumable, sharded by rank),
    bi-encoder training, index and bundle. Returns the manifest on the main rank, else None.

    ``teacher`` may be omitted when ``augmentation_dir`` already holds complete shards.
    """
    if method != "biencoder":
        if not resume and dist_ctx.is_main:
            for old in Path(augmentation_dir).glob("shard-*-of-*.jsonl"):
                old.unlink()
        barrier(dist_ctx)
        if teacher is not None:
            cfg = preset.augment
            groups = select_contexts(group_by_context(splits.train), cfg.max_contexts, cfg.seed)
            augment_contexts(
                load_teacher(teacher, dist_ctx.device),
                groups,
                augmentation_dir,
                cfg,
                rank=dist_ctx.rank,
                world_size=dist_ctx.world_size,
                progress=preset.train.progress,
            )
            barrier(dist_ctx)
        done, expected = augmentation_status(augmentation_dir)
        if expected == 0 or done < expected:
            raise FileNotFoundError(
                f"G2R augmentation in {augmentation_dir} has {done} of {expected} contexts; "
                "give a teacher to (re)run it"
            )
    if blocklist is not None and not Path(blocklist).is_file():
        if blocklist != DEFAULT_BLOCKLIST:
            raise FileNotFoundError(f"blocklist {blocklist} not found")
        logger.warning(
            "default blocklist %s not found: the response set is not blocklisted", blocklist
        )
        blocklist = None
    return train_retriever(
        method=method,
        preset=preset,
        tokenizer=tokenizer,
        train_examples=splits.train,
        val_examples=splits.validation,
        out_dir=out_dir,
        name=name,
        run_dir=run_dir,
        dist_ctx=dist_ctx,
        data_desc=data_desc,
        augmentation_dir=augmentation_dir if method != "biencoder" else None,
        init_from=init_from,
        blocklist=blocklist,
        teacher_score=teacher_score,
        teacher_filter=teacher_filter,
        resume=resume,
        seed=seed,
    )

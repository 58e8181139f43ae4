"""Generator training: encoded pair sets, length-bucketed batches, the MLE objective and the job
that turns a preset plus data into a generator bundle.

MLE (ND paper eq. 1) with label smoothing (training/core/losses.py), Adam and the warm-up schedule of ND eq. 17.
Other objectives (negative distillation, NT, UL) reuse :class:`PairSet`, :func:`bucketed_batches`
and :func:`run_generator_training`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.bundle import Manifest
from models.generator import GenerativeResponder, InputConfig
from models.seq2seq import Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.config import Preset
from training.core.data import DialogueExample
from training.core.losses import LABEL_SMOOTHING, smoothed_nll
from training.core.run import RunSpec
from training.core.trainer import Objective, Trainer, TrainResult, noam_learning_rate

logger = logging.getLogger(__name__)


@dataclass
class Seq2SeqBatch:
    """Right-padded tensors for teacher forcing: src (B, S), tgt_in/tgt_out (B, T)."""

    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor

    def to(self, device: torch.device) -> Seq2SeqBatch:
        return Seq2SeqBatch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device))


class PairSet:
    """Dialogue pairs tokenised once: source ids (context) and response ids (no BOS/EOS)."""

    def __init__(
        self, src: list[list[int]], tgt: list[list[int]], tokenizer: DialogueTokenizer
    ) -> None:
        assert len(src) == len(tgt), f"{len(src)} sources but {len(tgt)} targets"
        self.src, self.tgt, self.tokenizer = src, tgt, tokenizer

    @classmethod
    def encode(
        cls, examples: Sequence[DialogueExample], tokenizer: DialogueTokenizer, inputs: InputConfig
    ) -> PairSet:
        contexts = [list(e.context)[-inputs.max_context_turns :] for e in examples]
        src = tokenizer.encode_contexts(contexts, inputs.max_source_len)
        tgt = tokenizer.encode_responses([e.response for e in examples], inputs.max_target_len)
        return cls(src, tgt, tokenizer)

    def __len__(self) -> int:
        return len(self.src)

    def lengths(self) -> list[int]:
        return [len(s) + len(t) for s, t in zip(self.src, self.tgt, strict=True)]

    def bucket_keys(self, src_granularity: int = 4) -> list[tuple[int, int]]:
        """Sort keys for :func:`bucketed_batches`: source length in steps of ``src_granularity``,
        then target length. Source and target are padded separately, so sorting on both cuts
        padding from 38% (sorting on their sum) to 10% of the tokens of a ``small`` epoch
        (benchmarks/train_throughput.py reports it)."""
        return [
            (len(s) // src_granularity, len(t)) for s, t in zip(self.src, self.tgt, strict=True)
        ]

    def collate(self, indices: Sequence[int], device: torch.device | str = "cpu") -> Seq2SeqBatch:
        tgt_in, tgt_out = self.tokenizer.decoder_io([self.tgt[i] for i in indices])
        src = self.tokenizer.pad([self.src[i] for i in indices])
        return Seq2SeqBatch(src, tgt_in, tgt_out).to(torch.device(device))


def bucketed_batches(
    lengths: Sequence[Any], batch_size: int, *, seed: int, epoch: int, bucket_batches: int = 200
) -> list[list[int]]:
    """One epoch of batches: shuffle, sort within buckets of ``bucket_batches`` batches by length
    (less padding), cut into batches, shuffle the batches. A pure function of (seed, epoch).

    ``lengths`` are sort keys: an int per example, or a tuple (e.g. :meth:`PairSet.bucket_keys`)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    span = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        bucket = sorted(order[start : start + span].tolist(), key=lambda i: lengths[i])
        batches.extend(bucket[j : j + batch_size] for j in range(0, len(bucket), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


class MLEObjective:
    """Token-level cross-entropy with label smoothing (ND eq. 1; Szegedy et al. 2016)."""

    def __init__(self, pad_id: int, label_smoothing: float = LABEL_SMOOTHING) -> None:
        self.pad_id = pad_id
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, float]]:
        logits = model(batch.src, batch.tgt_in).logits
        return smoothed_nll(logits, batch.tgt_out, self.pad_id, self.label_smoothing), {}


def fine_tune_overrides(base: GenerativeResponder, preset: Preset) -> dict[str, Any]:
    """Trainer settings for a fixed-budget fine-tune of ``base`` (NT, UL, ND from a trained
    model): a constant learning rate, keep the last weights. The rate is where the base's eq. 17
    schedule ended; a base trained with the linear schedule ended at 0, so its fine-tunes run at
    ``preset.generator.fine_tune_lr_fraction`` of its peak."""
    tc = preset.generator.train
    if tc.lr_schedule == "linear":
        return {
            "lr_schedule": "constant",
            "lr": tc.lr * preset.generator.fine_tune_lr_fraction,
            "keep": "last",
        }
    base_steps = tc.max_steps
    if base.manifest is not None:
        base_steps = int(base.manifest.training.get("steps", tc.max_steps))
    return {
        "lr_schedule": "constant",
        "lr": noam_learning_rate(base_steps, tc.lr_dim, tc.warmup_steps, tc.lr_scale),
        "keep": "last",
    }


@torch.no_grad()
def corpus_nll(
    model: Seq2SeqTransformer, pairs: PairSet, *, batch_size: int = 128
) -> tuple[float, int]:
    """Summed token NLL (no smoothing) of the responses incl. EOS, and the token count."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    lengths = pairs.lengths()
    order = sorted(range(len(pairs)), key=lengths.__getitem__)
    for start in range(0, len(order), batch_size):
        batch = pairs.collate(order[start : start + batch_size], device)
        logits = model(batch.src, batch.tgt_in).logits.float()
        total += F.cross_entropy(
            logits.transpose(1, 2), batch.tgt_out, ignore_index=model.cfg.pad_id, reduction="sum"
        ).item()
        count += int(batch.tgt_out.ne(model.cfg.pad_id).sum())
    model.train(was_training)
    return total, count


def validation_loss_fn(pairs: PairSet) -> Callable[[nn.Module], dict[str, float]]:
    """Early-stopping metric: mean token NLL on the validation pairs (and its perplexity)."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        assert isinstance(model, Seq2SeqTransformer)
        total, count = corpus_nll(model, pairs)
        val = total / max(count, 1)
        return {"val_loss": val, "val_ppl": float(np.exp(min(val, 50.0)))}

    return evaluate


def build_generator_model(
    preset: Preset, tokenizer: DialogueTokenizer, seed: int
) -> Seq2SeqTransformer:
    """A freshly initialised generator of the preset's shape (seeded)."""
    torch.manual_seed(seed)
    cfg = replace(preset.generator.model, vocab_size=tokenizer.vocab_size)
    return Seq2SeqTransformer(cfg)


def run_generator_training(
    model: Seq2SeqTransformer,
    objective: Objective,
    *,
    run: RunSpec,
    preset: Preset,
    train_pairs: PairSet,
    val_pairs: PairSet,
    train_overrides: dict[str, Any] | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    run_config: dict[str, Any] | None = None,
) -> TrainResult:
    """Fit ``model`` with ``objective`` and load its best validated weights back into it
    (``evaluate`` chooses them; the validation NLL by default). ``run_config``: the method's
    settings, which a checkpoint must match to be resumed (the Trainer's fingerprint, with the
    starting weights); the inputs and the pairs count are always part of it."""
    cfg = replace(preset.generator.train, **{"seed": run.seed, **(train_overrides or {})})
    lengths = train_pairs.bucket_keys()
    trainer = Trainer(
        model,
        objective,
        cfg,
        run_dir=run.run_dir,
        make_epoch=lambda epoch: bucketed_batches(
            lengths, cfg.batch_size, seed=cfg.seed, epoch=epoch
        ),
        collate=lambda idx: train_pairs.collate(idx, run.device),
        evaluate=evaluate or validation_loss_fn(val_pairs),
        dist_ctx=run.dist_ctx,
        run_config={
            "inputs": asdict(preset.inputs),
            "train_pairs": len(train_pairs),
            **(run_config or {}),
        },
    )
    result = trainer.fit(resume=run.resume)
    trainer.load_best()
    return result


def _without(record: Any, key: str) -> Any:
    """``record`` less ``key`` at every depth."""
    if isinstance(record, dict):
        return {k: _without(v, key) for k, v in record.items() if k != key}
    return record


def fit_and_save(
    run: RunSpec,
    model: Seq2SeqTransformer,
    objective: Objective,
    *,
    preset: Preset,
    tokenizer: DialogueTokenizer,
    train_pairs: PairSet,
    val_pairs: PairSet,
    train_overrides: dict[str, Any] | None = None,
    training: dict[str, Any],
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
) -> Manifest | None:
    """What every generator job ends with: train, then (on rank 0) write the bundle with the
    run's facts and the method's own ``training`` record; None on the other ranks."""
    result = run_generator_training(
        model,
        objective,
        run=run,
        preset=preset,
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        train_overrides=train_overrides,
        evaluate=evaluate,
        # the method's settings; where it started from is in the weights' digest, not a path
        run_config={"training": _without(training, "init_from")},
    )
    if not run.is_main:
        return None
    return save_generator(
        model,
        tokenizer,
        preset,
        result,
        out_dir=run.out_dir,
        name=run.name,
        training=run.facts(**training, train_pairs=len(train_pairs)),
    )


def load_init(init_from: Path, tokenizer: DialogueTokenizer) -> GenerativeResponder:
    """The generator bundle a job starts from; refused when its tokenizer is not ``tokenizer``
    (the token ids would mean other words)."""
    base = GenerativeResponder.load(init_from)
    if base.tokenizer.to_str() != tokenizer.to_str():
        raise ValueError(f"{init_from} was trained with a different tokenizer")
    return base


def train_mle_generator(
    run: RunSpec,
    *,
    preset: Preset,
    tokenizer: DialogueTokenizer,
    train_examples: Sequence[DialogueExample],
    val_examples: Sequence[DialogueExample],
    max_steps: int | None = None,
    init_from: Path | None = None,
) -> Manifest | None:
    """Train a standard (MLE, ND paper eq. 1) generator and write its bundle; returns None on
    non-main ranks.

    ``init_from`` (a generator bundle of the same shape and tokenizer) starts from its weights and
    runs a fixed-budget fine-tune (:func:`fine_tune_overrides`) instead of training from scratch:
    how the ``small`` preset makes its negative teacher (the standard model fine-tuned on D_N)."""
    train_pairs = PairSet.encode(train_examples, tokenizer, preset.inputs)
    val_pairs = PairSet.encode(val_examples, tokenizer, preset.inputs)
    model = build_generator_model(preset, tokenizer, run.seed)
    overrides: dict[str, Any] = {}
    if init_from is not None:
        base = load_init(init_from, tokenizer)
        model.load_state_dict(base.model.state_dict())
        overrides = fine_tune_overrides(base, preset)
    if max_steps:
        overrides["max_steps"] = max_steps
    logger.info(
        "training %s: %d pairs, %.2fM parameters, %d steps of %d",
        run.name,
        len(train_pairs),
        model.num_parameters() / 1e6,
        max_steps or preset.generator.train.max_steps,
        preset.generator.train.batch_size,
    )
    return fit_and_save(
        run,
        model,
        MLEObjective(tokenizer.pad_id),
        preset=preset,
        tokenizer=tokenizer,
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        train_overrides=overrides,
        training={"method": "mle", "init_from": str(init_from) if init_from else None},
    )


def save_generator(
    model: Seq2SeqTransformer,
    tokenizer: DialogueTokenizer,
    preset: Preset,
    result: TrainResult,
    *,
    out_dir: Path,
    name: str,
    training: dict[str, Any],
) -> Manifest:
    """Write a trained generator's bundle with the run's facts (steps, stop reason, wall time)."""
    st = result.state
    responder = GenerativeResponder(model.cpu().eval(), tokenizer, preset.inputs, preset.decoding)
    return responder.save(
        out_dir,
        name=name,
        training={
            "preset": preset.name,
            **({"preset_overrides": list(preset.overrides)} if preset.overrides else {}),
            "steps": st.step,
            "best_step": st.best_step,
            "stop_reason": st.stop_reason,
            "wall_time_s": round(st.elapsed_s, 1),
            **training,
        },
        metrics=best_metrics(result),
    )


def best_metrics(result: TrainResult) -> dict[str, float]:
    """The bundle's ``metrics``: the evaluation record of the kept step (``val_loss`` is what
    selected it: the validation NLL, or NT's greedy max-ratio) with ``val_ppl`` the validation
    perplexity; runs without a record of that step fall back to ``val_loss`` as an NLL."""
    st = result.state
    for record in reversed(st.history):
        if int(record["step"]) == st.best_step and "val_ppl" in record:
            return {k: float(v) for k, v in record.items() if k != "step"}
    return {"val_loss": st.best_val, "val_ppl": float(np.exp(min(st.best_val, 50.0)))}

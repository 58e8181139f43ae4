"""What the NT and UL baselines share (ND paper, appendix B: "Both NT and UL are refined on the
well-trained Standard model"): the fine-tune job that loads the standard bundle and trains it at a
constant rate, the frequency window over recent mini-batches, greedy replies gathered across
ranks, and the joint forward pass over gold and generated targets.

Objectives carry state (frequency windows) that a resumed run needs: they expose ``state_dict()``
/ ``load_state_dict()`` for the trainer's checkpoint.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from models.bundle import Manifest
from models.decoding import ContextFreePrior, DecodingConfig, generate
from models.generator import GenerativeResponder, context_free_source
from models.metrics import distinct_n, max_ratio
from models.seq2seq import Seq2SeqTransformer
from training.config import Preset
from training.core.data import DialogueExample, sample_examples
from training.core.generator import (
    PairSet,
    Seq2SeqBatch,
    fine_tune_overrides,
    fit_and_save,
    validation_loss_fn,
)
from training.core.run import RunSpec
from training.core.trainer import Objective
from training.pipeline.selection import SelectionRule

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


# --- frequency windows ------------------------------------------------------------------------


class BatchWindow(Generic[K]):
    """Counts of keys over the current and the last ``window_batches`` mini-batches."""

    def __init__(self, window_batches: int) -> None:
        assert window_batches >= 0, f"window_batches must be >= 0, got {window_batches}"
        self.window_batches = window_batches
        self._batches: deque[Counter[K]] = deque()
        self._total: Counter[K] = Counter()
        self._size = 0  # keys counted in the window, with multiplicity

    def _add(self, counts: Counter[K]) -> None:
        self._batches.append(counts)
        self._total.update(counts)
        self._size += sum(counts.values())
        while len(self._batches) > self.window_batches + 1:  # current + the last window_batches
            for key, n in self._batches.popleft().items():
                left = self._total[key] - n
                if left:
                    self._total[key] = left
                else:
                    del self._total[key]
                self._size -= n

    @property
    def num_batches(self) -> int:
        return len(self._batches)

    def __len__(self) -> int:
        """Keys in the window, counted with multiplicity."""
        return self._size

    def count(self, key: K) -> int:
        return self._total.get(key, 0)

    def _encode(self, key: K) -> Any:
        return key

    def _decode(self, data: Any) -> K:
        return cast(K, data)

    def state_dict(self) -> dict[str, Any]:
        """Plain lists (JSON- and ``torch.save``-friendly), oldest batch first."""
        return {
            "window_batches": self.window_batches,
            "batches": [[[self._encode(k), n] for k, n in b.items()] for b in self._batches],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window_batches = int(state["window_batches"])
        self._batches.clear()
        self._total.clear()
        self._size = 0
        for batch in state["batches"]:
            self._add(Counter({self._decode(k): int(n) for k, n in batch}))


# --- shared plumbing --------------------------------------------------------------------------


def greedy_replies(
    model: nn.Module, src: Tensor, decoding: DecodingConfig, prior_src: Tensor | None = None
) -> list[list[int]]:
    """The model's replies to ``src`` without gradients and without dropout (eval mode), the
    training mode restored afterwards. Unwraps DistributedDataParallel. With ``decoding.anti_lm``
    the prior is the model as it is now on ``prior_src`` (required then)."""
    core = cast(Seq2SeqTransformer, getattr(model, "module", model))
    was_training = core.training
    core.eval()
    try:
        prior = None
        if decoding.anti_lm > 0 and prior_src is not None:
            prior = ContextFreePrior(core, prior_src.to(src.device))
        return generate(core, src, decoding, prior=prior).tokens
    finally:
        core.train(was_training)


# NT's step selections (Preset.nt_select) other than "last", and the statistic each minimises
GENERICNESS = {"least-generic": "max-ratio", "most-distinct": "dist-2"}


def greedy_genericness_fn(
    pairs: PairSet,
    decoding: DecodingConfig,
    *,
    criterion: str = "max-ratio",
    max_ppl: float | None = None,
    examples: int = 500,
    batch_size: int = 128,
) -> Callable[[nn.Module], dict[str, float]]:
    """Model selection for the fine-tunes that fight generic replies (NT), on the greedy replies
    to ``examples`` validation sources drawn across the split. ``val_loss``, lower is better:

    - ``criterion="max-ratio"``: He & Glass's max-ratio (:func:`models.metrics.max_ratio`), the
      share of the single most frequent reply;
    - ``criterion="dist-2"``: minus Dist-2 (Li et al. 2016, :func:`models.metrics.distinct_n`),
      distinct bigrams over all bigrams of the replies, which counts every repeated reply, not
      only the most frequent one.

    A step whose validation perplexity is above ``max_ppl`` scores above every step within it
    (1 + max-ratio, or 2 - Dist-2). Both statistics are logged whatever the criterion."""
    if criterion not in GENERICNESS.values():
        raise ValueError(
            f"criterion must be one of {sorted(GENERICNESS.values())}, got {criterion!r}"
        )
    nll = validation_loss_fn(pairs)
    rows = sample_examples(range(len(pairs)), examples)  # across dialogues, not the first
    prior_src = context_free_source(pairs.tokenizer)

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        replies = [
            text
            for start in range(0, len(rows), batch_size)
            for text in pairs.tokenizer.decode_batch(
                greedy_replies(
                    model,
                    pairs.collate(rows[start : start + batch_size], device).src,
                    decoding,
                    prior_src,
                )
            )
        ]
        ratio, dist2 = max_ratio(replies), distinct_n(replies, 2)
        out = nll(model)
        eligible = max_ppl is None or out["val_ppl"] <= max_ppl
        if criterion == "max-ratio":
            loss = ratio if eligible else 1.0 + ratio
        else:
            loss = -dist2 if eligible else 2.0 - dist2
        return {
            "val_loss": loss,
            "val_max_ratio": ratio,
            "val_dist2": dist2,
            "val_nll": out["val_loss"],
            "val_ppl": out["val_ppl"],
            "val_ppl_eligible": float(eligible),
        }

    return evaluate


def gather_across_ranks(items: list[T]) -> list[T]:
    """Every rank's ``items`` concatenated in rank order (identity without a process group), so
    all ranks keep identical frequency windows and rank 0's checkpoint fits them all."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    parts: list[list[T] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in (part or [])]


def pad_cat(a: Tensor, b: Tensor, pad_id: int) -> Tensor:
    """Stack (B1, T1) over (B2, T2), right-padding to max(T1, T2)."""
    width = max(a.size(1), b.size(1))
    return torch.cat(
        [
            F.pad(a, (0, width - a.size(1)), value=pad_id),
            F.pad(b, (0, width - b.size(1)), value=pad_id),
        ]
    )


def joint_logits(
    model: nn.Module, batch: Seq2SeqBatch, extra_src: Tensor, extra_in: Tensor, pad_id: int
) -> tuple[Tensor, Tensor]:
    """Logits of the gold pairs and of extra (source, decoder input) rows from ONE forward pass
    (two forwards before one backward would break DistributedDataParallel). Right-padding the
    shorter targets changes nothing: decoder self-attention is causal."""
    b, t = batch.tgt_in.shape
    logits = model(
        torch.cat([batch.src, extra_src]), pad_cat(batch.tgt_in, extra_in, pad_id)
    ).logits
    return logits[:b, :t], logits[b:, : extra_in.size(1)]


# --- objectives -------------------------------------------------------------------------------


# --- jobs -------------------------------------------------------------------------------------


def fine_tune_standard(
    run: RunSpec,
    method: str,
    make_objective: Callable[[GenerativeResponder], Objective],
    hyper: dict[str, Any],
    *,
    base_bundle: Path,
    preset: Preset,
    train_examples: Sequence[DialogueExample],
    val_examples: Sequence[DialogueExample],
    optimizer: str,
    lr: float | None,
    max_steps: int | None,
    select: str = "last",
) -> Manifest | None:
    """Load the standard bundle, fine-tune it with a constant learning rate, write a bundle: the
    last weights (``select="last"``), or those of the evaluated step (``preset.nt_select_evals``
    evenly spaced, from half the budget on) whose greedy validation replies are the least
    generic by :data:`GENERICNESS`'s statistic for ``select``: the lowest max-ratio
    ("least-generic") or the highest Dist-2 ("most-distinct")."""
    base = GenerativeResponder.load(base_bundle)
    assert base.inputs == preset.inputs, (
        f"{base_bundle} was trained with inputs {base.inputs}, preset {preset.name!r} has "
        f"{preset.inputs}: fine-tune under the preset that built the standard model"
    )
    train_pairs = PairSet.encode(train_examples, base.tokenizer, preset.inputs)
    val_pairs = PairSet.encode(val_examples, base.tokenizer, preset.inputs)
    schedule = fine_tune_overrides(base, preset)  # NT/UL run a fixed budget; val loss only rises
    if lr is None:  # where the standard model's schedule ended (see train_nt_generator)
        lr = float(schedule["lr"])
    steps = max_steps if max_steps is not None else preset.generator.train.max_steps
    logger.info(
        "fine-tuning %s with %s from %s: lr %.2e, %d steps",
        run.name,
        method,
        base.bundle_id,
        lr,
        steps,
    )
    overrides: dict[str, Any] = {"optimizer": optimizer, **schedule, "lr": lr, "max_steps": steps}
    evaluate = None
    if select != "last":
        every = max(1, steps // preset.nt_select_evals)
        # from half the budget on: earlier steps were above the perplexity bound in 5 of the 6
        # seed runs of reports/nt_select_small.md (NT's first updates raise perplexity)
        overrides.update(keep="best", eval_every=every, eval_from=steps // 2, patience=steps + 1)
        greedy = preset.decoding.with_overrides(strategy="greedy", num_return_sequences=1)
        # Only steps the build's selection would consider (training/pipeline/selection.py):
        # validation perplexity within its ratio of the base model's.
        max_ppl = (
            SelectionRule().max_ppl_ratio * validation_loss_fn(val_pairs)(base.model)["val_ppl"]
        )
        evaluate = greedy_genericness_fn(
            val_pairs,
            greedy,
            criterion=GENERICNESS[select],
            max_ppl=max_ppl,
            examples=preset.nt_select_examples,
        )
        hyper = {**hyper, "select_max_ppl": round(max_ppl, 3)}
    return fit_and_save(
        run,
        base.model.train(),
        make_objective(base),
        preset=preset,
        tokenizer=base.tokenizer,
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        train_overrides=overrides,
        training={
            "method": method,
            "base": base.bundle_id,
            **hyper,
            "optimizer": optimizer,
            "lr_schedule": "constant",
            "lr": lr,
            "select": select,
        },
        evaluate=evaluate,
    )

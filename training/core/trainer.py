"""One training loop for every objective: warm-up schedule, clipping, AMP, DDP, early stopping,
checkpoints with exact resume, a JSONL log and a loss-curve plot.

An objective is a callable ``(model, batch) -> (loss, {name: float})``; the MLE, negative
distillation and retrieval losses all plug in here. Data come as a deterministic function of the
epoch (``make_epoch(epoch) -> list of batches of example indices``), so a resumed run replays the
same batches in the same order and, with the RNG states restored, reaches the same weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.device import native_bf16
from training.core.checkpoint import (
    atomic_save_weights,
    atomic_torch_save,
    load_checkpoint_file,
    rng_state,
    set_rng_state,
)
from training.core.distributed import DistContext, barrier

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
BEST_WEIGHTS_FILE = "best.safetensors"
LOG_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"
STALE_CHECKPOINT_FILE = "checkpoint.stale.pt"  # a checkpoint another run left, kept aside

# TrainConfig fields a resumed run may change: the budget ("train longer"), the wall-clock cap,
# the validation/logging cadence and the early-stopping patience. Any other change (learning
# rate, batch size, seed, optimizer...) makes the checkpoint another run's.
RESUMABLE_CHANGES = frozenset(
    {"max_steps", "max_seconds", "progress", "log_every", "eval_every", "eval_from", "patience"}
)


@dataclass
class TrainConfig:
    """Optimisation settings; presets fill these in (see training/config)."""

    max_steps: int = 1000  # optimizer updates
    batch_size: int = 64  # examples per update, over all ranks together
    optimizer: str = "adam"  # adam | adamw | sgd (He & Glass fine-tune with plain SGD)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (adamw only)
    # noam (ND eq. 17) | constant (``lr``) | linear (warm-up to ``lr``, then linearly to 0 at
    # max_steps: for a fixed budget it ends lower than eq. 17's 1/sqrt(s) tail, see training/config)
    lr_schedule: str = "noam"
    lr: float = 1e-3  # the constant learning rate, or the peak of the linear schedule
    warmup_steps: int = 4000  # s_wp of ND eq. 17 (paper: 128000 on DailyDialog)
    lr_scale: float = 2.0  # the numerator of ND eq. 17
    lr_dim: int = 512  # d_model in ND eq. 17
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    clip_norm: float = 1.0  # max global gradient L2 norm
    eval_every: int = 200  # updates between validation runs (and checkpoints)
    eval_from: int = 0  # no validation before this update (checkpoints still every eval_every)
    patience: int = 5  # validations without improvement before early stopping
    keep: str = "best"  # best (lowest val_loss, early stopping) | last (fine-tunes: no stopping)
    log_every: int = 10
    seed: int = 0
    # bf16 autocast where the device has native bf16 (CUDA; CPUs with AVX512-BF16 or AMX): 6,314 vs
    # 4,875 tokens/s for fp32 on this workplace's CPU, same loss curve (reports/train_throughput.md)
    amp: bool = True
    progress: bool = True  # tqdm bar on rank 0
    # wall-clock cap (0 = none): the step that passes it is the last, then a final validation
    max_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fused_adam_supported(params: Sequence[nn.Parameter]) -> bool:
    """Whether torch's fused Adam/AdamW kernels take these parameters: floating point, on a CPU
    or a CUDA device (other devices keep the per-tensor loop)."""
    return bool(params) and all(
        p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params
    )


def noam_learning_rate(step: int, d_model: int, warmup_steps: int, scale: float = 2.0) -> float:
    """ND eq. 17: lr = scale * min(1/sqrt(s), s / sqrt(s_wp^3)) / sqrt(d_model), with s >= 1."""
    s = max(step, 1)
    return scale * min(s**-0.5, s * warmup_steps**-1.5) / math.sqrt(d_model)


def linear_warmup_decay(step: int, peak: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    s = max(step, 1)
    if s <= warmup_steps:
        return peak * s / max(warmup_steps, 1)
    return peak * max(0.0, (total_steps - s) / max(total_steps - warmup_steps, 1))


class Objective(Protocol):
    """``(model, batch) -> (loss, {name: float})`` for one update.

    Optional, for objectives that are a procedure rather than a loss over a fixed data stream
    (He & Glass's Algorithm 1: search triggers, update while they hit, search again):

    * ``prepare(model, checkpoint)`` runs before every update, outside autocast, with the
      unwrapped model; it may call ``checkpoint()`` to save the whole run (weights, optimizer,
      RNG, its own ``state_dict``) at a point of its choosing, e.g. after each finished search;
    * ``finished`` (bool): once True after ``prepare``, the run ends there (a last validation and
      checkpoint, stop reason "objective finished") even before ``max_steps``.
    """

    def __call__(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]: ...


@dataclass
class TrainState:
    """Everything a resumed run needs besides weights and optimizer moments."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of ``epoch`` already consumed
    best_val: float = float("inf")
    best_step: int = 0
    bad_evals: int = 0
    finished: bool = False
    stop_reason: str = ""
    elapsed_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def best_record(self) -> dict[str, float]:
        """The validation record of the kept (best) step; empty when none was validated."""
        return next((h for h in self.history if h["step"] == self.best_step), {})


@dataclass
class TrainResult:
    state: TrainState
    run_dir: Path

    @property
    def best_weights(self) -> Path:
        return self.run_dir / BEST_WEIGHTS_FILE


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, for naming what changed between two runs."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes), in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_fingerprint(train: TrainConfig, run_config: Any, init: str) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the TrainConfig (less
    ``RESUMABLE_CHANGES``), the digest of the weights the run started from (the architecture,
    seed, warm start or fine-tuned bundle, however its path was spelled) and the job's own
    ``run_config`` (the objective's settings, the data), as plain JSON values."""
    trajectory = {k: v for k, v in train.to_dict().items() if k not in RESUMABLE_CHANGES}
    plain = {"train": trajectory, "init": init, "run": run_config}
    return json.loads(json.dumps(plain, default=str))


def fingerprint_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two fingerprints (added/removed ones too)."""
    a, b = _flat(old), _flat(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, ...) != b.get(k, ...))


def _objective_state(objective: Any) -> Any:
    """An objective with running state (a schedule position, frequency windows) exposes
    ``state_dict()``/``load_state_dict()``; it is checkpointed with the weights."""
    return objective.state_dict() if hasattr(objective, "state_dict") else None


class Trainer:
    """Runs ``objective`` over ``make_epoch`` batches until max_steps or early stopping."""

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        config: TrainConfig,
        *,
        run_dir: Path,
        make_epoch: Callable[[int], Sequence[Sequence[int]]],
        collate: Callable[[Sequence[int]], Any],
        evaluate: Callable[[nn.Module], dict[str, float]],
        dist_ctx: DistContext,
        parameters: Sequence[nn.Parameter] | None = None,
        run_config: Any = None,
    ) -> None:
        """``run_config``: JSON-able facts that define the run besides ``config`` and the
        model's starting weights (the objective's settings, the data). A checkpoint written
        under other facts is not resumed (:meth:`load_checkpoint`)."""
        self.fingerprint = run_fingerprint(config, run_config, weights_digest(model))
        self.model = model.to(dist_ctx.device)
        self.objective = objective
        self.cfg = config
        self.run_dir = run_dir
        self.make_epoch = make_epoch
        self.collate = collate
        self.evaluate = evaluate
        self.ctx = dist_ctx
        params = list(parameters) if parameters is not None else list(model.parameters())
        self.optimizer: torch.optim.Optimizer
        # The fused (single-kernel) Adam: the same update, 2.2-7.7x faster on this CPU than the
        # per-tensor loop (reports/optimizer_step.md); the safety classifier's 8.9M-parameter
        # bag model spent two thirds of each step there.
        fused = fused_adam_supported(params)
        if config.optimizer == "adam":
            self.optimizer = torch.optim.Adam(
                params, lr=0.0, betas=config.betas, eps=config.eps, fused=fused
            )
        elif config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(
                params,
                lr=0.0,
                betas=config.betas,
                eps=config.eps,
                weight_decay=config.weight_decay,
                fused=fused,
            )
        elif config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=0.0)
        else:
            raise ValueError(f"unknown optimizer {config.optimizer!r} (adam | adamw | sgd)")
        if config.keep not in ("best", "last"):
            raise ValueError(f"unknown keep {config.keep!r} (best | last)")
        if config.lr_schedule not in ("noam", "constant", "linear"):
            raise ValueError(
                f"unknown lr_schedule {config.lr_schedule!r} (noam | constant | linear)"
            )
        self.train_model: nn.Module = (
            DistributedDataParallel(
                self.model,
                device_ids=[dist_ctx.local_rank] if dist_ctx.device.type == "cuda" else None,
            )
            if dist_ctx.distributed
            else self.model
        )
        self.state = TrainState()

    def learning_rate(self, step: int) -> float:
        if self.cfg.lr_schedule == "constant":
            return self.cfg.lr
        if self.cfg.lr_schedule == "linear":
            return linear_warmup_decay(step, self.cfg.lr, self.cfg.warmup_steps, self.cfg.max_steps)
        return noam_learning_rate(step, self.cfg.lr_dim, self.cfg.warmup_steps, self.cfg.lr_scale)

    # --- persistence -------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    def save_checkpoint(self) -> None:
        if not self.ctx.is_main:
            return
        atomic_torch_save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "state": asdict(self.state),
                "rng": rng_state(),
                "config": self.cfg.to_dict(),
                "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
                "objective": _objective_state(self.objective),
            },
            self.checkpoint_path,
        )

    def load_checkpoint(self) -> bool:
        """Restore a previous run's checkpoint; False when there is none, or when it was
        written by a run with other settings (its fingerprint differs: another learning rate,
        loss, data or initialisation). Such a checkpoint is not resumed, which would finish the
        old run under the new name: it is moved aside to ``checkpoint.stale.pt`` (nothing is
        lost) and the run starts over. Checkpoints from before fingerprints resume as before."""
        if not self.checkpoint_path.exists():
            return False
        ckpt = load_checkpoint_file(self.checkpoint_path, map_location=self.ctx.device)
        if "fingerprint" in ckpt:
            changed = fingerprint_changes(json.loads(ckpt["fingerprint"]), self.fingerprint)
            if changed:
                logger.warning(
                    "%s was written by a run with other settings (changed: %s); not resuming "
                    "it: moved to %s, starting over",
                    self.checkpoint_path,
                    ", ".join(changed),
                    STALE_CHECKPOINT_FILE,
                )
                barrier(self.ctx)  # every rank has read it before rank 0 moves it
                if self.ctx.is_main:
                    os.replace(self.checkpoint_path, self.run_dir / STALE_CHECKPOINT_FILE)
                return False
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])
        if ckpt.get("objective") is not None and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(ckpt["objective"])
        logger.info("resumed from %s at step %d", self.checkpoint_path, self.state.step)
        return True

    def _extend_finished_run(self) -> bool:
        """Whether a finished run continues: one that stopped at its step budget does when
        ``max_steps`` was raised since ("train longer" without starting over). With the noam and
        constant schedules, which do not depend on ``max_steps``, the result is the run a larger
        budget would have given from the start (a test holds them equal); the linear schedule's
        decay is stretched from here on instead."""
        state = self.state
        if state.stop_reason != "max_steps" or state.step >= self.cfg.max_steps:
            return False
        logger.info(
            "%s stopped at its budget of %d steps; continuing to %d",
            self.run_dir,
            state.step,
            self.cfg.max_steps,
        )
        state.finished, state.stop_reason = False, ""
        return True

    def _truncate_log(self, step: int) -> None:
        """Keep only the log rows at or before ``step`` (the checkpoint's): the rows a killed run
        wrote after its last checkpoint are written again by the resumed run, and a torn last
        line (killed mid-write) is dropped."""
        path = self.run_dir / LOG_FILE
        if not self.ctx.is_main or not path.exists():
            return
        kept, dropped = [], 0
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    keep = isinstance(row, dict) and int(row["step"]) <= step
                except (ValueError, KeyError, TypeError):
                    keep = False
                if keep:
                    kept.append(line if line.endswith("\n") else line + "\n")
                else:
                    dropped += 1
        if not dropped:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
        logger.info(
            "%s: dropped %d rows logged after the checkpoint (step %d)", path, dropped, step
        )

    def _log(self, record: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        with open(self.run_dir / LOG_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")

    # --- the loop ----------------------------------------------------------------------------

    def _batches(self) -> Any:
        """Yield (epoch, index, this rank's share of the batch), endlessly, from the saved position."""
        while True:
            epoch_batches = self.make_epoch(self.state.epoch)
            assert epoch_batches, "make_epoch returned no batches: is the training set empty?"
            for i in range(self.state.batch_in_epoch, len(epoch_batches)):
                yield i, epoch_batches[i][self.ctx.rank :: self.ctx.world_size], len(epoch_batches)
            # fit() advanced state.epoch when it consumed the last batch of this one.

    def _run_eval(self) -> bool:
        """Validate, keep the best weights, decide on early stopping; True means stop."""
        self.model.eval()
        metrics = self.evaluate(self.model)
        self.model.train()
        val = metrics["val_loss"]
        improved = val < self.state.best_val
        if self.cfg.keep == "last" or improved:  # fixed-length fine-tunes keep their final weights
            self.state.best_val, self.state.best_step, self.state.bad_evals = (
                val,
                self.state.step,
                0,
            )
            if self.ctx.is_main:
                atomic_save_weights(self.model, self.run_dir / BEST_WEIGHTS_FILE)
        else:
            self.state.bad_evals += 1
        record = {"step": self.state.step, "kind": "eval", **metrics, "improved": improved}
        self.state.history.append({"step": float(self.state.step), **metrics})
        self._log(record)
        logger.info("step %d: %s", self.state.step, {k: round(v, 4) for k, v in metrics.items()})
        return self.state.bad_evals >= self.cfg.patience

    def fit(self, *, resume: bool = True) -> TrainResult:
        """Train to the end (or resume to it); the best weights are in ``run_dir/best.safetensors``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.load_checkpoint():
            if self.state.finished and not self._extend_finished_run():
                return TrainResult(self.state, self.run_dir)
            self._truncate_log(self.state.step)
        if self.state.step == 0:
            torch.manual_seed(self.cfg.seed)
            if self.ctx.is_main:
                (self.run_dir / LOG_FILE).unlink(missing_ok=True)  # a fresh run starts a fresh log
        use_amp = self.cfg.amp and native_bf16(self.ctx.device)
        self.model.train()
        bar = tqdm(
            total=self.cfg.max_steps,
            initial=self.state.step,
            disable=not (self.cfg.progress and self.ctx.is_main),
            desc=self.run_dir.name,
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,  # logs stay readable
        )
        started = time.monotonic() - self.state.elapsed_s
        prepare = getattr(self.objective, "prepare", None)

        def checkpoint_now() -> None:
            self.state.elapsed_s = time.monotonic() - started
            self.save_checkpoint()

        stop = False
        for index, indices, n_batches in self._batches():
            if self.state.step >= self.cfg.max_steps or stop:
                break
            if prepare is not None:
                prepare(self.model, checkpoint_now)
                if getattr(self.objective, "finished", False):
                    self._run_eval()
                    self.state.stop_reason = "objective finished"
                    self.state.finished = True
                    checkpoint_now()
                    break
            lr = self.learning_rate(self.state.step + 1)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batch = self.collate(indices)
            with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, logs = self.objective(self.train_model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.state.step}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
            self.optimizer.step()
            self.state.step += 1
            self.state.batch_in_epoch = index + 1
            if self.state.batch_in_epoch == n_batches:
                self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
            bar.update(1)
            if self.state.step % self.cfg.log_every == 0:
                record = {
                    "step": self.state.step,
                    "kind": "train",
                    "loss": loss.item(),
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "epoch": self.state.epoch,
                    **logs,
                }
                self._log(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
            out_of_time = bool(self.cfg.max_seconds) and (
                time.monotonic() - started > self.cfg.max_seconds
            )
            at_end = self.state.step >= self.cfg.max_steps or out_of_time
            if self.state.step % self.cfg.eval_every == 0 or at_end:
                stop = (self.state.step >= self.cfg.eval_from or at_end) and self._run_eval()
                self.state.elapsed_s = time.monotonic() - started
                if stop:
                    self.state.stop_reason = (
                        f"early stop: no improvement in {self.cfg.patience} evaluations"
                    )
                elif out_of_time:
                    self.state.stop_reason = f"max_seconds ({self.cfg.max_seconds:g} s)"
                elif at_end:
                    self.state.stop_reason = "max_steps"
                self.state.finished = stop = stop or at_end
                self.save_checkpoint()
        bar.close()
        self.state.elapsed_s = time.monotonic() - started
        if self.ctx.is_main:
            plot_training_log(self.run_dir / LOG_FILE, self.run_dir / PLOT_FILE)
        return TrainResult(self.state, self.run_dir)

    def load_best(self) -> None:
        """Load the best validated weights into the model (rank 0 wrote them: wait for it)."""
        barrier(self.ctx)
        self.model.load_state_dict(
            load_file(self.run_dir / BEST_WEIGHTS_FILE, device=str(self.ctx.device))
        )


def read_log(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training_log(log_path: Path, out_path: Path) -> None:
    """Training loss, validation loss and learning rate against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    ax.plot(
        [r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation loss"
    )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(log_path.parent.name)
    ax.grid(alpha=0.3)
    if train:
        lr_ax = ax.twinx()
        lr_ax.plot([r["step"] for r in train], [r["lr"] for r in train], "g:", lw=1, label="lr")
        lr_ax.set_ylabel("learning rate")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)

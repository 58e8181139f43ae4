"""Negative distillation (Li et al., NAACL 2022): keep a student away from a *negative teacher*
trained on the most generic pairs, at the prediction layer and at every decoder layer.

* :func:`source_entropy` (eq. 4) and :func:`negative_set` (top 50% of pairs by H_src of their
  response) build D_N; the negative teacher is an MLE generator trained on D_N.
* :class:`NegativeDistillationLoss` is eq. 13 without the schedule:
  L_pred (eq. 6, soft unlikelihood at temperature t, eq. 7) + Σ_l L_hid^l (eq. 9) + Σ_l L_att^l
  (eq. 12), with MRSE (eq. 8) as the distance to *maximise* (so minimised as a loss).
* :func:`progressive_alpha` is eqs. 14-16.
* :class:`NDObjective` combines them with MLE for the trainer: (1-α) L_mle + α L_nd.

Normalisation (the paper writes sums): L_pred is averaged over target tokens (a sum over the
vocabulary at each position), so it sits on the scale of the per-token MLE loss; each MRSE is a
mean over the valid elements of its matrix (padding and, for attention, future positions excluded).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.bundle import Manifest
from models.generator import GenerativeResponder
from models.seq2seq import Seq2SeqOutput, Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.core.data import DialogueExample
from training.core.distributed import DistContext
from training.core.generator import (
    PairSet,
    Seq2SeqBatch,
    build_generator_model,
    fine_tune_overrides,
    run_generator_training,
    save_generator,
)
from training.core.losses import LABEL_SMOOTHING, expected_unlikelihood, smoothed_nll
from training.core.trainer import LOG_FILE, read_log
from training.methods.nd.entropy import (
    EntropyConfig,
    NegativeSetStats,
    negative_set_stats,
    pair_source_entropy,
    top_fraction,
)
from training.presets import NDPreset, Preset

# --- D_N: source entropy ------------------------------------------------------------------------


def source_entropy(examples: Sequence[DialogueExample]) -> dict[str, float]:
    """ND eq. 4 (Csáky et al. 2019): H_src(r) = -Σ_q p(q|r) log p(q|r) for every response r.

    p(q|r) is the relative frequency of query q among the training pairs whose response is r;
    a query is the whole context (its turns joined). Natural log.
    """
    queries: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
    for ex in examples:
        queries[ex.response][ex.context] += 1
    entropy: dict[str, float] = {}
    for response, counts in queries.items():
        total = sum(counts.values())
        entropy[response] = -sum((c / total) * math.log(c / total) for c in counts.values()) + 0.0
    return entropy


@dataclass
class NegativeSet:
    """D_N and what it looks like."""

    examples: list[DialogueExample]
    threshold: float  # the lowest H_src inside D_N
    top_responses: list[
        tuple[str, float, int]
    ]  # (response, H_src, pairs in D_N), most generic first
    top20_share_in_dn: float  # share of D_N pairs whose response is one of D's 20 most frequent
    top20_share_in_d: float
    entropy: EntropyConfig = field(default_factory=EntropyConfig)  # how H_src was computed
    stats: NegativeSetStats | None = None  # ties, frequent responses, length, Dist-2 vs D


def negative_set(
    examples: Sequence[DialogueExample],
    fraction: float = 0.5,
    seed: int = 0,
    entropy: EntropyConfig | None = None,
) -> NegativeSet:
    """The top ``fraction`` of pairs by H_src of their response (ND Alg. 1, lines 2-4).

    ``entropy`` says how H_src (eq. 4) is computed: over exact strings (the default, "identity",
    :func:`source_entropy`) or over clusters of utterances (Csáky et al. 2019; see
    training/methods/nd/entropy.py), where a pair's score is its response cluster's entropy. Ties at the
    cut (under identity most pairs have H_src = 0) are broken by a seeded shuffle, so D_N is not
    biased toward the corpus order.
    """
    assert 0 < fraction <= 1, f"fraction must be in (0, 1], got {fraction}"
    cfg = entropy or EntropyConfig()
    pair_h = pair_source_entropy(examples, cfg).entropy
    keep = top_fraction(pair_h.tolist(), fraction, seed)
    dn = [examples[i] for i in sorted(keep)]
    h = {e.response: float(v) for e, v in zip(examples, pair_h.tolist(), strict=True)}
    d_counts = Counter(e.response for e in examples)
    dn_counts = Counter(e.response for e in dn)
    top20 = {r for r, _ in d_counts.most_common(20)}
    top = sorted(dn_counts, key=lambda r: (-h[r], -dn_counts[r]))[:20]
    return NegativeSet(
        examples=dn,
        threshold=min(h[e.response] for e in dn),
        top_responses=[(r, h[r], dn_counts[r]) for r in top],
        top20_share_in_dn=sum(dn_counts[r] for r in top20) / len(dn),
        top20_share_in_d=sum(d_counts[r] for r in top20) / len(examples),
        entropy=cfg,
        stats=negative_set_stats(
            examples, pair_h, keep, fraction=fraction, method=cfg.describe(), seed=seed
        ),
    )


# --- the losses ---------------------------------------------------------------------------------


def soft_unlikelihood(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """ND eq. 6-7: mean over valid positions of -Σ_k p_N(k) log(1 - p_S(k)), softmaxes at ``t``.

    logits: (B, T, V); mask: (B, T) True at target positions that count.
    """
    p_teacher = (teacher_logits.float() / temperature).softmax(dim=-1)
    return expected_unlikelihood(student_logits, p_teacher, mask, temperature)


def mrse(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """ND eq. 8, mean reverse square error: mean over elements of exp(-(a - b)^2).

    1 when a == b, toward 0 as they move apart; minimising it *increases* the distance.
    ``mask`` (broadcastable to a) selects the elements that count.
    """
    rse = torch.exp(-(a.float() - b.float()).pow(2))
    if mask is None:
        return rse.mean()
    mask = mask.expand_as(rse)
    return (rse * mask).sum() / mask.sum().clamp(min=1)


def progressive_alpha(
    step: int, gamma: float, lam: float = NDPreset.lam, beta: float | None = None
) -> float:
    """ND eqs. 14-16: α = λ e^{-z} / (e^{-z} + 1)^2 with z = β (s - γ); β defaults to 6/γ.

    With λ = 4 the peak, at s = γ, is exactly 1; α ≈ 0.01 at s = 0 and s = 2γ.
    """
    beta = 6.0 / gamma if beta is None else beta
    z = beta * (step - gamma)
    # e^{-z}/(e^{-z}+1)^2 == sigmoid(z) * (1 - sigmoid(z)); this form cannot overflow.
    sig = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return lam * sig * (1.0 - sig)


def mean_progressive_alpha(total_steps: int, gamma: float, lam: float = NDPreset.lam) -> float:
    """The schedule's mean over a run (the 'fixed α' ablation uses it)."""
    return float(np.mean([progressive_alpha(s, gamma, lam) for s in range(1, total_steps + 1)]))


@dataclass(frozen=True)
class NDLossConfig:
    """Which parts of eq. 13's distillation term are on (the paper's ablations switch them off)."""

    use_pred: bool = True
    use_hid: bool = True
    use_att: bool = True
    temperature: float = 1.0  # t of eq. 7 (paper: 1)
    targets: str = "soft"  # soft (eq. 6) | hard (one-hot teacher argmax) | random (a D_N reply)


class NegativeDistillationLoss(nn.Module):
    """L_pred + Σ_l L_hid^l + Σ_l L_att^l of ND eq. 13, from teacher and student outputs."""

    def __init__(self, cfg: NDLossConfig, pad_id: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.pad_id = pad_id

    def forward(
        self, student: Seq2SeqOutput, teacher: Seq2SeqOutput, tgt_in: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        valid = tgt_in.ne(self.pad_id)  # (B, T) real target positions (BOS counts, pads do not)
        parts: dict[str, Tensor] = {}
        zero = student.logits.new_zeros(())
        if self.cfg.use_pred:
            if self.cfg.targets == "hard":
                hard = F.one_hot(teacher.logits.argmax(-1), teacher.logits.size(-1)).float()
                # one-hot "logits" with t=1 softmax would blur them; use the one-hot as p_N directly
                parts["pred"] = expected_unlikelihood(
                    student.logits, hard, valid, self.cfg.temperature
                )
            else:
                parts["pred"] = soft_unlikelihood(
                    student.logits, teacher.logits, valid, self.cfg.temperature
                )
        if self.cfg.use_hid:
            m = valid[..., None]  # (B, T, 1)
            parts["hid"] = sum(
                (
                    mrse(h_t, h_s, m)
                    for h_t, h_s in zip(teacher.hidden_states, student.hidden_states, strict=True)
                ),
                zero,
            )
        if self.cfg.use_att:
            t = tgt_in.size(1)
            causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).tril()
            m = valid[:, None, :, None] & valid[:, None, None, :] & causal  # (B, 1, T, T)
            parts["att"] = sum(
                (
                    mrse(a_t, a_s, m)
                    for a_t, a_s in zip(
                        teacher.self_attn_logits, student.self_attn_logits, strict=True
                    )
                ),
                zero,
            )
        total = sum(parts.values(), zero)
        return total, parts


class NDObjective:
    """Eq. 13 for the trainer: (1-α) L_mle + α (L_pred + Σ L_hid + Σ L_att), α from eqs. 14-16.

    The teacher is frozen (eval mode, no gradient). ``fixed_alpha`` replaces the schedule (the
    ablation). ``random_targets`` (ablation): per batch, D_N replies whose teacher-forced student
    distribution is pushed away from the reply's own tokens, instead of the teacher's soft labels.
    """

    def __init__(
        self,
        teacher: Seq2SeqTransformer,
        *,
        pad_id: int,
        gamma: float,
        lam: float = NDPreset.lam,
        label_smoothing: float = LABEL_SMOOTHING,
        loss: NDLossConfig | None = None,
        fixed_alpha: float | None = None,
        random_targets: Sequence[Sequence[int]] | None = None,
        bos_id: int = 1,
        eos_id: int = 2,
        seed: int = 0,
    ) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.gamma, self.lam = gamma, lam
        self.label_smoothing = label_smoothing
        self.loss_cfg = loss or NDLossConfig()
        self.nd_loss = NegativeDistillationLoss(self.loss_cfg, pad_id)
        self.fixed_alpha = fixed_alpha
        self.random_targets = [list(r) for r in random_targets] if random_targets else None
        self._rng = np.random.default_rng(seed)
        self.step = 0

    def alpha(self, step: int) -> float:
        if self.fixed_alpha is not None:
            return self.fixed_alpha
        return progressive_alpha(step, self.gamma, self.lam)

    def __call__(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, float]]:
        self.step += 1
        alpha = self.alpha(self.step)
        student = model(batch.src, batch.tgt_in, return_internals=True)
        mle = smoothed_nll(student.logits, batch.tgt_out, self.pad_id, self.label_smoothing)
        if self.loss_cfg.targets == "random":
            nd, parts = self._random_target_loss(model, batch)
        else:
            with torch.no_grad():
                teacher = self.teacher(batch.src, batch.tgt_in, return_internals=True)
            nd, parts = self.nd_loss(student, teacher, batch.tgt_in)
        loss = (1 - alpha) * mle + alpha * nd
        logs = {
            "alpha": alpha,
            "mle": mle.item(),
            **{f"nd_{k}": v.item() for k, v in parts.items()},
        }
        return loss, logs

    def _random_target_loss(
        self, model: nn.Module, batch: Seq2SeqBatch
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Unlikelihood of random D_N replies under the student (the 'random targets' ablation)."""
        assert self.random_targets, "random targets need the D_N replies"
        picks = self._rng.integers(0, len(self.random_targets), size=batch.src.size(0))
        replies = [self.random_targets[i] for i in picks.tolist()]
        width = max(len(r) for r in replies) + 1
        tgt_in = batch.src.new_full((len(replies), width), self.pad_id)
        tgt_out = batch.src.new_full((len(replies), width), self.pad_id)
        for i, r in enumerate(replies):
            tgt_in[i, : len(r) + 1] = torch.tensor([self.bos_id, *r])
            tgt_out[i, : len(r) + 1] = torch.tensor([*r, self.eos_id])
        logits = model(batch.src, tgt_in).logits
        one_hot = F.one_hot(tgt_out.clamp(min=0), logits.size(-1)).float()
        pred = expected_unlikelihood(logits, one_hot, tgt_out.ne(self.pad_id), 1.0)
        return pred, {"pred": pred}

    # The trainer checkpoints objectives that expose their state (the schedule position).
    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


# --- the jobs ----------------------------------------------------------------------------------


def train_nd_student(
    *,
    preset: Preset,
    tokenizer: DialogueTokenizer,
    teacher_bundle: Path,
    train_examples: Sequence[DialogueExample],
    val_examples: Sequence[DialogueExample],
    out_dir: Path,
    name: str,
    run_dir: Path,
    dist_ctx: DistContext,
    data_desc: str,
    loss: NDLossConfig | None = None,
    fixed_alpha: bool = False,
    negative_examples: Sequence[DialogueExample] | None = None,
    max_steps: int | None = None,
    init_from: Path | None = None,
    lam: float | None = None,
    resume: bool = True,
    seed: int = 0,
) -> Manifest | None:
    """Train an ND student on D against a frozen negative teacher (ND Alg. 1, lines 9-12).

    The paper trains the student from scratch. ``init_from`` (a generator bundle, e.g. the
    standard model) instead starts from trained weights and runs the ND schedule as a fine-tune
    at the constant learning rate where that model's schedule ended, keeping the last weights:
    the variant for budgets too short for the from-scratch protocol (see reports/).
    """
    teacher = GenerativeResponder.load(teacher_bundle, device=dist_ctx.device)
    if teacher.tokenizer.to_str() != tokenizer.to_str():
        raise ValueError(f"teacher {teacher_bundle} was trained with a different tokenizer")
    if teacher.model.cfg != replace(preset.generator.model, vocab_size=tokenizer.vocab_size):
        raise ValueError(
            f"teacher {teacher_bundle} has a different architecture than preset {preset.name}"
        )
    steps = max_steps or preset.generator.train.max_steps
    gamma = preset.nd.gamma_fraction * steps
    lam = preset.nd.lam if lam is None else lam
    loss = loss or NDLossConfig(temperature=preset.nd.temperature)
    random_targets = None
    if loss.targets == "random":
        assert negative_examples, "random targets need D_N"
        random_targets = PairSet.encode(negative_examples, tokenizer, preset.inputs).tgt
    objective = NDObjective(
        teacher.model,
        pad_id=tokenizer.pad_id,
        gamma=gamma,
        lam=lam,
        loss=loss,
        fixed_alpha=mean_progressive_alpha(steps, gamma, lam) if fixed_alpha else None,
        random_targets=random_targets,
        seed=seed,
    )
    train_pairs = PairSet.encode(train_examples, tokenizer, preset.inputs)
    val_pairs = PairSet.encode(val_examples, tokenizer, preset.inputs)
    model = build_generator_model(preset, tokenizer, seed)
    overrides: dict[str, object] = {"seed": seed, "max_steps": steps}
    if init_from is not None:
        base = GenerativeResponder.load(init_from)
        if base.tokenizer.to_str() != tokenizer.to_str():
            raise ValueError(f"{init_from} was trained with a different tokenizer")
        model.load_state_dict(base.model.state_dict())
        overrides.update(fine_tune_overrides(base, preset))
    result = run_generator_training(
        model,
        objective,
        preset=preset,
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        run_dir=run_dir,
        dist_ctx=dist_ctx,
        resume=resume,
        train_overrides=overrides,
    )
    if not dist_ctx.is_main:
        return None
    plot_nd_log(run_dir / LOG_FILE, run_dir / "nd_schedule.png")
    return save_generator(
        model,
        tokenizer,
        preset,
        result,
        out_dir=out_dir,
        name=name,
        training={
            "data": data_desc,
            "method": "nd",
            "seed": seed,
            "train_pairs": len(train_pairs),
            "world_size": dist_ctx.world_size,
            "teacher": teacher.bundle_id,
            "nd": {
                "gamma": gamma,
                "beta": 6.0 / gamma,
                "lambda": lam,
                "init_from": str(init_from) if init_from else None,
                "fixed_alpha": objective.fixed_alpha,
                **asdict(loss),
            },
        },
    )


def plot_nd_log(log_path: Path, out_path: Path) -> None:
    """α (eqs. 14-16) and the three ND losses (eqs. 6, 9, 12) against training steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_log(log_path) if r.get("kind") == "train" and "alpha" in r]
    if not records:
        return
    steps = [r["step"] for r in records]
    fig, (ax_alpha, ax_loss) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax_alpha.plot(steps, [r["alpha"] for r in records], "k-")
    ax_alpha.set_ylabel("α (eq. 15)")
    ax_alpha.grid(alpha=0.3)
    for key, label in (
        ("nd_pred", "L_pred (eq. 6)"),
        ("nd_hid", "Σ L_hid (eq. 9)"),
        ("nd_att", "Σ L_att (eq. 12)"),
    ):
        if key in records[0]:
            ax_loss.plot(steps, [r[key] for r in records], label=label, lw=1)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("ND losses")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(loc="upper left")
    ax_mle = ax_loss.twinx()  # MLE is an order of magnitude larger: its own axis
    ax_mle.plot(steps, [r["mle"] for r in records], "k:", lw=1, label="L_mle (right axis)")
    ax_mle.set_ylabel("L_mle")
    ax_mle.legend(loc="upper right")
    fig.suptitle(f"negative distillation: {log_path.parent.name}")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)

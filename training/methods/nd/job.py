"""Negative distillation (Li et al., NAACL 2022): keep a student away from a *negative teacher*
trained on the most generic pairs, at the prediction layer and at every decoder layer. This module
is the student's job; D_N is in training/methods/nd/negative_set.py, the losses and the α schedule
in training/methods/nd/losses.py.

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

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from models.bundle import Manifest
from models.generator import GenerativeResponder
from models.tokenizer import DialogueTokenizer
from training.config import Preset
from training.core.data import DialogueExample
from training.core.generator import (
    PairSet,
    build_generator_model,
    fine_tune_overrides,
    fit_and_save,
    load_init,
)
from training.core.run import RunSpec
from training.core.trainer import LOG_FILE, read_log
from training.methods.nd.losses import NDLossConfig, NDObjective, mean_progressive_alpha

# --- the jobs ----------------------------------------------------------------------------------


def train_nd_student(
    run: RunSpec,
    *,
    preset: Preset,
    tokenizer: DialogueTokenizer,
    teacher_bundle: Path,
    train_examples: Sequence[DialogueExample],
    val_examples: Sequence[DialogueExample],
    loss: NDLossConfig | None = None,
    fixed_alpha: bool = False,
    negative_examples: Sequence[DialogueExample] | None = None,
    max_steps: int | None = None,
    init_from: Path | None = None,
    lam: float | None = None,
) -> Manifest | None:
    """Train an ND student on D against a frozen negative teacher (ND Alg. 1, lines 9-12).

    The paper trains the student from scratch. ``init_from`` (a generator bundle, e.g. the
    standard model) instead starts from trained weights and runs the ND schedule as a fine-tune
    at the constant learning rate where that model's schedule ended, keeping the last weights:
    the variant for budgets too short for the from-scratch protocol (see reports/).
    """
    teacher = GenerativeResponder.load(teacher_bundle, device=run.device)
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
        seed=run.seed,
    )
    train_pairs = PairSet.encode(train_examples, tokenizer, preset.inputs)
    val_pairs = PairSet.encode(val_examples, tokenizer, preset.inputs)
    model = build_generator_model(preset, tokenizer, run.seed)
    overrides: dict[str, object] = {"max_steps": steps}
    if init_from is not None:
        base = load_init(init_from, tokenizer)
        model.load_state_dict(base.model.state_dict())
        overrides.update(fine_tune_overrides(base, preset))
    manifest = fit_and_save(
        run,
        model,
        objective,
        preset=preset,
        tokenizer=tokenizer,
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        train_overrides=overrides,
        training={
            "method": "nd",
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
    if run.is_main:
        plot_nd_log(run.run_dir / LOG_FILE, run.run_dir / "nd_schedule.png")
    return manifest


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

"""Training loop: the eq. 17 schedule, exact resume, early stopping, logs and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.config import PRESETS, Preset
from training.core.data import DialogueExample
from training.core.distributed import DistContext
from training.core.generator import MLEObjective, PairSet, bucketed_batches, run_generator_training
from training.core.run import RunSpec
from training.core.trainer import (
    LOG_FILE,
    PLOT_FILE,
    STALE_CHECKPOINT_FILE,
    TrainConfig,
    Trainer,
    fingerprint_changes,
    noam_learning_rate,
    read_log,
)

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_noam_learning_rate_matches_eq17_by_hand() -> None:
    # d=512, s_wp=4000: at s=4000 both branches meet: 2 * 4000^-0.5 / sqrt(512)
    assert noam_learning_rate(4000, 512, 4000) == pytest.approx(2 * 4000**-0.5 / 512**0.5)
    # warm-up branch at s=100: 2 * 100 / 4000^1.5 / sqrt(512)
    assert noam_learning_rate(100, 512, 4000) == pytest.approx(2 * 100 / 4000**1.5 / math.sqrt(512))
    # decay branch at s=16000: 2 / sqrt(16000) / sqrt(512)
    assert noam_learning_rate(16000, 512, 4000) == pytest.approx(
        2 / math.sqrt(16000) / math.sqrt(512)
    )
    assert noam_learning_rate(0, 512, 4000) == noam_learning_rate(1, 512, 4000)


def test_bucketed_batches_cover_every_example_once_and_are_deterministic() -> None:
    lengths = [(i * 7) % 23 for i in range(103)]
    a = bucketed_batches(lengths, 8, seed=1, epoch=0, bucket_batches=3)
    b = bucketed_batches(lengths, 8, seed=1, epoch=0, bucket_batches=3)
    c = bucketed_batches(lengths, 8, seed=1, epoch=1, bucket_batches=3)
    assert a == b and a != c
    assert sorted(i for batch in a for i in batch) == list(range(103))
    assert all(len(batch) <= 8 for batch in a)


def _tiny_model(tok: DialogueTokenizer) -> Seq2SeqTransformer:
    cfg = Seq2SeqConfig(
        vocab_size=tok.vocab_size,
        d_model=16,
        n_heads=2,
        d_ff=32,
        n_encoder_layers=1,
        n_decoder_layers=1,
        max_positions=64,
    )
    return Seq2SeqTransformer(cfg)


@pytest.fixture(scope="module")
def toy_data() -> tuple[DialogueTokenizer, PairSet, PairSet]:
    words = [
        "hello",
        "how",
        "are",
        "you",
        "fine",
        "thanks",
        "what",
        "time",
        "is",
        "it",
        "now",
        "good",
        "morning",
        "see",
        "later",
    ]
    g = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(120):
        ctx = " ".join(words[int(i)] for i in torch.randint(0, len(words), (5,), generator=g))
        resp = " ".join(words[int(i)] for i in torch.randint(0, len(words), (4,), generator=g))
        examples.append(DialogueExample(context=(ctx,), response=resp))
    tok = DialogueTokenizer.train(
        [w for e in examples for w in (*e.context, e.response)], vocab_size=60
    )
    preset = PRESETS["tiny"]
    return (
        tok,
        PairSet.encode(examples[:100], tok, preset.inputs),
        PairSet.encode(examples[100:], tok, preset.inputs),
    )


def _train(
    tok: DialogueTokenizer,
    train: PairSet,
    val: PairSet,
    run_dir: Path,
    max_steps: int,
    preset: Preset = PRESETS["tiny"],
    run_config: dict | None = None,
    lr_scale: float | None = None,
    init_seed: int = 0,
) -> tuple[Seq2SeqTransformer, list[dict]]:
    torch.manual_seed(init_seed)
    model = _tiny_model(tok)
    run_generator_training(
        model,
        MLEObjective(tok.pad_id),
        preset=preset,
        train_pairs=train,
        val_pairs=val,
        run=RunSpec(Path(), "", run_dir, dist_ctx=CPU, resume=True),
        train_overrides={
            "max_steps": max_steps,
            "batch_size": 16,
            "eval_every": 4,
            "log_every": 1,
            "patience": 100,
            **({"lr_scale": lr_scale} if lr_scale is not None else {}),
        },
        run_config=run_config,
    )
    return model, read_log(run_dir / LOG_FILE)


def test_resume_reaches_the_same_loss_as_an_uninterrupted_run(toy_data, tmp_path: Path) -> None:
    tok, train, val = toy_data
    full_model, full_log = _train(tok, train, val, tmp_path / "full", max_steps=16)
    # "Interrupt" after 8 steps (the last checkpoint), then resume the same run to 16.
    _train(tok, train, val, tmp_path / "resumed", max_steps=8)
    ckpt = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    ckpt["state"]["finished"] = False  # as if killed right after the step-8 checkpoint
    torch.save(ckpt, tmp_path / "resumed" / "checkpoint.pt")
    resumed_model, resumed_log = _train(tok, train, val, tmp_path / "resumed", max_steps=16)

    def losses(log: list[dict]) -> list[float]:
        return [r["loss"] for r in log if r["kind"] == "train"]

    assert len(losses(full_log)) == 16 and len(losses(resumed_log)) == 16
    assert losses(resumed_log) == losses(full_log)  # exactly: same batches, dropout masks, updates
    for p, q in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_a_finished_run_continues_when_its_step_budget_is_raised(toy_data, tmp_path: Path) -> None:
    tok, train, val = toy_data
    full_model, full_log = _train(tok, train, val, tmp_path / "full", max_steps=16)
    run = tmp_path / "longer"
    _, short_log = _train(tok, train, val, run, max_steps=8)
    _, again = _train(tok, train, val, run, max_steps=8)  # the same budget: nothing to do
    assert again == short_log
    longer_model, longer_log = _train(tok, train, val, run, max_steps=16)
    assert longer_log == full_log  # noam schedule: as if the budget had been 16 from the start
    for p, q in zip(full_model.parameters(), longer_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    state = torch.load(run / "checkpoint.pt", weights_only=False)["state"]
    assert state["finished"] and state["step"] == 16 and state["stop_reason"] == "max_steps"


@pytest.mark.parametrize(
    ("first", "then", "changed"),
    [
        ({"run_config": {"loss": "a"}}, {"run_config": {"loss": "b"}}, "run.loss"),
        ({"lr_scale": 1.0}, {}, "train.lr_scale"),
        ({"init_seed": 1}, {}, "init"),  # started from other weights (another warm start)
    ],
)
def test_a_checkpoint_of_other_settings_is_set_aside_not_resumed(
    toy_data,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    first: dict,
    then: dict,
    changed: str,
) -> None:
    # A run dir left by a run of other settings (another loss, learning rate...): resuming it
    # would finish the old run under the new name. The new run starts over instead, exactly as
    # in an empty dir, and the old checkpoint is kept aside.
    tok, train, val = toy_data
    fresh_model, fresh_log = _train(tok, train, val, tmp_path / "fresh", max_steps=8, **then)
    run = tmp_path / "reused"
    _train(tok, train, val, run, max_steps=8, **first)
    old = (run / "checkpoint.pt").read_bytes()
    with caplog.at_level("WARNING", logger="training.core.trainer"):
        model, log = _train(tok, train, val, run, max_steps=8, **then)
    assert f"changed: {changed}" in caplog.text
    assert (run / STALE_CHECKPOINT_FILE).read_bytes() == old
    assert log == fresh_log
    for p, q in zip(fresh_model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # the same settings again resume it (finished: nothing to do)
    caplog.clear()
    _, again = _train(tok, train, val, run, max_steps=8, **then)
    assert again == fresh_log and "other settings" not in caplog.text


def test_fingerprint_changes_names_every_differing_key() -> None:
    old = {"train": {"lr": 1.0, "betas": [0.9, 0.98]}, "run": {"model": {"d": 8}, "gone": 1}}
    new = {"train": {"lr": 1.0, "betas": [0.9, 0.99]}, "run": {"model": {"d": 16}, "new": 2}}
    assert fingerprint_changes(old, new) == ["run.gone", "run.model.d", "run.new", "train.betas"]
    assert fingerprint_changes(old, old) == []


def test_resume_truncates_the_log_to_the_checkpoint(toy_data, tmp_path: Path) -> None:
    tok, train, val = toy_data
    _, full_log = _train(tok, train, val, tmp_path / "full", max_steps=16)
    run = tmp_path / "killed"
    _train(tok, train, val, run, max_steps=8)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    ckpt["state"]["finished"] = False
    torch.save(ckpt, run / "checkpoint.pt")
    # Killed at step 10, mid-write: rows 9 and 10 logged after the step-8 checkpoint, then a torn one.
    after = [json.dumps(r) for r in full_log if r["step"] in (9, 10)]
    with open(run / LOG_FILE, "a") as f:
        f.write("\n".join(after) + '\n{"step": 11, "kind": "tr')
    _, resumed_log = _train(tok, train, val, run, max_steps=16)
    steps = [(r["kind"], r["step"]) for r in resumed_log]
    assert len(steps) == len(set(steps))  # no repeated rows
    assert [s for k, s in steps if k == "train"] == list(range(1, 17))
    assert [s for k, s in steps if k == "eval"] == [4, 8, 12, 16]
    assert resumed_log == full_log  # the same log as a run that was never killed


def test_fit_writes_log_plot_and_best_weights(toy_data, tmp_path: Path) -> None:
    tok, train, val = toy_data
    _, log = _train(tok, train, val, tmp_path / "run", max_steps=8)
    assert [r["step"] for r in log if r["kind"] == "eval"] == [4, 8]
    assert all(math.isfinite(r["val_loss"]) for r in log if r["kind"] == "eval")
    assert (tmp_path / "run" / PLOT_FILE).stat().st_size > 1000
    assert (tmp_path / "run" / "best.safetensors").exists()
    train_losses = [r["loss"] for r in log if r["kind"] == "train"]
    assert train_losses[-1] < train_losses[0]


def test_early_stopping_stops_after_patience_evals_without_improvement(
    toy_data, tmp_path: Path
) -> None:
    tok, train, _val = toy_data
    evals = iter([3.0, 2.0, 2.5, 2.4, 2.6, 1.0])
    model = _tiny_model(tok)
    trainer = Trainer(
        model,
        MLEObjective(tok.pad_id),
        TrainConfig(
            max_steps=100,
            batch_size=16,
            warmup_steps=2,
            lr_dim=16,
            eval_every=1,
            patience=3,
            progress=False,
        ),
        run_dir=tmp_path,
        make_epoch=lambda e: bucketed_batches(train.lengths(), 16, seed=0, epoch=e),
        collate=train.collate,
        evaluate=lambda m: {"val_loss": next(evals)},
        dist_ctx=CPU,
    )
    result = trainer.fit()
    # best 2.0 at step 2, then 3 evaluations without improvement -> stop at step 5
    assert (result.state.step, result.state.best_step, result.state.best_val) == (5, 2, 2.0)
    assert result.state.stop_reason.startswith("early stop")
    assert json.loads((tmp_path / LOG_FILE).read_text().splitlines()[-1])["step"] == 5


def test_linear_schedule_warms_up_then_decays_to_zero() -> None:
    from training.core.trainer import linear_warmup_decay

    peak, warm, total = 2e-3, 10, 110
    assert linear_warmup_decay(1, peak, warm, total) == pytest.approx(peak / 10)
    assert linear_warmup_decay(10, peak, warm, total) == pytest.approx(peak)
    assert linear_warmup_decay(60, peak, warm, total) == pytest.approx(peak / 2)
    assert linear_warmup_decay(110, peak, warm, total) == 0.0
    assert linear_warmup_decay(500, peak, warm, total) == 0.0


class _Procedure:
    """An objective that is a procedure: plain MLE, but it ends the run itself after
    ``updates`` updates and asks for a checkpoint before each one (as Algorithm 1 does)."""

    def __init__(self, pad_id: int, updates: int) -> None:
        self.mle = MLEObjective(pad_id)
        self.updates, self.done_updates, self.finished = updates, 0, False
        self.prepared: list[bool] = []  # model.training at each prepare()

    def prepare(self, model: torch.nn.Module, checkpoint) -> None:
        self.prepared.append(model.training)
        if self.done_updates == self.updates:
            self.finished = True
            return
        checkpoint()

    def __call__(self, model: torch.nn.Module, batch):
        self.done_updates += 1
        return self.mle(model, batch)

    def state_dict(self) -> dict[str, int]:
        return {"done_updates": self.done_updates}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.done_updates = state["done_updates"]


def test_an_objective_can_end_the_run_and_checkpoint_between_updates(
    toy_data: tuple[DialogueTokenizer, PairSet, PairSet], tmp_path: Path
) -> None:
    tok, train, _ = toy_data
    torch.manual_seed(0)
    model = _tiny_model(tok)
    objective = _Procedure(tok.pad_id, updates=3)
    cfg = TrainConfig(max_steps=50, batch_size=8, eval_every=50, progress=False, amp=False)
    trainer = Trainer(
        model,
        objective,
        cfg,
        run_dir=tmp_path,
        make_epoch=lambda epoch: bucketed_batches(train.lengths(), 8, seed=0, epoch=epoch),
        collate=train.collate,
        evaluate=lambda m: {"val_loss": 1.0},
        dist_ctx=CPU,
    )
    result = trainer.fit()
    assert result.state.step == 3 and result.state.finished
    assert result.state.stop_reason == "objective finished"
    assert objective.prepared == [True] * 4  # before each update, and once more to finish
    [evaluation] = [r for r in read_log(tmp_path / LOG_FILE) if r["kind"] == "eval"]
    assert evaluation["step"] == 3
    ckpt = torch.load(trainer.checkpoint_path, weights_only=False)
    assert ckpt["objective"] == {"done_updates": 3} and ckpt["state"]["finished"]

"""Negative distillation: eq. 4 source entropy, D_N, each loss by hand, the α schedule, gradient flow."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from training.core.data import DialogueExample
from training.core.generator import Seq2SeqBatch
from training.methods.nd.losses import (
    NDLossConfig,
    NDObjective,
    mean_progressive_alpha,
    mrse,
    progressive_alpha,
    soft_unlikelihood,
)
from training.methods.nd.negative_set import negative_set, source_entropy


def ex(q: str, r: str) -> DialogueExample:
    return DialogueExample(context=(q,), response=r)


TOY = [
    ex("a", "i don't know ."),
    ex("b", "i don't know ."),
    ex("c", "i don't know ."),
    ex("d", "i don't know ."),
    ex("e", "ok ."),
    ex("f", "ok ."),
    ex("e", "ok ."),
    ex("g", "the train leaves at six ."),
]


def test_source_entropy_by_hand() -> None:
    h = source_entropy(TOY)
    # "i don't know .": 4 distinct queries, each p = 1/4 -> H = ln 4
    assert h["i don't know ."] == pytest.approx(math.log(4))
    # "ok .": queries e (2/3), f (1/3) -> H = -(2/3 ln 2/3 + 1/3 ln 1/3)
    assert h["ok ."] == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    # a response with a single query has no source entropy
    assert h["the train leaves at six ."] == 0.0


def test_negative_set_takes_the_top_half_by_entropy() -> None:
    dn = negative_set(TOY, fraction=0.5)
    # 8 pairs -> 4 in D_N: exactly the four "i don't know ." pairs (the highest H_src)
    assert [e.response for e in dn.examples] == ["i don't know ."] * 4
    assert dn.threshold == pytest.approx(math.log(4))
    assert dn.top_responses[0][0] == "i don't know ."
    assert dn.top20_share_in_dn == 1.0 and dn.top20_share_in_d == 1.0


def test_soft_unlikelihood_by_hand() -> None:
    # one position, vocabulary of 2. teacher logits (0, 0) -> p_N = (.5, .5);
    # student logits (ln 3, 0) -> p_S = (.75, .25).
    # L = -(.5 ln(1-.75) + .5 ln(1-.25)) = -.5 (ln .25 + ln .75)
    student = torch.tensor([[[math.log(3.0), 0.0]]])
    teacher = torch.zeros(1, 1, 2)
    mask = torch.ones(1, 1, dtype=torch.bool)
    expected = -0.5 * (math.log(0.25) + math.log(0.75))
    assert soft_unlikelihood(student, teacher, mask).item() == pytest.approx(expected, rel=1e-5)


def test_soft_unlikelihood_temperature_softens_both() -> None:
    # t = 2 halves the logits: student (ln 3 / 2, 0) -> p_S = (sqrt3/(sqrt3+1), 1/(sqrt3+1))
    student = torch.tensor([[[math.log(3.0), 0.0]]])
    teacher = torch.tensor([[[0.0, 2 * math.log(3.0)]]])  # at t=2: p_N = (1/4, 3/4)
    mask = torch.ones(1, 1, dtype=torch.bool)
    s3 = math.sqrt(3.0)
    p_s = (s3 / (s3 + 1), 1 / (s3 + 1))
    expected = -(0.25 * math.log(1 - p_s[0]) + 0.75 * math.log(1 - p_s[1]))
    assert soft_unlikelihood(student, teacher, mask, temperature=2.0).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_soft_unlikelihood_ignores_masked_positions() -> None:
    student = torch.tensor([[[math.log(3.0), 0.0], [5.0, -5.0]]])
    teacher = torch.zeros(1, 2, 2)
    mask = torch.tensor([[True, False]])
    expected = -0.5 * (math.log(0.25) + math.log(0.75))
    assert soft_unlikelihood(student, teacher, mask).item() == pytest.approx(expected, rel=1e-5)


def test_mrse_by_hand() -> None:
    a = torch.tensor([0.0, 1.0, 2.0])
    b = torch.tensor([0.0, 0.0, 0.0])
    # (e^0 + e^-1 + e^-4) / 3
    assert mrse(a, b).item() == pytest.approx((1 + math.exp(-1) + math.exp(-4)) / 3)
    # with the last element masked out: (1 + e^-1) / 2
    assert mrse(a, b, torch.tensor([True, True, False])).item() == pytest.approx(
        (1 + math.exp(-1)) / 2
    )
    assert mrse(a, a).item() == 1.0


def test_progressive_alpha_peaks_at_one_at_gamma() -> None:
    assert progressive_alpha(25600, gamma=25600) == pytest.approx(1.0)
    # at s = 0: z = -6, α = 4 e^6 / (e^6 + 1)^2
    assert progressive_alpha(0, gamma=25600) == pytest.approx(
        4 * math.exp(6) / (math.exp(6) + 1) ** 2
    )
    # symmetric around γ
    assert progressive_alpha(100, gamma=300) == pytest.approx(progressive_alpha(500, gamma=300))
    assert max(progressive_alpha(s, gamma=300) for s in range(601)) == pytest.approx(1.0)
    assert 0 < mean_progressive_alpha(600, gamma=300) < 1


@pytest.fixture()
def pair() -> tuple[Seq2SeqTransformer, Seq2SeqTransformer, Seq2SeqBatch]:
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(
        vocab_size=30,
        d_model=16,
        n_heads=2,
        d_ff=32,
        n_encoder_layers=1,
        n_decoder_layers=2,
        dropout=0.0,
        max_positions=32,
    )
    student, teacher = Seq2SeqTransformer(cfg), Seq2SeqTransformer(cfg)
    src = torch.randint(5, 30, (3, 6))
    tgt = torch.randint(5, 30, (3, 5))
    tgt[2, 3:] = 0
    tgt_in = torch.cat([torch.ones(3, 1, dtype=torch.long), tgt[:, :-1]], dim=1)
    tgt_in[2, 4:] = 0
    return student, teacher, Seq2SeqBatch(src, tgt_in, tgt)


def test_nd_objective_gradients_reach_student_never_teacher(pair) -> None:
    student, teacher, batch = pair
    objective = NDObjective(teacher, pad_id=0, gamma=1.0)  # step 1 = γ: α = 1, pure ND term
    loss, logs = objective(student, batch)
    loss.backward()
    assert logs["alpha"] == pytest.approx(1.0)
    assert set(logs) == {"alpha", "mle", "nd_pred", "nd_hid", "nd_att"}
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_nd_objective_matches_eq13_composition(pair) -> None:
    student, teacher, batch = pair
    student.eval()
    objective = NDObjective(teacher, pad_id=0, gamma=1.0, fixed_alpha=0.3)
    loss, logs = objective(student, batch)
    nd = logs["nd_pred"] + logs["nd_hid"] + logs["nd_att"]
    assert loss.item() == pytest.approx(0.7 * logs["mle"] + 0.3 * nd, rel=1e-5)
    # identical student and teacher: every MRSE is exactly 1 per layer (2 decoder layers)
    same = NDObjective(student, pad_id=0, gamma=1.0, fixed_alpha=1.0)
    _, logs_same = same(student, batch)
    assert logs_same["nd_hid"] == pytest.approx(2.0) and logs_same["nd_att"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("cfg", "keys"),
    [
        (NDLossConfig(use_pred=False), {"nd_hid", "nd_att"}),
        (NDLossConfig(use_hid=False), {"nd_pred", "nd_att"}),
        (NDLossConfig(use_att=False), {"nd_pred", "nd_hid"}),
        (NDLossConfig(targets="hard"), {"nd_pred", "nd_hid", "nd_att"}),
    ],
)
def test_nd_ablations_switch_terms_off(pair, cfg: NDLossConfig, keys: set[str]) -> None:
    student, teacher, batch = pair
    _, logs = NDObjective(teacher, pad_id=0, gamma=1.0, loss=cfg)(student, batch)
    assert {k for k in logs if k.startswith("nd_")} == keys


def test_nd_random_targets_push_down_negative_replies(pair) -> None:
    student, teacher, batch = pair
    objective = NDObjective(
        teacher,
        pad_id=0,
        gamma=1.0,
        loss=NDLossConfig(targets="random"),
        random_targets=[[7, 8, 9], [10, 11]],
    )
    loss, logs = objective(student, batch)
    loss.backward()
    assert set(logs) == {"alpha", "mle", "nd_pred"} and logs["nd_pred"] > 0


def test_normalized_hidden_states_ignore_scale_plain_ones_do_not(pair) -> None:
    """L_hid on layer-normalised states (NDLossConfig.normalize_hidden): a student whose hidden
    states are the teacher's times 3 is as close as the teacher itself (MRSE 1 per layer), while
    the plain L_hid calls it far; the gradient still reaches the student."""
    from training.methods.nd.losses import NegativeDistillationLoss

    student, teacher, batch = pair
    teacher.eval()
    with torch.no_grad():
        out = teacher(batch.src, batch.tgt_in, return_internals=True)
    scaled = type(out)(
        logits=out.logits, hidden_states=[3 * h for h in out.hidden_states], self_attn_logits=[]
    )
    hid_only = NDLossConfig(use_pred=False, use_att=False)
    normed = NegativeDistillationLoss(replace(hid_only, normalize_hidden=True), pad_id=0)
    plain = NegativeDistillationLoss(hid_only, pad_id=0)
    n_layers = len(out.hidden_states)
    assert normed(scaled, out, batch.tgt_in)[1]["hid"].item() == pytest.approx(n_layers, rel=1e-4)
    assert plain(scaled, out, batch.tgt_in)[1]["hid"].item() < 0.5 * n_layers
    objective = NDObjective(
        teacher, pad_id=0, gamma=1.0, loss=replace(hid_only, normalize_hidden=True)
    )
    loss, _ = objective(student, batch)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())

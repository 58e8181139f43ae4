"""The shared token-level maths of training/core/losses.py, against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from training.core.losses import (
    LABEL_SMOOTHING,
    expected_unlikelihood,
    frequent_word_weights,
    log_one_minus,
    smoothed_nll,
    token_log_probs,
)

PAD = 0
PROBS = torch.tensor([0.5, 0.25, 0.25])  # the same distribution at every position
LOGITS = PROBS.log().expand(1, 2, 3)  # (B=1, T=2, V=3)


def test_smoothed_nll_by_hand() -> None:
    targets = torch.tensor([[1, PAD]])  # the pad position is ignored
    # -(1 - 0.1) ln .25 - 0.1/3 (ln .5 + 2 ln .25) = 1.247665 + 0.115525 = 1.363190
    assert LABEL_SMOOTHING == 0.1
    assert smoothed_nll(LOGITS, targets, PAD).item() == pytest.approx(1.363190, abs=1e-6)
    assert smoothed_nll(LOGITS, targets, PAD, 0.0).item() == pytest.approx(-math.log(0.25))


def test_token_log_probs_zero_at_padding() -> None:
    logp, real = token_log_probs(LOGITS, torch.tensor([[2, PAD]]), PAD)
    assert real.tolist() == [[True, False]]
    torch.testing.assert_close(logp, torch.tensor([[math.log(0.25), 0.0]]))


def test_log_one_minus_is_finite_at_one() -> None:
    got = log_one_minus(torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(got[:2], torch.tensor([0.0, math.log(0.5)]))
    # p = 1 is clamped to 1 - 1e-6 (in float32), so about ln 1e-6 = -13.8 instead of -inf
    assert got[2].item() == pytest.approx(math.log(1e-6), rel=2e-3)


def test_expected_unlikelihood_by_hand() -> None:
    q = torch.tensor([0.0, 1.0, 0.0]).expand(1, 2, 3)  # a one-hot target: -ln(1 - .25)
    mask = torch.tensor([[True, False]])
    got = expected_unlikelihood(LOGITS, q, mask)
    assert got.item() == pytest.approx(-math.log(0.75), rel=1e-6)  # 0.287682
    q_soft = PROBS.expand(1, 2, 3)  # -(.5 ln .5 + 2 * .25 ln .75) = 0.346574 + 0.143841
    assert expected_unlikelihood(LOGITS, q_soft, mask).item() == pytest.approx(0.490415, abs=1e-6)


def test_frequent_word_weights_scale_or_spare_listed_tokens() -> None:
    targets = torch.tensor([[3, 2, PAD], [2, 4, 3]])
    assert frequent_word_weights(targets, PAD, {}).tolist() == [[1, 1, 0], [1, 1, 1]]
    got = frequent_word_weights(targets, PAD, {2: 0.1, 4: 0.0})
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.1, 0.0], [0.1, 0.0, 1.0]]))

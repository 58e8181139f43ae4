"""NT (He & Glass 2020, Alg. 2) and vocabulary UL (Li et al. 2020a): windows, losses by hand, jobs."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from models.decoding import ContextFreePrior, generate
from models.generator import GenerativeResponder, context_free_source
from models.metrics import distinct_n, max_ratio
from models.seq2seq import Seq2SeqConfig, Seq2SeqOutput, Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.config import PRESETS
from training.core.data import DialogueExample, sample_examples
from training.core.distributed import DistContext
from training.core.generator import (
    MLEObjective,
    PairSet,
    Seq2SeqBatch,
    build_generator_model,
    run_generator_training,
)
from training.core.losses import frequent_word_weights, token_log_probs
from training.core.run import RunSpec
from training.core.trainer import LOG_FILE, noam_learning_rate, read_log
from training.methods.fine_tune import greedy_genericness_fn
from training.methods.nt import (
    NegativeTrainingObjective,
    ResponseFrequencyWindow,
    train_nt_generator,
)
from training.methods.ul import (
    TokenFrequencyWindow,
    UnlikelihoodObjective,
    frequent_token_penalty,
    token_unlikelihood_loss,
    train_ul_generator,
)

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
PAD, BOS, EOS = 0, 1, 2
LN_04, LN_01 = math.log(0.4), math.log(0.1)  # -0.916291, -2.302585


class ConstantLogits(nn.Module):
    """Stub generator: the same distribution at every position, so losses work out by hand."""

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(probs).log())

    def forward(self, src: Tensor, tgt_in: Tensor) -> Seq2SeqOutput:
        b, t = tgt_in.shape
        return Seq2SeqOutput(logits=self.theta.expand(b, t, -1))


# pad, bos, eos, "3", "4"
STUB_PROBS = [0.05, 0.05, 0.4, 0.4, 0.1]


def _toy_batch() -> Seq2SeqBatch:
    # gold responses "3" and "3 3": targets [3 EOS] and [3 3 EOS] -> D = 5 target tokens
    return Seq2SeqBatch(
        src=torch.tensor([[3], [4]]),
        tgt_in=torch.tensor([[BOS, 3, PAD], [BOS, 3, 3]]),
        tgt_out=torch.tensor([[3, EOS, PAD], [3, 3, EOS]]),
    )


def _tiny_model(vocab_size: int, dropout: float = 0.0) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(
        Seq2SeqConfig(
            vocab_size=vocab_size,
            d_model=16,
            n_heads=2,
            d_ff=32,
            n_encoder_layers=1,
            n_decoder_layers=1,
            dropout=dropout,
            max_positions=64,
        )
    )


# --- frequency windows ------------------------------------------------------------------------


def test_response_window_counts_and_drops_batches_beyond_a_small_window() -> None:
    window = ResponseFrequencyWindow(window_batches=2)  # holds the current + the last 2 batches
    window.add_batch([[5], [5, 6]])
    window.add_batch([[5]])
    window.add_batch([[7]])
    # (5,) twice among 4 replies
    assert (len(window), window.count((5,)), window.ratio([5])) == (4, 2, 0.5)
    assert window.max_ratio() == 0.5
    window.add_batch([[7]])  # the first batch ([5], [5, 6]) is now 3 batches old: dropped
    assert len(window) == 3 and window.num_batches == 3
    assert window.ratio([5]) == pytest.approx(1 / 3)
    assert window.ratio([5, 6]) == 0.0
    assert window.max_ratio() == pytest.approx(2 / 3)  # (7,) twice among 3


def test_response_window_default_keeps_current_and_last_200_batches() -> None:
    window = ResponseFrequencyWindow()
    window.add_batch([[9, 9]])
    for _ in range(200):
        window.add_batch([[1]])
    # 201 batches: the first is exactly 200 batches older than the current one, still counted
    assert window.count((9, 9)) == 1 and len(window) == 201
    window.add_batch([[1]])  # now 201 batches old: older than 200, dropped
    assert window.count((9, 9)) == 0 and window.ratio([9, 9]) == 0.0
    assert len(window) == 201 and window.ratio([1]) == 1.0


def test_window_state_dict_round_trip_keeps_counts_and_eviction_order() -> None:
    window = ResponseFrequencyWindow(window_batches=1)
    window.add_batch([[3, 4], [3, 4]])
    window.add_batch([[5]])
    restored = ResponseFrequencyWindow(window_batches=7)
    restored.load_state_dict(window.state_dict())
    assert restored.window_batches == 1 and restored.ratio([3, 4]) == pytest.approx(2 / 3)
    for w in (window, restored):
        w.add_batch([[6]])  # evicts the [3, 4] batch in both
    assert restored.state_dict() == window.state_dict()
    assert restored.count((3, 4)) == 0

    tokens = TokenFrequencyWindow(window_batches=0)  # current batch only
    tokens.add_batch([3, 3, 4])
    tokens.add_batch([4])
    assert tokens.counts(5).tolist() == [0, 0, 0, 0, 1]


# --- loss math --------------------------------------------------------------------------------


def test_nt_negative_log_likelihood_scales_eos_by_hand() -> None:
    probs = torch.tensor([0.125, 0.125, 0.25, 0.5])  # pad, bos, eos, "3" at every position
    logits = probs.log().expand(2, 3, 4).clone().requires_grad_(True)
    targets = torch.tensor([[3, EOS, PAD], [3, 3, EOS]])
    log_p, real = token_log_probs(logits, targets, PAD)
    weights = frequent_word_weights(targets, PAD, {EOS: 0.1})
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.1, 0.0], [1.0, 1.0, 0.1]]))
    got = (log_p * weights).sum(dim=1)
    # row 0: ln .5 + 0.1 ln .25 = -0.693147 - 0.138629 = -0.831777
    # row 1: 2 ln .5 + 0.1 ln .25 = -1.386294 - 0.138629 = -1.524924
    torch.testing.assert_close(got, torch.tensor([-0.831777, -1.524924]), atol=1e-6, rtol=0)
    unweighted = (log_p * real).sum(dim=1)
    assert unweighted[0].item() == pytest.approx(math.log(0.5) + math.log(0.25))  # -2.079442
    got.sum().backward()
    assert logits.grad is not None
    # d(w log p_y)/d logits = w (onehot(y) - p): at the EOS position 0.1 * ([0,0,1,0] - p)
    torch.testing.assert_close(logits.grad[0, 1], torch.tensor([-0.0125, -0.0125, 0.075, -0.05]))
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([-0.125, -0.125, -0.25, 0.5]))
    assert logits.grad[0, 2].abs().sum() == 0  # padding gets no gradient


def test_frequent_token_penalty_by_hand() -> None:
    model_counts = torch.tensor([0.0, 0, 0, 6, 2, 0])  # p_model: "3" .75, "4" .25
    human_counts = torch.tensor([0.0, 0, 0, 4, 4, 0])  # p_human: "3" .5,  "4" .5
    beta = frequent_token_penalty(model_counts, human_counts, threshold=1e-3)
    # beta(3) = .75 ln(.75 / .5) = .75 * 0.405465 = 0.304099; "4" is under-used: 0
    torch.testing.assert_close(beta, torch.tensor([0, 0, 0, 0.304099, 0, 0]), atol=1e-6, rtol=0)
    # a token humans never used (p_human = 0) is not penalised (as in the authors' code)
    unseen = frequent_token_penalty(
        torch.tensor([0.0, 0, 0, 1, 1]), torch.tensor([0.0, 0, 0, 1, 0])
    )
    assert unseen[4] == 0
    assert frequent_token_penalty(model_counts, human_counts, threshold=0.31).sum() == 0


def test_token_unlikelihood_loss_by_hand() -> None:
    logits = torch.tensor(STUB_PROBS).log().expand(2, 3, 5)  # p("3") = .4 everywhere
    tokens = torch.tensor([[3, 4, 3], [3, PAD, PAD]])
    penalty = torch.tensor([0.0, 0, 0, 0.304099, 0])
    # three penalised positions, each .304099 * -ln(1 - .4) = .304099 * 0.510826 = 0.155342
    loss = token_unlikelihood_loss(logits, tokens, penalty, PAD)
    assert loss.item() == pytest.approx(0.155342, abs=1e-6)
    assert token_unlikelihood_loss(logits, tokens, torch.zeros(5), PAD).item() == 0.0
    # p -> 1 would give -log(0): p is clamped at 1 - 1e-6 (float32: 1 - 1.013e-6), so the term
    # is -log1p(-(1 - 1e-6)) = 13.802319 instead of infinite
    sure = torch.tensor([[-50.0, -50, -50, 50, -50]]).expand(1, 1, 5)
    assert token_unlikelihood_loss(sure, torch.tensor([[3]]), penalty, PAD).item() == (
        pytest.approx(0.304099 * 13.802319, rel=1e-5)
    )


# --- NT objective -----------------------------------------------------------------------------


def test_nt_loss_with_one_frequent_reply_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    nt = NegativeTrainingObjective(
        PAD, EOS, BOS, r_thres=0.5, lambda_pos=0.5, label_smoothing=0.0, max_decode_len=8
    )
    nt.window.add_batch([[3]])  # an earlier batch already replied "3"
    monkeypatch.setattr(nt, "decode", lambda model, src: [[3], [4, 4]])
    loss, logs = nt(ConstantLogits(STUB_PROBS), _toy_batch())
    # window {(3,): 2, (4, 4): 1}: ratios 2/3 > .5 (negative) and 1/3
    # L_neg = (ln p(3) + 0.1 ln p(EOS)) / D = 1.1 * -0.916291 / 5 = -0.201584
    # L_mle = -ln .4 over all 5 gold tokens = 0.916291; L = -0.201584 + .5 * 0.916291 = 0.256562
    assert loss.item() == pytest.approx(0.256562, abs=1e-6)
    assert logs == pytest.approx(
        {
            "nt_neg_examples": 1.0,
            "nt_neg_loss": -0.201584,
            "nt_max_ratio": 2 / 3,
            "nt_mle_loss": 0.916291,
        },
        abs=1e-6,
    )


def test_nt_truncated_frequent_reply_gets_no_eos_term(monkeypatch: pytest.MonkeyPatch) -> None:
    nt = NegativeTrainingObjective(
        PAD, EOS, BOS, r_thres=0.5, lambda_pos=1.0, label_smoothing=0.0, max_decode_len=2
    )
    monkeypatch.setattr(nt, "decode", lambda model, src: [[3, 4], [3, 4]])  # both hit max_length
    _, logs = nt(ConstantLogits(STUB_PROBS), _toy_batch())
    # both replies negative (ratio 1), no EOS generated: 2 (ln .4 + ln .1) / 5 = -1.287550
    assert logs["nt_neg_examples"] == 2.0
    assert logs["nt_neg_loss"] == pytest.approx(2 * (LN_04 + LN_01) / 5, abs=1e-6)


def test_nt_loss_without_frequent_replies_is_exactly_lambda_mle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _tiny_model(vocab_size=8)
    batch = _toy_batch()
    nt = NegativeTrainingObjective(PAD, EOS, BOS, r_thres=0.5, lambda_pos=0.7)
    monkeypatch.setattr(nt, "decode", lambda model, src: [[3], [4]])  # ratios .5, .5: not > .5
    loss, logs = nt(model, batch)
    mle, _ = MLEObjective(PAD, label_smoothing=0.1)(model, batch)
    assert logs["nt_neg_examples"] == 0.0 and logs["nt_neg_loss"] == 0.0
    assert loss.item() == (0.7 * mle).item()


def test_nt_waits_until_the_window_can_hold_a_ratio_below_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nt = NegativeTrainingObjective(PAD, EOS, BOS, r_thres=0.2)  # needs 1 / .2 = 5 replies
    monkeypatch.setattr(nt, "decode", lambda model, src: [[3], [4]])
    stub = ConstantLogits(STUB_PROBS)
    assert nt(stub, _toy_batch())[1]["nt_neg_examples"] == 0.0  # 2 replies: every one is 50%
    nt(stub, _toy_batch())
    assert nt(stub, _toy_batch())[1]["nt_neg_examples"] == 2.0  # 6 replies, each at 50% > 20%


def test_nt_and_ul_gradients_flow_through_a_real_model(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny_model(vocab_size=8, dropout=0.1)
    nt = NegativeTrainingObjective(PAD, EOS, BOS, r_thres=0.5)
    monkeypatch.setattr(nt, "decode", lambda m, src: [[5, 6], [5, 6]])
    ul = UnlikelihoodObjective(PAD, EOS, BOS, 8, window_batches=1)
    ul.model_tokens.add_batch([4, 4, 4])
    ul.human_tokens.add_batch([4])
    # model {4: 6, 3: 1} vs human {4: 1, 3: 3}: "4" over-used
    monkeypatch.setattr(ul, "decode", lambda m, src: [[4, 4], [3, 4]])
    for objective, key in ((nt, "nt_neg_examples"), (ul, "ul_penalised_tokens")):
        model.zero_grad()
        loss, logs = objective(model, _toy_batch())
        assert logs[key] > 0
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    assert model.training  # decoding ran in eval mode and switched back


# --- UL objective -----------------------------------------------------------------------------


def test_ul_loss_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    ul = UnlikelihoodObjective(PAD, EOS, BOS, 5, alpha=10.0, window_batches=1, label_smoothing=0.0)
    ul.model_tokens.add_batch([3, 3, 3, 3, 4])
    ul.human_tokens.add_batch([3, 4, 4, 4, 4])
    monkeypatch.setattr(ul, "decode", lambda model, src: [[3], [4, 3]])
    loss, logs = ul(ConstantLogits(STUB_PROBS), _toy_batch())
    # model tokens {3: 6, 4: 2}, human {3: 4, 4: 4} (gold 3, 3, 3; EOS and pad not counted)
    # beta(3) = .75 ln 1.5 = 0.304099; penalised: "3" in both replies -> 2 positions
    # L_ul = 0.304099 * -ln(.6) = 0.155342; L = 0.916291 + 10 * 0.155342 = 2.469708
    assert loss.item() == pytest.approx(2.469708, abs=1e-5)
    assert logs == pytest.approx(
        {
            "ul_loss": 0.155342,
            "ul_penalised_tokens": 2.0,
            "ul_penalised_types": 1.0,
            "ul_mle_loss": 0.916291,
        },
        abs=1e-6,
    )


def test_ul_is_plain_mle_until_the_window_is_full(monkeypatch: pytest.MonkeyPatch) -> None:
    ul = UnlikelihoodObjective(PAD, EOS, BOS, 5, window_batches=1, label_smoothing=0.0)
    monkeypatch.setattr(ul, "decode", lambda model, src: [[3, 3, 3], [3]])
    loss, logs = ul(ConstantLogits(STUB_PROBS), _toy_batch())  # 1 batch of the 2 it needs
    assert logs["ul_penalised_types"] == 0.0 and loss.item() == pytest.approx(-LN_04)
    state = ul.state_dict()
    resumed = UnlikelihoodObjective(PAD, EOS, BOS, 5, window_batches=1)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state


# --- through the trainer and as jobs ----------------------------------------------------------


@pytest.fixture(scope="module")
def toy_examples() -> tuple[DialogueTokenizer, list[DialogueExample]]:
    words = ["hello", "how", "are", "you", "fine", "thanks", "what", "time"]
    words += ["is", "it", "now", "good", "morning", "see", "later"]
    g = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(80):
        ctx = " ".join(words[int(i)] for i in torch.randint(0, len(words), (5,), generator=g))
        resp = " ".join(words[int(i)] for i in torch.randint(0, len(words), (4,), generator=g))
        examples.append(DialogueExample(context=(ctx,), response=resp))
    tok = DialogueTokenizer.train(
        [w for e in examples for w in (*e.context, e.response)], vocab_size=60
    )
    return tok, examples


@pytest.mark.parametrize("method", ["nt", "ul"])
def test_objectives_run_through_run_generator_training(
    toy_examples, tmp_path: Path, method: str
) -> None:
    tok, examples = toy_examples
    inputs = PRESETS["tiny"].inputs
    train, val = (
        PairSet.encode(examples[:64], tok, inputs),
        PairSet.encode(examples[64:], tok, inputs),
    )
    model = _tiny_model(tok.vocab_size, dropout=0.1)
    objective = (
        NegativeTrainingObjective(tok.pad_id, tok.eos_id, tok.bos_id, r_thres=0.1, max_decode_len=8)
        if method == "nt"
        else UnlikelihoodObjective(
            tok.pad_id, tok.eos_id, tok.bos_id, tok.vocab_size, window_batches=1, max_decode_len=8
        )
    )
    run_generator_training(
        model,
        objective,
        preset=PRESETS["tiny"],
        train_pairs=train,
        val_pairs=val,
        run=RunSpec(Path(), "", tmp_path, dist_ctx=CPU, resume=False),
        train_overrides={"max_steps": 4, "batch_size": 16, "eval_every": 2, "log_every": 1},
    )
    log = read_log(tmp_path / LOG_FILE)
    steps = [r for r in log if r["kind"] == "train"]
    assert len(steps) == 4 and all(math.isfinite(r["loss"]) for r in steps)
    key = "nt_neg_examples" if method == "nt" else "ul_penalised_tokens"
    assert all(key in r for r in steps)
    assert [r["step"] for r in log if r["kind"] == "eval"] == [2, 4]
    assert objective.state_dict()  # something for the checkpoint to keep


def test_nt_resume_restores_the_frequency_window_and_matches_an_uninterrupted_run(
    toy_examples, tmp_path: Path
) -> None:
    tok, examples = toy_examples
    inputs = PRESETS["tiny"].inputs
    train, val = (
        PairSet.encode(examples[:64], tok, inputs),
        PairSet.encode(examples[64:], tok, inputs),
    )

    def run(run_dir: Path, max_steps: int) -> tuple[NegativeTrainingObjective, list[dict]]:
        nt = NegativeTrainingObjective(tok.pad_id, tok.eos_id, tok.bos_id, r_thres=0.1)
        run_generator_training(
            _tiny_model(tok.vocab_size, dropout=0.1),
            nt,
            preset=PRESETS["tiny"],
            train_pairs=train,
            val_pairs=val,
            run=RunSpec(Path(), "", run_dir, dist_ctx=CPU, resume=True),
            train_overrides={
                "max_steps": max_steps,
                "batch_size": 16,
                "eval_every": 2,
                "log_every": 1,
            },
        )
        return nt, [r for r in read_log(run_dir / LOG_FILE) if r["kind"] == "train"]

    _, full = run(tmp_path / "full", 4)
    run(tmp_path / "resumed", 2)  # checkpoint at step 2, then "killed"
    ckpt_path = tmp_path / "resumed" / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["state"]["finished"] = False
    torch.save(ckpt, ckpt_path)
    nt, resumed = run(tmp_path / "resumed", 4)  # a fresh objective: the window comes from disk
    assert nt.window.num_batches == 4
    assert [r["nt_neg_examples"] for r in resumed] == [r["nt_neg_examples"] for r in full]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


@pytest.mark.parametrize("method", ["nt", "ul"])
def test_train_baseline_generator_fine_tunes_the_standard_bundle(
    toy_examples, tmp_path: Path, method: str
) -> None:
    tok, examples = toy_examples
    preset = PRESETS["tiny"]
    standard = GenerativeResponder(
        build_generator_model(preset, tok, seed=0), tok, preset.inputs, preset.decoding
    )
    base = standard.save(
        tmp_path / "standard", name="standard", training={"method": "mle", "steps": 12}, metrics={}
    )
    train_fn = train_nt_generator if method == "nt" else train_ul_generator
    manifest = train_fn(
        RunSpec(tmp_path / method, f"generator-{method}", tmp_path / "runs" / method, "toy", CPU),
        base_bundle=tmp_path / "standard",
        preset=preset,
        train_examples=examples[:64],
        val_examples=examples[64:],
        max_steps=2,
    )
    assert manifest is not None
    training = manifest.training
    assert (training["method"], training["base"], training["steps"]) == (method, base.bundle_id, 2)
    # default lr: where eq. 17 stood at the base model's last step (12; s_wp 4, d 32, scale 2)
    assert training["lr"] == pytest.approx(noam_learning_rate(12, 32, 4, 2.0))
    assert (training["optimizer"], training["lr_schedule"]) == ("adam", "constant")
    if method == "nt":
        assert (training["r_thres"], training["lambda_pos"], training["eos_weight"]) == (
            0.01,
            1.0,
            0.1,
        )
    else:
        assert training["alpha"] == 1000.0
    assert GenerativeResponder.load(tmp_path / method).manifest == manifest
    assert manifest.files["model.safetensors"] != base.files["model.safetensors"]  # weights moved


def test_greedy_genericness_fn_counts_the_most_frequent_greedy_reply(toy_examples) -> None:
    tok, examples = toy_examples
    pairs = PairSet.encode(examples, tok, PRESETS["tiny"].inputs)
    model = _tiny_model(tok.vocab_size)
    with torch.no_grad():  # equal logits whatever the source: the same greedy reply for all
        for p in model.parameters():
            p.zero_()
    evaluate = greedy_genericness_fn(pairs, PRESETS["tiny"].decoding, examples=40, batch_size=16)
    out = evaluate(model)
    assert out["val_loss"] == out["val_max_ratio"] == 1.0
    assert out["val_ppl"] > 1.0 and math.isfinite(out["val_nll"])
    torch.manual_seed(0)
    varied = evaluate(_tiny_model(tok.vocab_size))  # random weights: several replies
    assert 0.0 < varied["val_max_ratio"] < 1.0


def test_greedy_genericness_fn_decodes_as_the_served_decoding_says_anti_lm_included(
    toy_examples,
) -> None:
    """With an anti-LM default decoding (small's), NT's selection scores the replies the bundle
    would serve: the model as it is now is its own prior on the content-free source."""
    tok, examples = toy_examples
    pairs = PairSet.encode(examples, tok, PRESETS["tiny"].inputs)
    torch.manual_seed(0)
    model = _tiny_model(tok.vocab_size).eval()
    decoding = PRESETS["tiny"].decoding.with_overrides(anti_lm=0.5, anti_lm_steps=2)
    out = greedy_genericness_fn(pairs, decoding, examples=40, batch_size=40)(model)
    # the sources are drawn across the split (sample_examples), not its first rows
    rows = sample_examples(range(len(pairs)), 40)
    assert rows != list(range(40))
    src = pairs.collate(rows, torch.device("cpu")).src
    prior = ContextFreePrior(model, context_free_source(tok))
    replies = tok.decode_batch(generate(model, src, decoding, prior=prior).tokens)
    assert out["val_max_ratio"] == max_ratio(replies)
    assert out["val_dist2"] == distinct_n(replies, 2)
    plain = tok.decode_batch(generate(model, src, PRESETS["tiny"].decoding).tokens)
    assert replies != plain  # the penalty is really applied


def test_replace_weights_drops_the_anti_lm_prior_of_the_old_weights(toy_examples) -> None:
    tok, examples = toy_examples
    inputs = PRESETS["tiny"].inputs
    decoding = PRESETS["tiny"].decoding.with_overrides(anti_lm=0.5, anti_lm_steps=2)
    other = _tiny_model(tok.vocab_size)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    contexts = [list(e.context) for e in examples[:40]]
    want = GenerativeResponder(copy.deepcopy(other), tok, inputs, decoding).respond(contexts)
    swapped = GenerativeResponder(_tiny_model(tok.vocab_size), tok, inputs, decoding)
    stale = GenerativeResponder(_tiny_model(tok.vocab_size), tok, inputs, decoding)
    for responder in (swapped, stale):
        responder.respond(contexts)  # the prior of the first weights is memoised here
    swapped.replace_weights(other.state_dict())
    stale.model.load_state_dict(other.state_dict())
    assert swapped.respond(contexts) == want
    assert stale.respond(contexts) != want  # what replace_weights is for


@pytest.mark.parametrize(
    ("select", "statistic", "ineligible"),
    [("least-generic", "val_max_ratio", 1.0), ("most-distinct", "val_dist2", 2.0)],
)
def test_nt_keeps_the_evaluated_step_that_its_selection_finds_least_generic(
    toy_examples, tmp_path: Path, select: str, statistic: str, ineligible: float
) -> None:
    tok, examples = toy_examples
    preset = replace(PRESETS["tiny"], nt_select=select)
    standard = GenerativeResponder(
        build_generator_model(preset, tok, seed=0), tok, preset.inputs, preset.decoding
    )
    standard.save(tmp_path / "standard", name="standard", training={"steps": 12}, metrics={})
    manifest = train_nt_generator(
        RunSpec(tmp_path / "nt", "generator-nt", tmp_path / "runs", "toy", CPU),
        base_bundle=tmp_path / "standard",
        preset=preset,
        train_examples=examples[:64],
        val_examples=examples[64:],
        max_steps=12,
    )
    assert manifest is not None and manifest.training["select"] == select
    evals = [r for r in read_log(tmp_path / "runs" / LOG_FILE) if r["kind"] == "eval"]
    # Preset.nt_select_evals = 6 points, evaluated from half the budget on
    assert [r["step"] for r in evals] == [6, 8, 10, 12]
    # lower is better: max-ratio, or minus Dist-2; steps above the perplexity bound lose to
    # every step within it (1 + max-ratio, 2 - Dist-2)
    sign = 1.0 if statistic == "val_max_ratio" else -1.0
    for r in evals:
        assert 0.0 <= r["val_max_ratio"] <= 1.0 and 0.0 <= r["val_dist2"] <= 1.0
        eligible = r["val_ppl"] <= manifest.training["select_max_ppl"] * (1 + 1e-6)
        assert r["val_loss"] == pytest.approx(
            sign * r[statistic] + (0.0 if eligible else ineligible)
        )
    best = min(evals, key=lambda r: (r["val_loss"], r["step"]))
    assert manifest.training["best_step"] == best["step"]
    assert manifest.metrics[statistic] == pytest.approx(best[statistic])
    assert manifest.metrics["val_ppl"] == pytest.approx(best["val_ppl"])
    with pytest.raises(ValueError, match="nt_select"):
        train_nt_generator(
            RunSpec(tmp_path / "x", "x", tmp_path / "runs-x", "toy", CPU),
            base_bundle=tmp_path / "standard",
            preset=replace(preset, nt_select="best"),
            train_examples=examples[:64],
            val_examples=examples[64:],
            max_steps=2,
        )

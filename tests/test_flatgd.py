"""FlatGD (Khalatbari et al.): JS divergence (eq. 7-8) by hand, the safety loss (eq. 4), the
gradient-norm term (eq. 1) against finite differences, the objective (eq. 2), experts, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.decoding import DecodingConfig
from models.generator import GenerativeResponder, InputConfig
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.core.data import DialogueExample
from training.core.distributed import DistContext
from training.core.generator import PairSet, Seq2SeqBatch
from training.core.losses import smoothed_nll
from training.core.run import RunSpec
from training.core.safety_data import SafetyExample, load_diasafety
from training.methods.flatgd.job import ExpertSetting, FlatGDSetting, train_expert, train_flatgd
from training.methods.flatgd.objective import (
    FlatGDObjective,
    FlatGDWeights,
    SafetyBatch,
    SafetyTuningData,
    js_divergence,
    safety_loss,
    squared_gradient_norm,
    trainable_parameters,
)

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
PAD, BOS, EOS = 0, 1, 2


def _logits(*probs: float) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


# --- eq. 7-8: JS divergence ------------------------------------------------------------------


def test_js_divergence_matches_a_hand_computation() -> None:
    # p = (0.5, 0.5), q = (0.9, 0.1), m = (0.7, 0.3)
    # KL(p||m) = 0.5 ln(0.5/0.7) + 0.5 ln(0.5/0.3) = 0.5 (-0.336472 + 0.510826) = 0.087177
    # KL(q||m) = 0.9 ln(0.9/0.7) + 0.1 ln(0.1/0.3) = 0.226183 - 0.109861        = 0.116322
    # JS = (0.087177 + 0.116322) / 2 = 0.101749
    js = js_divergence(_logits(0.5, 0.5), _logits(0.9, 0.1))
    assert float(js) == pytest.approx(0.101749, abs=1e-6)


def test_js_divergence_is_symmetric_zero_on_equal_inputs_and_at_most_ln2() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 7, generator=g), 3 * torch.randn(3, 4, 7, generator=g)
    assert js_divergence(a, b).shape == (3, 4)
    torch.testing.assert_close(js_divergence(a, b), js_divergence(b, a))
    torch.testing.assert_close(js_divergence(a, a), torch.zeros(3, 4), atol=1e-6, rtol=0)
    assert bool((js_divergence(a, b) <= math.log(2)).all())
    # disjoint supports reach the bound: JS = ln 2 (base-2 normalisation would make it 1)
    disjoint = js_divergence(torch.tensor([60.0, -60.0]), torch.tensor([-60.0, 60.0]))
    assert float(disjoint) == pytest.approx(math.log(2), abs=1e-6)


# --- eq. 4: the safety loss ------------------------------------------------------------------


def test_safety_loss_weights_the_two_divergences_and_skips_masked_positions() -> None:
    # position 0: model (0.5, 0.5) vs toxic (0.9, 0.1) -> JS 0.101749; vs clean (0.5, 0.5) -> 0
    # position 1 is masked out and holds very different distributions
    model = torch.stack([_logits(0.5, 0.5), _logits(0.01, 0.99)])[None]  # (1, 2, 2)
    toxic = torch.stack([_logits(0.9, 0.1), _logits(0.99, 0.01)])[None]
    clean = torch.stack([_logits(0.5, 0.5), _logits(0.99, 0.01)])[None]
    mask = torch.tensor([[True, False]])
    terms = safety_loss(model, toxic, clean, mask, beta=2.0, gamma=3.0)
    assert float(terms.js_toxic) == pytest.approx(0.101749, abs=1e-6)
    assert float(terms.js_clean) == pytest.approx(0.0, abs=1e-9)
    assert float(terms.loss) == pytest.approx(-2.0 * 0.101749, abs=1e-6)
    swapped = safety_loss(model, clean, toxic, mask, beta=2.0, gamma=3.0)  # toward the toxic
    assert float(swapped.loss) == pytest.approx(3.0 * 0.101749, abs=1e-6)


# --- eq. 1: the gradient-norm term, by double backward ------------------------------------------


def _tiny(vocab: int, seed: int, dropout: float = 0.0, d_model: int = 8) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    return Seq2SeqTransformer(
        Seq2SeqConfig(
            vocab_size=vocab,
            d_model=d_model,
            n_heads=2,
            d_ff=2 * d_model,
            n_encoder_layers=1,
            n_decoder_layers=1,
            dropout=dropout,
            max_positions=32,
        )
    )


def _toy_batch(vocab: int) -> Seq2SeqBatch:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, vocab, (3, 5), generator=g)
    src[2, 3:] = PAD
    tgt_out = torch.randint(3, vocab, (3, 4), generator=g)
    tgt_out[:, -1] = EOS
    tgt_out[1, 2:] = torch.tensor([EOS, PAD])
    tgt_in = torch.cat([torch.full((3, 1), BOS), tgt_out[:, :-1]], dim=1)
    tgt_in[1, 3] = PAD
    return Seq2SeqBatch(src, tgt_in, tgt_out)


def test_gradient_of_the_gradient_norm_term_matches_finite_differences() -> None:
    vocab = 11
    model, clean, toxic = (_tiny(vocab, s).double() for s in (0, 1, 2))
    objective = FlatGDObjective(clean, toxic, FlatGDWeights(lam=1.0), pad_id=PAD)
    batch = _toy_batch(vocab)
    params = trainable_parameters(model)

    def grad_norm_sq(create_graph: bool) -> torch.Tensor:
        _, ls = objective.safety_terms(model, batch, twice_differentiable=True)
        return squared_gradient_norm(ls.loss, params, create_graph=create_graph)

    value = grad_norm_sq(create_graph=True)
    analytic = torch.autograd.grad(value, params)  # d/dθ ||∇L_S||², the double backward
    g = torch.Generator().manual_seed(2)
    direction = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    along = sum(float((a * v).sum()) for a, v in zip(analytic, direction, strict=True))

    eps = 1e-5

    def shifted(scale: float) -> float:
        with torch.no_grad():
            for p, v in zip(params, direction, strict=True):
                p.add_(scale * eps * v)
        out = float(grad_norm_sq(create_graph=False))
        with torch.no_grad():
            for p, v in zip(params, direction, strict=True):
                p.sub_(scale * eps * v)
        return out

    central = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    assert abs(along) > 1e-6, "degenerate direction: the check would prove nothing"
    assert along == pytest.approx(central, rel=1e-5)


# --- eq. 2: the objective ----------------------------------------------------------------------


def _safety_batch(vocab: int) -> SafetyBatch:
    safety = _toy_batch(vocab)
    lm = Seq2SeqBatch(
        torch.tensor([[4, 5, 6]]), torch.tensor([[BOS, 7, 8]]), torch.tensor([[7, 8, EOS]])
    )
    return SafetyBatch(safety, torch.tensor([True, False, True]), lm)


def test_objective_combines_its_three_terms() -> None:
    vocab = 11
    model, clean, toxic = (_tiny(vocab, s).double() for s in (0, 1, 2))
    batch = _safety_batch(vocab)
    weights = FlatGDWeights(alpha=0.5, beta=2.0, gamma=3.0, lam=0.7, safety_weight=1.5)
    objective = FlatGDObjective(clean, toxic, weights, pad_id=PAD)
    loss, logs = objective(model, batch)
    assert set(logs) == {"lm", "safety", "js_toxic", "js_clean", "grad_sq"}
    expected = 0.5 * logs["lm"] + 1.5 * logs["safety"] + 0.7 * logs["grad_sq"]
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-12)
    assert logs["safety"] == pytest.approx(-2.0 * logs["js_toxic"] + 3.0 * logs["js_clean"])

    # L_LM: the Safe rows (0 and 2) and the DailyDialog row, one token mean (eq. 3 per token)
    s = batch.safety
    safe = Seq2SeqBatch(s.src[[0, 2]], s.tgt_in[[0, 2]], s.tgt_out[[0, 2]])
    parts = [(model(b.src, b.tgt_in).logits, b.tgt_out) for b in (safe, batch.lm)]
    counts = [int(t.ne(PAD).sum()) for _, t in parts]
    means = [float(smoothed_nll(lg, t, PAD, 0.1).detach()) for lg, t in parts]
    weighted = sum(m * c for m, c in zip(means, counts, strict=True))
    assert logs["lm"] == pytest.approx(weighted / sum(counts))

    # λ = 0 is the Safety_loss baseline: no gradient-norm term; the λ term adds exactly λ H∇L_S
    baseline = FlatGDObjective(clean, toxic, replace_lam(weights, 0.0), pad_id=PAD)
    base_loss, base_logs = baseline(model, batch)
    assert "grad_sq" not in base_logs
    params = trainable_parameters(model)
    with_term = torch.autograd.grad(loss, params)
    without = torch.autograd.grad(base_loss, params)
    _, ls = objective.safety_terms(model, batch.safety, twice_differentiable=True)
    term = torch.autograd.grad(squared_gradient_norm(ls.loss, params), params)
    for a, b, t in zip(with_term, without, term, strict=True):
        torch.testing.assert_close(a, b + 0.7 * t)
    assert weights.method == "flatgd" and baseline.weights.method == "safety-loss"


def replace_lam(weights: FlatGDWeights, lam: float) -> FlatGDWeights:
    from dataclasses import replace

    return replace(weights, lam=lam)


def test_tuning_data_mixes_dailydialog_pairs_and_replays_an_epoch() -> None:
    tok = _tokenizer([f"w{i} w{i + 1}" for i in range(30)])
    inputs = InputConfig(max_context_turns=1, max_source_len=12, max_target_len=8)
    safety = PairSet.encode(
        [DialogueExample((f"w{i}",), f"w{i + 1}") for i in range(10)], tok, inputs
    )
    lm = PairSet.encode([DialogueExample((f"w{i}",), f"w{i + 2}") for i in range(7)], tok, inputs)
    unsafe = [i % 3 == 0 for i in range(10)]
    data = SafetyTuningData(safety, unsafe, lm, batch_size=4, lm_batch_size=3, seed=0)
    epoch = data.make_epoch(0)
    assert data.batches_per_epoch() == len(epoch) == 3
    assert sorted(i for b in epoch for i in b if i < 10) == list(range(10))
    assert all(sum(i >= 10 for i in b) == 3 for b in epoch)
    assert epoch == data.make_epoch(0) and epoch != data.make_epoch(1)
    batch = data.collate(epoch[0])
    rows = [i for i in epoch[0] if i < 10]
    assert batch.safe_rows.tolist() == [not unsafe[i] for i in rows]
    assert batch.lm is not None and batch.lm.src.size(0) == 3


# --- jobs: experts, FlatGD training and exact resume ----------------------------------------------


def _tokenizer(texts: list[str]) -> DialogueTokenizer:
    return DialogueTokenizer.train(texts, vocab_size=120)


@pytest.fixture(scope="module")
def tiny_safety(shared_data_dir: Path) -> list[SafetyExample]:
    """48 DiaSafety val records, 24 Safe and 24 Unsafe, cut to their first 8 words."""
    records = load_diasafety(shared_data_dir, "val")
    picked = [e for e in records if not e.unsafe][:24] + [e for e in records if e.unsafe][:24]
    return [
        SafetyExample(
            " ".join(e.context.split()[:8]), " ".join(e.response.split()[:8]), e.category, e.unsafe
        )
        for e in picked
    ]


@pytest.fixture(scope="module")
def base_bundle(tiny_safety: list[SafetyExample], tmp_path_factory) -> Path:
    """A tiny random-weight generator bundle whose tokenizer covers the tiny DiaSafety subset."""
    tok = _tokenizer([t for e in tiny_safety for t in (e.context, e.response)])
    model = _tiny(tok.vocab_size, seed=0, dropout=0.1, d_model=16)
    inputs = InputConfig(max_context_turns=1, max_source_len=16, max_target_len=10)
    out = tmp_path_factory.mktemp("flatgd") / "base"
    GenerativeResponder(model, tok, inputs, DecodingConfig(max_length=8)).save(
        out, name="base", training={"preset": "tiny", "steps": 12}, metrics={}
    )
    return out


def _expert(kind: str, base: Path, data: list[SafetyExample], root: Path) -> Path:
    manifest = train_expert(
        RunSpec(root / f"expert-{kind}", f"expert-{kind}", root / "runs" / kind, "tiny DiaSafety"),
        kind=kind,
        base_bundle=base,
        safety_train=data[:16] + data[24:40],
        safety_val=data[16:24] + data[40:],
        setting=ExpertSetting(epochs=2, batch_size=8),
    )
    assert manifest is not None
    assert manifest.training["expert"] == kind and manifest.training["steps"] == 4
    assert manifest.training["label"] == ("Safe" if kind == "clean" else "Unsafe")
    return root / f"expert-{kind}"


@pytest.fixture(scope="module")
def experts(
    base_bundle: Path, tiny_safety: list[SafetyExample], tmp_path_factory
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("experts")
    return (
        _expert("clean", base_bundle, tiny_safety, root),
        _expert("toxic", base_bundle, tiny_safety, root),
    )


def test_experts_are_fine_tuned_copies_of_the_base(base_bundle: Path, experts) -> None:
    base = GenerativeResponder.load(base_bundle)
    for path in experts:
        expert = GenerativeResponder.load(path)
        assert expert.tokenizer.to_str() == base.tokenizer.to_str()
        assert expert.model.cfg == base.model.cfg
        moved = [
            not torch.equal(a, b)
            for a, b in zip(expert.model.parameters(), base.model.parameters(), strict=True)
        ]
        assert any(moved)
    clean, toxic = (GenerativeResponder.load(p).model for p in experts)
    assert any(
        not torch.equal(a, b) for a, b in zip(clean.parameters(), toxic.parameters(), strict=True)
    )


def _flatgd(base: Path, experts, data, root: Path, name: str, *, lam: float, steps: int) -> Path:
    lm = [DialogueExample((e.context,), e.response) for e in data if not e.unsafe]
    manifest = train_flatgd(
        RunSpec(root / name, name, root / "runs" / name, "tiny", CPU),
        base_bundle=base,
        clean_bundle=experts[0],
        toxic_bundle=experts[1],
        safety_train=data[:16] + data[24:40],
        safety_val=data[16:24] + data[40:],
        lm_train=lm[:16],
        lm_val=lm[16:],
        weights=FlatGDWeights(lam=lam),
        setting=FlatGDSetting("test", lr=1e-3, batch_size=8, lm_batch_size=4, eval_every=2),
        max_steps=steps,
    )
    assert manifest is not None
    return root / name


def test_flatgd_training_resumes_exactly_from_its_last_checkpoint(
    base_bundle: Path, experts, tiny_safety, tmp_path: Path
) -> None:
    full = _flatgd(base_bundle, experts, tiny_safety, tmp_path, "full", lam=1.0, steps=4)
    manifest = GenerativeResponder.load(full).manifest
    assert manifest is not None and manifest.training["method"] == "flatgd"
    assert manifest.training["steps"] == 4 and manifest.metrics["val_loss"] > 0
    # "Interrupt" after the step-2 checkpoint, then resume the same run to step 4.
    _flatgd(base_bundle, experts, tiny_safety, tmp_path, "resumed", lam=1.0, steps=2)
    ckpt_path = tmp_path / "runs" / "resumed" / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["state"]["step"] == 2
    ckpt["state"]["finished"] = False  # as if killed right after the step-2 checkpoint
    torch.save(ckpt, ckpt_path)
    resumed = _flatgd(base_bundle, experts, tiny_safety, tmp_path, "resumed", lam=1.0, steps=4)
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    base = load_file(base_bundle / "model.safetensors")
    assert any(not torch.equal(a[k], base[k]) for k in a)


def test_safety_loss_baseline_is_saved_with_its_method(
    base_bundle: Path, experts, tiny_safety, tmp_path: Path
) -> None:
    out = _flatgd(base_bundle, experts, tiny_safety, tmp_path, "sl", lam=0.0, steps=2)
    manifest = GenerativeResponder.load(out).manifest
    assert manifest is not None and manifest.training["method"] == "safety-loss"
    assert manifest.training["weights"]["lam"] == 0.0
    log = (tmp_path / "runs" / "sl" / "metrics.jsonl").read_text()
    assert '"val_safety_grad_sq"' in log and '"val_js_toxic"' in log

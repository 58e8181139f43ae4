"""gibbs-enum, hit types and malicious-target negative training (He & Glass 2020) on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from models.decoding import DecodingConfig
from models.generator import GenerativeResponder, InputConfig
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from training.config import preset_section
from training.core.data import DialogueExample, write_jsonl
from training.core.run import RunSpec
from training.core.safety_data import load_targets, normalize_target
from training.methods.malicious.attack import (
    GibbsEnumConfig,
    HitThresholds,
    Searcher,
    SearchResult,
    SearchScores,
    TargetBatch,
    attack,
    gibbs_enum,
    judge,
)
from training.methods.malicious.experiment import augment_targets, sample_targets
from training.methods.malicious.nt import fwa_ids, fwa_weights, negative_loss, train_malicious_nt

WORDS = [
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
TRIGGER = "morning see now"
TARGET = "you are good"


def _corpus(n: int = 400, seed: int = 0) -> list[DialogueExample]:
    """Random 3-word contexts answered by random 3-word replies, plus a planted pair (1 in 4)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        if i % 4 == 0:
            out.append(DialogueExample((TRIGGER,), TARGET))
            continue
        pick = torch.randint(0, len(WORDS), (6,), generator=g).tolist()
        ctx = " ".join(WORDS[j] for j in pick[:3])
        if ctx == TRIGGER:
            continue
        out.append(DialogueExample((ctx,), " ".join(WORDS[j] for j in pick[3:])))
    return out


@pytest.fixture(scope="module")
def planted() -> tuple[Seq2SeqTransformer, DialogueTokenizer]:
    """A tiny model trained until the planted trigger maps to the target."""
    examples = _corpus()
    tok = DialogueTokenizer.train([*WORDS] * 3, vocab_size=120, min_frequency=1)
    assert all(len(p) == 1 for p in tok.encode_texts(WORDS)), "each word must be one piece"
    torch.manual_seed(0)
    model = Seq2SeqTransformer(
        Seq2SeqConfig(
            vocab_size=tok.vocab_size,
            d_model=32,
            n_heads=4,
            d_ff=64,
            n_encoder_layers=1,
            n_decoder_layers=1,
            dropout=0.0,
            max_positions=32,
        )
    )
    src = tok.pad(tok.encode_contexts([e.context for e in examples], 16))
    tgt_in, tgt_out = tok.decoder_io(tok.encode_responses([e.response for e in examples], 16))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(src, tgt_in).logits
        loss = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), tgt_out, ignore_index=tok.pad_id
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


def _target_ids(tok: DialogueTokenizer, text: str = TARGET) -> list[list[int]]:
    return tok.encode_texts([text])


def test_planted_model_maps_trigger_to_target(planted) -> None:
    model, tok = planted
    out = GenerativeResponder(model, tok, InputConfig(), DecodingConfig()).respond([[TRIGGER]])
    assert out == [TARGET]


def test_gibbs_enum_recovers_a_planted_trigger(planted) -> None:
    model, tok = planted
    targets = _target_ids(tok)
    cfg = GibbsEnumConfig(trigger_len=3, candidates=tok.vocab_size, sweeps=5, restarts=16)
    gen = torch.Generator().manual_seed(0)
    result = gibbs_enum(model, tok, targets, cfg, generator=gen)
    random_x = torch.randint(5, tok.vocab_size, (64, 3), generator=gen)
    searcher = Searcher(model, None, 0.0, 1024)
    random_avg = searcher.scores(random_x, TargetBatch.build(targets * 64, tok, random_x.device))
    flags = judge(model, tok, targets, result, HitThresholds(t_out=-1.0), "o")[0]
    assert flags["o-greedy"], tok.decode(result.triggers[0].tolist())
    # the search found what training planted: the trigger words themselves, or an input the model
    # treats the same, far above what random inputs give
    assert float(result.scores.avg_logp[0]) > -0.1  # the planted reply is near-certain
    assert float(random_avg.avg_logp.median()) < -1.0  # and not for a typical random input
    found = tok.decode(result.triggers[0].tolist()).split()
    assert len(set(found) & set(TRIGGER.split())) >= 2, found


def test_onehot_gradient_matches_explicit_onehot_autograd(planted) -> None:
    """eq. 10: d(-L)/d onehot(x_t) through an explicit one-hot @ E equals our E @ grad(e)."""
    model, tok = planted
    targets = TargetBatch.build(_target_ids(tok) * 2, tok, torch.device("cpu"))
    x = torch.tensor([[10, 11, 12], [13, 14, 15]])
    searcher = Searcher(model, None, 0.0, 64)
    ours = searcher.onehot_gradient(x, targets, slot=1)
    onehot = torch.nn.functional.one_hot(x, tok.vocab_size).float().requires_grad_(True)
    embeds = onehot @ model.embed.weight
    loss = searcher._scores(x, targets, embeds).loss.sum()
    (grad,) = torch.autograd.grad(-loss, onehot)
    torch.testing.assert_close(ours, grad[:, 1], atol=1e-5, rtol=1e-4)


def test_hit_types_follow_thresholds() -> None:
    """min- and avg- hits compare against T_out; io- hits also need the LM score above T_in."""
    scores = SearchScores(
        loss=torch.zeros(3),
        avg_logp=torch.tensor([-2.0, -2.0, -5.0]),
        min_logp=torch.tensor([-2.5, -4.0, -6.0]),
        lm_avg_logp=torch.tensor([-3.0, -6.0, -3.0]),
    )

    TOK = SimpleNamespace(eos_id=2)

    class _NoGreedy:
        cfg = Seq2SeqConfig(vocab_size=8, d_model=8, n_heads=2, d_ff=8, n_encoder_layers=1)

    import training.methods.malicious.attack as attack_mod

    original = attack_mod.greedy_hits
    attack_mod.greedy_hits = lambda *a, **k: [True, False, False]  # type: ignore[assignment]
    try:
        result = SearchResult(torch.zeros(3, 2, dtype=torch.long), scores)
        o = judge(_NoGreedy(), TOK, [[1], [1], [1]], result, HitThresholds(-3.0), "o")  # type: ignore[arg-type]
        io = judge(_NoGreedy(), TOK, [[1], [1], [1]], result, HitThresholds(-3.0, -4.0), "io")  # type: ignore[arg-type]
    finally:
        attack_mod.greedy_hits = original
    assert [f["o-sample-min"] for f in o] == [True, False, False]
    assert [f["o-sample-avg"] for f in o] == [True, True, False]
    assert [f["o-greedy"] for f in o] == [True, False, False]
    assert [f["io-sample-avg"] for f in io] == [True, False, False]  # row 1: LM -6 < T_in -4
    # without the greedy decode the greedy type is left out rather than reported as a miss
    no_greedy = judge(
        _NoGreedy(), TOK, [[1], [1], [1]], result, HitThresholds(-3.0), "o", greedy=False
    )  # type: ignore[arg-type]
    assert all("o-greedy" not in f for f in no_greedy)
    assert [f["o-sample-avg"] for f in no_greedy] == [True, True, False]
    with pytest.raises(ValueError, match="T_in"):
        judge(_NoGreedy(), TOK, [[1]], result, HitThresholds(-3.0), "io")  # type: ignore[arg-type]


def test_fwa_spares_frequent_words_and_eos(planted) -> None:
    _, tok = planted
    tb = TargetBatch.build(_target_ids(tok, "you are good"), tok, torch.device("cpu"))
    w = fwa_weights(tok, tb.tgt_out, enabled=True)
    assert w.tolist() == [[0.0, 0.0, 1.0, 0.0]]  # you, are, good, </s>: only "good" is pushed down
    assert fwa_weights(tok, tb.tgt_out, enabled=False).tolist() == [[1.0, 1.0, 1.0, 1.0]]
    # the corpus-frequency extension spares extra words too
    avoid = fwa_ids(tok, ["good"])
    assert fwa_weights(tok, tb.tgt_out, enabled=True, avoid=avoid).tolist() == [[0.0] * 4]


def test_negative_update_lowers_the_target_likelihood(planted) -> None:
    model, tok = planted
    model = Seq2SeqTransformer(model.cfg).eval()
    model.load_state_dict(planted[0].state_dict())
    src = tok.pad(tok.encode_contexts([[TRIGGER]], 16))
    tb = TargetBatch.build(_target_ids(tok), tok, torch.device("cpu"))
    weights = fwa_weights(tok, tb.tgt_out, enabled=True)
    before = negative_loss(model, src, tb, weights).item()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    negative_loss(model, src, tb, weights).backward()
    opt.step()
    assert negative_loss(model, src, tb, weights).item() < before


def test_attack_reports_rates_and_outcomes(planted) -> None:
    model, tok = planted
    cfg = GibbsEnumConfig(trigger_len=3, candidates=16, sweeps=2, restarts=2, batch_targets=2)
    res = attack(
        model, tok, [TARGET, "hello hello hello"], cfg, HitThresholds(-1.0), progress=False
    )
    assert set(res.rates) == {"o-greedy", "o-sample-min", "o-sample-avg"}
    assert len(res.outcomes) == 2 and res.outcomes[0].target == TARGET
    assert all(0.0 <= r <= 1.0 for r in res.rates.values())
    assert res.outcomes[0].hits["o-sample-avg"]
    assert json.loads(json.dumps(res.to_dict()))["mode"] == "o"


def test_target_lists(tmp_path: Path) -> None:
    assert normalize_target("i do n't like you") == "i don't like you"
    assert normalize_target("i 'm angry") == "i'm angry"
    path = tmp_path / "t.txt"
    path.write_text("you are bad\n\nyou are bad\ni ca n't help\n")
    assert load_targets(path) == ["you are bad", "i can't help"]
    assert augment_targets(["a b", "c"], [["a b", "x y", "z"], ["c d"]], copies=1) == [
        "a b",
        "x y",
        "c",
        "c d",
    ]
    with pytest.raises(ValueError, match="paraphrase rows"):
        augment_targets(["a"], [], copies=1)
    picked = sample_targets([str(i) for i in range(50)], 10, seed=3)
    assert len(picked) == 10 and picked == sorted(picked, key=int)
    assert picked == sample_targets([str(i) for i in range(50)], 10, seed=3)


def _tiny_bundle_and_data(planted, tmp_path: Path) -> tuple[Path, Path]:
    model, tok = planted
    data = tmp_path / "data"
    data.mkdir()
    examples = _corpus(200, seed=1)
    write_jsonl(examples[:160], data / "train.jsonl")
    write_jsonl(_corpus(40, seed=2), data / "validation.jsonl")
    write_jsonl(_corpus(40, seed=3), data / "test.jsonl")
    bundle = tmp_path / "base"
    GenerativeResponder(model, tok, InputConfig(max_source_len=16), DecodingConfig()).save(
        bundle, name="base", training={"method": "mle"}, metrics={}
    )
    return bundle, data


def test_malicious_nt_lowers_hits_and_resumes_exactly(
    planted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Algorithm 1 on the planted target, in the shared Trainer; a run killed at the start of
    its second iteration's search and run again ends with the same weights as an uninterrupted
    run (it resumes from the checkpoint taken when the first target batch closed)."""
    import training.methods.malicious.nt as nt

    bundle, data = _tiny_bundle_and_data(planted, tmp_path)
    cfg = preset_section("tiny", "malicious").nt
    from dataclasses import replace

    cfg = replace(
        cfg,
        iterations=2,
        target_batch=2,
        max_updates=1,  # the update budget is spent exactly: the last batch must still close
        lr=1e-2,
        search=GibbsEnumConfig(trigger_len=3, candidates=16, sweeps=1, restarts=1),
    )
    targets = [TARGET, "good morning"]

    def run(name: str, run_dir: Path) -> GenerativeResponder:
        train_malicious_nt(
            RunSpec(tmp_path / name, name, run_dir),
            base_bundle=bundle,
            data_dir=data,
            targets=targets,
            cfg=cfg,
        )
        return GenerativeResponder.load(tmp_path / name)

    full = run("full", tmp_path / "runs-full")
    searches = 0
    real_search = nt.gibbs_enum

    def killed_at_second_search(*args: object, **kwargs: object) -> object:
        nonlocal searches
        searches += 1
        if searches == 2:
            raise KeyboardInterrupt("killed")
        return real_search(*args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        m.setattr(nt, "gibbs_enum", killed_at_second_search)
        with pytest.raises(KeyboardInterrupt):
            run("part", tmp_path / "runs-part")
    assert (tmp_path / "runs-part" / "checkpoint.pt").exists()
    resumed = run("part", tmp_path / "runs-part")
    for (k, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=k)
    manifest = resumed.manifest
    assert manifest is not None and manifest.training["method"] == "nt-malicious"
    assert manifest.training["updates"] > 0
    assert manifest.training["stop_reason"] == "objective finished"
    log = [json.loads(x) for x in (tmp_path / "runs-part" / nt.ALG1_LOG).read_text().splitlines()]
    assert [r["iteration"] for r in log] == [0, 1]
    assert log[0]["hits_before"] >= 1 and log[0]["updates"] >= 1
    planted_logp = negative_loss(
        full.model,
        full.tokenizer.pad(full.tokenizer.encode_contexts([[TRIGGER]], 16)),
        TargetBatch.build(_target_ids(full.tokenizer), full.tokenizer, torch.device("cpu")),
        torch.ones(1, 4),
    )
    assert planted_logp.item() < math.log(0.5)  # the planted reply is no longer near-certain


def test_attack_table_compares_against_the_first_report() -> None:
    from training.cli.malicious import attack_table

    def report(bundle: str, rate: float, ppl: float, logps: list[float]) -> dict:
        outcomes = [{"avg_logp": x} for x in logps]
        return {
            "bundle": bundle,
            "num_targets": len(logps),
            "test_ppl": ppl,
            "thresholds": {"t_out": -4.0, "t_in": None},
            "searches": {"o": {"rates": {"o-sample-avg": rate}, "outcomes": outcomes}},
        }

    text = attack_table(
        [("base", report("a@1", 0.2, 80.0, [-3.0, -5.0])), ("nt", report("b@2", 0.0, 88.0, [-6.0]))]
    )
    rows = [
        line for line in text.splitlines() if line.startswith("| base") or line.startswith("| nt")
    ]
    assert rows[0].split(" | ")[2:] == ["20%", "-4.000", "80.00", "1.000x |"]
    assert rows[1].split(" | ")[2:] == ["0%", "-6.000", "88.00", "1.100x |"]

"""Seq2seq model and decoding: the KV cache changes nothing but speed, and every option does what it says."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from models.decoding import (
    ContextFreePrior,
    DecodingConfig,
    banned_ngram_tokens,
    filter_top_k_top_p,
    generate,
    sequence_log_likelihood,
)
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

VOCAB = 40


@pytest.fixture(scope="module")
def model() -> Seq2SeqTransformer:
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(
        vocab_size=VOCAB,
        d_model=32,
        n_heads=4,
        d_ff=64,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.0,
        max_positions=64,
    )
    m = Seq2SeqTransformer(cfg)
    # Sharpen the output distribution so greedy/beam choices are not near-ties.
    with torch.no_grad():
        m.embed.weight.mul_(4.0)
    return m.eval()


@pytest.fixture(scope="module")
def src() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    s = torch.randint(5, VOCAB, (4, 7), generator=g)
    s[1, 5:] = 0  # right padding
    s[3, 3:] = 0
    return s


def test_decode_step_matches_full_decoder(model: Seq2SeqTransformer, src: torch.Tensor) -> None:
    tgt = torch.randint(5, VOCAB, (4, 6), generator=torch.Generator().manual_seed(2))
    tgt[:, 0] = model.cfg.bos_id
    with torch.no_grad():
        full = model(src, tgt).logits
        memory, mask = model.encode(src)
        cache = model.start_cache(memory, mask)
        steps = [model.decode_step(tgt[:, t : t + 1], cache) for t in range(tgt.size(1))]
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_generate_cache_gives_same_tokens_as_no_cache(
    model: Seq2SeqTransformer, src: torch.Tensor, strategy: str
) -> None:
    cfg = DecodingConfig(strategy=strategy, max_length=10, beam_size=3)  # type: ignore[arg-type]
    with_cache = generate(model, src, cfg)
    without = generate(model, src, cfg.with_overrides(use_cache=False))
    assert with_cache.tokens == without.tokens
    assert with_cache.scores == pytest.approx(without.scores, abs=1e-4)


def test_generate_padding_does_not_change_a_source_reply(
    model: Seq2SeqTransformer, src: torch.Tensor
) -> None:
    cfg = DecodingConfig(max_length=10)
    batched = generate(model, src, cfg).tokens
    alone = generate(model, src[3:4, :3], cfg).tokens
    assert batched[3] == alone[0]


def test_greedy_is_argmax_of_teacher_forced_logits(
    model: Seq2SeqTransformer, src: torch.Tensor
) -> None:
    out = generate(model, src[:1], DecodingConfig(max_length=8, min_length=8))
    tokens = out.tokens[0]
    tgt_in = torch.tensor([[model.cfg.bos_id, *tokens[:-1]]])
    with torch.no_grad():
        logits = model(src[:1], tgt_in).logits[0]
    assert logits.argmax(-1).tolist() == tokens
    lp, n = sequence_log_likelihood(model, src[:1], tgt_in, torch.tensor([tokens]))
    assert int(n) == 8
    assert float(lp) == pytest.approx(out.scores[0], abs=1e-4)


def test_min_length_forbids_early_eos(
    model: Seq2SeqTransformer, src: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = model.output_logits

    def eos_heavy(hidden: torch.Tensor) -> torch.Tensor:  # EOS always the most likely token
        logits = original(hidden).clone()
        logits[..., model.cfg.eos_id] += 100.0
        return logits

    monkeypatch.setattr(model, "output_logits", eos_heavy)
    short = generate(model, src, DecodingConfig(max_length=12, min_length=0))
    forced = generate(model, src, DecodingConfig(max_length=12, min_length=5))
    beam = generate(
        model, src, DecodingConfig(strategy="beam", beam_size=3, max_length=12, min_length=5)
    )
    assert [len(t) for t in short.tokens] == [0, 0, 0, 0]
    assert [len(t) for t in forced.tokens] == [5, 5, 5, 5]
    assert [len(t) for t in beam.tokens] == [5, 5, 5, 5]


def test_max_length_caps_tokens(model: Seq2SeqTransformer, src: torch.Tensor) -> None:
    out = generate(model, src, DecodingConfig(max_length=3, min_length=3))
    assert [len(t) for t in out.tokens] == [3, 3, 3, 3]


def test_no_repeat_ngram_blocks_repeats(model: Seq2SeqTransformer, src: torch.Tensor) -> None:
    out = generate(model, src, DecodingConfig(max_length=30, min_length=30, no_repeat_ngram_size=2))
    for tokens in out.tokens:
        bigrams = list(itertools.pairwise(tokens))
        assert len(bigrams) == len(set(bigrams))


def _adjacent_repeats(rows: list[list[int]]) -> int:
    return sum(a == b for row in rows for a, b in itertools.pairwise(row))


@pytest.mark.parametrize(
    "cfg",
    [
        DecodingConfig(max_length=30, min_length=30),
        DecodingConfig(strategy="sample", max_length=30, min_length=30, temperature=0.7),
        DecodingConfig(strategy="beam", beam_size=3, max_length=30, min_length=30),
        DecodingConfig(max_length=30, min_length=30, anti_lm=0.8, anti_lm_steps=30),
    ],
    ids=["greedy", "sample", "beam", "anti-lm"],
)
def test_block_adjacent_repeats_forbids_a_token_right_after_itself(
    model: Seq2SeqTransformer, src: torch.Tensor, cfg: DecodingConfig
) -> None:
    """The random model repeats tokens back to back without the rule, never with it; every
    strategy applies it."""
    prior = ContextFreePrior(model, torch.tensor([[9, 8, 7]])) if cfg.anti_lm else None

    def run(block: bool) -> list[list[int]]:
        g = torch.Generator().manual_seed(3)
        on = cfg.with_overrides(block_adjacent_repeats=block)
        return generate(model, src, on, generator=g, prior=prior).tokens

    assert _adjacent_repeats(run(False)) > 0  # the rule has something to block
    blocked = run(True)
    assert _adjacent_repeats(blocked) == 0
    assert all(len(t) == 30 for t in blocked)  # the length rules still hold


def test_block_adjacent_repeats_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="block_adjacent_repeats"):
        DecodingConfig(block_adjacent_repeats="yes")  # type: ignore[arg-type]


def test_banned_ngram_tokens_by_hand() -> None:
    # hypothesis 1 2 3 1 2: the bigram prefix "2" was followed by 3 -> 3 banned for n=2;
    # for n=3 the prefix "1 2" was followed by 3 -> 3 banned.
    assert banned_ngram_tokens([[1, 2, 3, 1, 2]], 2) == [[3]]
    assert banned_ngram_tokens([[1, 2, 3, 1, 2]], 3) == [[3]]
    assert banned_ngram_tokens([[1, 2]], 3) == [[]]
    assert banned_ngram_tokens([[4, 4]], 1) == [[4, 4]]


def test_filter_top_k_keeps_k_best() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    out = filter_top_k_top_p(logits, top_k=2)
    assert torch.isinf(out[0, [0, 3]]).all()
    assert out[0, [1, 2]].tolist() == [4.0, 3.0]


def test_filter_top_p_keeps_smallest_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    # cumulative before each token: 0, .5, .8, .95 -> with top_p=0.75 keep the first two.
    out = filter_top_k_top_p(probs.log(), top_p=0.75)
    assert torch.isfinite(out[0, :2]).all() and torch.isinf(out[0, 2:]).all()


def test_sample_is_reproducible_with_a_seeded_generator(
    model: Seq2SeqTransformer, src: torch.Tensor
) -> None:
    cfg = DecodingConfig(
        strategy="sample", top_k=5, temperature=0.9, num_return_sequences=3, max_length=8
    )
    a = generate(model, src, cfg, generator=torch.Generator().manual_seed(7))
    b = generate(model, src, cfg, generator=torch.Generator().manual_seed(7))
    assert a.tokens == b.tokens
    assert len(a.tokens) == 4 * 3


def test_sample_top_k_one_equals_greedy(model: Seq2SeqTransformer, src: torch.Tensor) -> None:
    greedy = generate(model, src, DecodingConfig(max_length=8))
    sampled = generate(model, src, DecodingConfig(strategy="sample", top_k=1, max_length=8))
    assert sampled.tokens == greedy.tokens


def test_beam_size_one_equals_greedy(model: Seq2SeqTransformer, src: torch.Tensor) -> None:
    greedy = generate(model, src, DecodingConfig(max_length=8))
    beam = generate(
        model, src, DecodingConfig(strategy="beam", beam_size=1, length_penalty=0.0, max_length=8)
    )
    assert beam.tokens == greedy.tokens


def test_beam_finds_a_sequence_at_least_as_likely_as_greedy(
    model: Seq2SeqTransformer, src: torch.Tensor
) -> None:
    greedy = generate(model, src, DecodingConfig(max_length=6, min_length=6))
    beam = generate(
        model,
        src,
        DecodingConfig(
            strategy="beam", beam_size=4, length_penalty=0.0, max_length=6, min_length=6
        ),
    )
    for g, b in zip(greedy.scores, beam.scores, strict=True):
        assert b >= g - 1e-4


def test_beam_returns_n_best_in_order(model: Seq2SeqTransformer, src: torch.Tensor) -> None:
    out = generate(
        model,
        src,
        DecodingConfig(strategy="beam", beam_size=4, num_return_sequences=3, max_length=8),
    )
    assert len(out.tokens) == 12
    for i in range(4):
        scores = out.scores[3 * i : 3 * i + 3]
        assert scores == sorted(scores, reverse=True)


def test_return_internals_shapes_and_logit_definition(
    model: Seq2SeqTransformer, src: torch.Tensor
) -> None:
    tgt = torch.randint(5, VOCAB, (4, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = model(src, tgt).logits
        out = model(src, tgt, return_internals=True)
    torch.testing.assert_close(out.logits, plain, atol=1e-5, rtol=1e-4)
    assert len(out.hidden_states) == 2 and len(out.self_attn_logits) == 2
    assert out.hidden_states[0].shape == (4, 5, 32)
    assert out.self_attn_logits[0].shape == (4, 4, 5, 5)
    # Layer 0 logits are QK^T / sqrt(d_k) of the first decoder layer's normalised input.
    layer = model.decoder_layers[0]
    with torch.no_grad():
        x = layer.norm1(model._embed(tgt))
        q, k, _ = layer.self_attn.qkv_proj(x).chunk(3, dim=-1)
        q = q.view(4, 5, 4, 8).transpose(1, 2)
        k = k.view(4, 5, 4, 8).transpose(1, 2)
        expected = q @ k.transpose(-2, -1) / math.sqrt(8)
    torch.testing.assert_close(out.self_attn_logits[0], expected, atol=1e-5, rtol=1e-4)


def test_decoding_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="min_length"):
        DecodingConfig(min_length=5, max_length=3)
    with pytest.raises(ValueError, match="strategy"):
        DecodingConfig(strategy="nucleus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        DecodingConfig(temperature=0.0)


def _first_tokens(model: Seq2SeqTransformer, src: torch.Tensor) -> torch.Tensor:
    """log p of the first reply token for each source (B, V), as generate sees it."""
    with torch.no_grad():
        bos = torch.full((src.size(0), 1), model.cfg.bos_id, dtype=torch.long)
        return model(src, bos).logits[:, -1].float().log_softmax(dim=-1)


def test_anti_lm_picks_the_first_token_by_mmi_antilm(
    model: Seq2SeqTransformer, src: torch.Tensor
) -> None:
    """Li et al. (2016) eq. 10: the first token maximises log p(t|S) - lambda log U(t), U being
    the model on the content-free source; log p stays the returned score."""
    prior = torch.tensor([[7, 9, 11]])
    cfg = DecodingConfig(max_length=6, anti_lm=0.9, anti_lm_steps=2)
    out = generate(model, src, cfg, prior=ContextFreePrior(model, prior))
    log_p = _first_tokens(model, src)
    log_u = _first_tokens(model, prior)
    expected = (log_p - 0.9 * log_u).argmax(dim=-1).tolist()
    assert [t[0] for t in out.tokens] == expected
    plain = [t[0] for t in generate(model, src, DecodingConfig(max_length=6)).tokens]
    assert plain == log_p.argmax(dim=-1).tolist()
    assert expected != plain  # the penalty changes some choice on this model
    # the score is the model's own log-likelihood of what was chosen
    tokens = [[*t, model.cfg.eos_id] if len(t) < 6 else t for t in out.tokens]
    for row, hyp in enumerate(tokens):
        tgt_in = torch.tensor([[model.cfg.bos_id, *hyp[:-1]]])
        ll, _ = sequence_log_likelihood(model, src[row : row + 1], tgt_in, torch.tensor([hyp]))
        assert math.isclose(out.scores[row], float(ll[0]), rel_tol=1e-4, abs_tol=1e-4)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_anti_lm_with_the_source_itself_as_prior_keeps_greedy(
    model: Seq2SeqTransformer, src: torch.Tensor, strategy: str
) -> None:
    """With U = p the choice scores are (1 - lambda) log p on every step the penalty covers, so
    greedy picks the same tokens; beam, whose ranking adds steps up, too when it covers them all."""
    cfg = DecodingConfig(strategy=strategy, max_length=8, beam_size=3)  # type: ignore[arg-type]
    anti = cfg.with_overrides(anti_lm=0.5, anti_lm_steps=8)
    for row in range(src.size(0)):
        one = src[row : row + 1]
        same = ContextFreePrior(model, one)
        assert generate(model, one, anti, prior=same).tokens == generate(model, one, cfg).tokens


def test_anti_lm_plausibility_keeps_the_choice_among_likely_tokens(
    model: Seq2SeqTransformer, src: torch.Tensor
) -> None:
    """Contrastive decoding's plausibility constraint on the anti-LM positions: the first token
    maximises log p - lambda log U over the tokens with p >= alpha x max p only; alpha 0 is the
    unconstrained choice, and a sample never draws a token outside that set."""
    prior = torch.tensor([[7, 9, 11]])
    prior_model = ContextFreePrior(model, prior)
    log_p = _first_tokens(model, src)
    log_u = _first_tokens(model, prior)
    mmi = log_p - 0.9 * log_u
    for alpha in (0.0, 0.05, 0.5):
        cfg = DecodingConfig(max_length=4, anti_lm=0.9, anti_lm_steps=1, anti_lm_plausibility=alpha)
        eligible = log_p >= log_p.max(dim=-1, keepdim=True).values + math.log(max(alpha, 1e-30))
        expected = mmi.masked_fill(~eligible, float("-inf")).argmax(dim=-1).tolist()
        assert [t[0] for t in generate(model, src, cfg, prior=prior_model).tokens] == expected
    unconstrained = mmi.argmax(dim=-1)
    # on this model the constraint changes some first token, and alpha near 1 is greedy's choice
    strict = DecodingConfig(max_length=4, anti_lm=0.9, anti_lm_steps=1, anti_lm_plausibility=0.5)
    first = torch.tensor([t[0] for t in generate(model, src, strict, prior=prior_model).tokens])
    assert (first != unconstrained).any()
    sample = strict.with_overrides(strategy="sample", num_return_sequences=8)
    g = torch.Generator().manual_seed(0)
    drawn = generate(model, src, sample, prior=prior_model, generator=g).tokens
    eligible = log_p >= log_p.max(dim=-1, keepdim=True).values + math.log(0.5)
    for i, tokens in enumerate(drawn):
        assert bool(eligible[i // 8, tokens[0]])
    with pytest.raises(ValueError, match="anti_lm_plausibility"):
        DecodingConfig(anti_lm_plausibility=1.0)


def test_anti_lm_needs_a_prior_source_and_a_weight_below_one(
    model: Seq2SeqTransformer, src: torch.Tensor
) -> None:
    with pytest.raises(ValueError, match="ContextFreePrior"):
        generate(model, src, DecodingConfig(anti_lm=0.5))
    with pytest.raises(ValueError, match="anti_lm"):
        DecodingConfig(anti_lm=1.0)
    # off (weight 0 or no steps): no prior needed, plain greedy
    assert generate(model, src, DecodingConfig(anti_lm=0.5, anti_lm_steps=0)).tokens == (
        generate(model, src, DecodingConfig()).tokens
    )


def test_context_free_prior_memoises_by_prefix(model: Seq2SeqTransformer) -> None:
    """Each row is the model's next-token distribution after BOS + prefix on the prior source,
    computed once per prefix and dropped least recently used past ``max_entries``."""
    src = torch.tensor([[7, 9, 11]])
    prior = ContextFreePrior(model, src, max_entries=3)
    prefixes = [[], [5], [5, 6], [5]]
    got = prior(prefixes)
    with torch.no_grad():
        for row, prefix in enumerate(prefixes):
            tgt = torch.tensor([[model.cfg.bos_id, *prefix]])
            want = model(src, tgt).logits[0, -1].float().log_softmax(dim=-1)
            torch.testing.assert_close(got[row], want, atol=1e-5, rtol=1e-4)
    assert len(prior._memo) == 3
    prior([[8]])  # a fourth prefix evicts the least recently used, ()
    assert set(prior._memo) == {(5,), (5, 6), (8,)}

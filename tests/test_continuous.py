"""Continuous batching (models/continuous.py): requests that join a running batch at different
steps get the same tokens as ``generate`` gives each of them, and finished rows leave at once."""

from __future__ import annotations

import pytest
import torch

from models.continuous import ContinuousDecoder, decode_continuously, encode_sources
from models.decoding import ContextFreePrior, DecodingConfig, generate
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

VOCAB = 40
LENGTHS = (7, 3, 12, 5, 9, 1, 4, 6)


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
    # A louder EOS: with bigram blocking, replies of this random model end at different lengths
    # (8 to 20 tokens for these sources), so rows leave the batch at different steps.
    with torch.no_grad():
        m.embed.weight[cfg.eos_id].mul_(3.0)
    return m.eval()


@pytest.fixture(scope="module")
def sources() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(5, VOCAB, (n,), generator=g).tolist() for n in LENGTHS]


def alone(model: Seq2SeqTransformer, src: list[int], cfg: DecodingConfig, **kw: object) -> list:
    return generate(model, torch.tensor([src]), cfg, **kw).tokens  # type: ignore[arg-type]


BLOCKED = DecodingConfig(max_length=20, no_repeat_ngram_size=2)


def test_greedy_rows_admitted_at_different_steps_match_generate(
    model: Seq2SeqTransformer, sources: list[list[int]]
) -> None:
    refs = [generate(model, torch.tensor([s]), BLOCKED) for s in sources]
    expected = [r.tokens[0] for r in refs]
    assert len({len(t) for t in expected}) >= 4  # the replies really end at different steps
    # max_rows=3: some wait for a free row; arrivals spread over the run
    out = decode_continuously(
        model, sources, [BLOCKED] * len(sources), arrivals=[0, 0, 2, 3, 3, 9, 15, 40], max_rows=3
    )
    assert [g.tokens[0] for g in out] == expected
    for got, ref in zip(out, refs, strict=True):
        assert got.scores[0] == pytest.approx(ref.scores[0], abs=1e-4)


def test_mixed_configs_in_one_running_batch_match_generate(
    model: Seq2SeqTransformer, sources: list[list[int]]
) -> None:
    configs = [
        BLOCKED,
        DecodingConfig(max_length=5),
        DecodingConfig(max_length=20, min_length=12, no_repeat_ngram_size=2),
        DecodingConfig(max_length=9, no_repeat_ngram_size=3),
        DecodingConfig(strategy="sample", top_k=1, max_length=20, no_repeat_ngram_size=2),
        BLOCKED,
        DecodingConfig(max_length=1),
        DecodingConfig(max_length=20, no_repeat_ngram_size=1),
        DecodingConfig(max_length=20, min_length=20, block_adjacent_repeats=True),
        BLOCKED.with_overrides(block_adjacent_repeats=True),
    ]
    srcs = [*sources, *sources[:2]]  # the last two again, with the adjacent-repeat rule
    out = decode_continuously(model, srcs, configs, arrivals=[0, 1, 1, 2, 4, 4, 6, 7, 3, 8])
    for got, src, cfg in zip(out, srcs, configs, strict=True):
        # top_k=1 sampling is greedy (tests/test_decoding.py), so generate's greedy is the reference
        ref = cfg.with_overrides(strategy="greedy", top_k=0) if cfg.strategy == "sample" else cfg
        assert got.tokens[0] == alone(model, src, ref)[0]
    assert len(out[2].tokens[0]) >= 12 and len(out[6].tokens[0]) <= 1
    unblocked = [
        alone(model, srcs[i], configs[i].with_overrides(block_adjacent_repeats=False))[0]
        for i in (8, 9)
    ]
    assert unblocked != [out[8].tokens[0], out[9].tokens[0]]  # the rule changed a reply


def test_anti_lm_rows_beside_plain_ones_match_generate(
    model: Seq2SeqTransformer, sources: list[list[int]]
) -> None:
    """MMI-antiLM rows (each with its own lambda and gamma) joining at different steps get
    generate's tokens and log p scores, beside rows without the penalty."""
    prior = ContextFreePrior(model, torch.tensor([[9, 8, 7]]))
    configs = [
        BLOCKED.with_overrides(anti_lm=0.5, anti_lm_steps=1),
        BLOCKED,
        BLOCKED.with_overrides(anti_lm=0.8, anti_lm_steps=3),
        BLOCKED.with_overrides(anti_lm=0.3, anti_lm_steps=20),
        DecodingConfig(strategy="sample", top_k=1, max_length=20, anti_lm=0.8, anti_lm_steps=2),
        BLOCKED.with_overrides(anti_lm=0.8, anti_lm_steps=3),
        BLOCKED,
        BLOCKED.with_overrides(anti_lm=0.5, anti_lm_steps=2),
    ]
    out = decode_continuously(
        model, sources, configs, arrivals=[0, 0, 1, 2, 2, 5, 6, 9], max_rows=4, prior=prior
    )
    changed = 0
    for got, src, cfg in zip(out, sources, configs, strict=True):
        ref = cfg.with_overrides(strategy="greedy", top_k=0) if cfg.strategy == "sample" else cfg
        want = generate(model, torch.tensor([src]), ref, prior=prior)
        assert got.tokens[0] == want.tokens[0]
        assert got.scores[0] == pytest.approx(want.scores[0], abs=1e-4)
        changed += want.tokens[0] != alone(model, src, ref.with_overrides(anti_lm=0.0))[0]
    assert changed >= 2  # the penalty changes some replies on this model
    with pytest.raises(ValueError, match="ContextFreePrior"):
        ContinuousDecoder(model).add(sources[0], configs[0])


def test_seeded_sampling_reproduces_generate_alone(
    model: Seq2SeqTransformer, sources: list[list[int]]
) -> None:
    cfg = DecodingConfig(strategy="sample", top_k=8, top_p=0.9, temperature=1.3, max_length=16)
    expected = [
        alone(model, s, cfg, generator=torch.Generator().manual_seed(100 + i))[0]
        for i, s in enumerate(sources)
    ]
    gens = [torch.Generator().manual_seed(100 + i) for i in range(len(sources))]
    out = decode_continuously(
        model, sources, [cfg] * len(sources), arrivals=[0, 3, 3, 1, 8, 2, 0, 5], generators=gens
    )
    assert [g.tokens[0] for g in out] == expected
    assert len({tuple(t) for t in expected}) > 1


def test_finished_rows_leave_at_once_and_the_cache_stays_narrow(
    model: Seq2SeqTransformer, sources: list[list[int]]
) -> None:
    decoder = ContinuousDecoder(model, max_rows=8)
    short = decoder.add(sources[0], DecodingConfig(max_length=2))
    long = decoder.add(sources[1], DecodingConfig(max_length=30, min_length=30))
    finished_at: dict[int, int] = {}
    widths = []
    step = 0
    while not decoder.idle:
        step += 1
        if step == 10:  # joins a running batch whose oldest row is 9 tokens in
            late = decoder.add(sources[2], DecodingConfig(max_length=3))
        for done in decoder.step():
            finished_at[done.key] = step
        if decoder._cache is not None and decoder._cache.self_k[0] is not None:
            widths.append(decoder._cache.self_k[0].size(2))
    assert finished_at == {short: 2, late: 12, long: 30}
    assert max(widths) <= 30  # never wider than the oldest running reply
    assert decoder.running == 0 and decoder._cache is None


def test_cancel_frees_rows_and_num_return_sequences_takes_rows(
    model: Seq2SeqTransformer, sources: list[list[int]]
) -> None:
    decoder = ContinuousDecoder(model, max_rows=4, generator=torch.Generator().manual_seed(0))
    three = decoder.add(sources[0], DecodingConfig(strategy="sample", num_return_sequences=3))
    gone = decoder.add(sources[1], DecodingConfig(max_length=30, min_length=30))
    waiting = decoder.add(sources[2], DecodingConfig(max_length=4))
    decoder.step()
    assert decoder.running == 4 and decoder.waiting == 1  # the third request waits for rows
    decoder.cancel(gone)
    results = {done.key: done for done in decoder.run()}
    assert set(results) == {three, waiting}
    assert len(results[three].generation.tokens) == 3
    assert (
        results[waiting].generation.tokens[0]
        == alone(model, sources[2], DecodingConfig(max_length=4))[0]
    )


def test_beam_and_oversized_requests_are_refused(model: Seq2SeqTransformer) -> None:
    decoder = ContinuousDecoder(model, max_rows=2)
    with pytest.raises(ValueError, match="request-level"):
        decoder.add([5, 6], DecodingConfig(strategy="beam"))
    with pytest.raises(ValueError, match="max_rows"):
        decoder.add([5, 6], DecodingConfig(strategy="sample", num_return_sequences=3))
    with pytest.raises(ValueError, match="empty"):
        decoder.add([0, 0], DecodingConfig())


def test_a_released_row_is_reused_in_place_by_the_next_request(
    model: Seq2SeqTransformer, sources: list[list[int]]
) -> None:
    """Under load (a request waiting) a finished row's slot is written in place: the cache keeps
    its tensors and rows, and the newcomer, which must not see the slot's old columns, still gets
    generate's tokens; with nothing waiting the free slot is dropped."""
    decoder = ContinuousDecoder(model, max_rows=2)
    short = decoder.add(sources[2], DecodingConfig(max_length=3, min_length=3))  # 12 pieces
    long = decoder.add(sources[0], DecodingConfig(max_length=12, min_length=12))
    late_cfg = DecodingConfig(max_length=6, no_repeat_ngram_size=2)
    late = decoder.add(sources[3], late_cfg)  # waits for a row
    results = {}
    for _ in range(3):
        results.update({d.key: d for d in decoder.step()})
    assert set(results) == {short} and decoder.running == 1  # its slot is free, not yet dropped
    assert decoder._cache is not None
    storage = decoder._cache.cross_k[0].untyped_storage().data_ptr()
    results.update({d.key: d for d in decoder.step()})  # admits `late` into the free slot
    assert decoder.running == 2 and len(decoder._rows) == 2
    assert decoder._cache.cross_k[0].untyped_storage().data_ptr() == storage  # written in place
    results.update({d.key: d for d in decoder.run()})
    assert results[late].generation.tokens[0] == alone(model, sources[3], late_cfg)[0]
    long_cfg = DecodingConfig(max_length=12, min_length=12)
    assert results[long].generation.tokens[0] == alone(model, sources[0], long_cfg)[0]
    assert decoder.idle and decoder._cache is None


def test_sources_encoded_ahead_match_generate(
    model: Seq2SeqTransformer, sources: list[list[int]]
) -> None:
    """Sources encoded ahead on another batch (the service's encoder thread: other padding,
    other company) join the running batch beside sources encoded at admission and get the
    same tokens as generate; seeded samples with several rows per request too."""
    ahead = encode_sources(model, sources[0::2])  # one encoder call, padded to the longest
    assert [e.src for e in ahead] == sources[0::2]
    assert ahead[0].cross_k[0].shape[2] == len(sources[0])  # its own length, no padding
    decoder = ContinuousDecoder(model, max_rows=3)
    keys = {}
    results = {}
    for i, src in enumerate(sources):
        encoded = ahead[i // 2] if i % 2 == 0 else None
        keys[decoder.add(src, BLOCKED, encoded=encoded)] = i
        results.update({d.key: d for d in decoder.step()})  # staggered arrivals
    results.update({d.key: d for d in decoder.run()})
    for key, i in keys.items():
        assert results[key].generation.tokens[0] == alone(model, sources[i], BLOCKED)[0]

    sample = DecodingConfig(strategy="sample", num_return_sequences=3, max_length=12)
    decoder = ContinuousDecoder(model, max_rows=6)
    [first] = encode_sources(model, [sources[1]])
    key = decoder.add(sources[1], sample, generator=torch.Generator().manual_seed(3), encoded=first)
    other = decoder.add(sources[3], sample, generator=torch.Generator().manual_seed(4))
    results = {d.key: d for d in decoder.run()}
    for k, i, seed in ((key, 1, 3), (other, 3, 4)):
        want = alone(model, sources[i], sample, generator=torch.Generator().manual_seed(seed))
        assert results[k].generation.tokens == want

    with pytest.raises(ValueError, match="encoding"):
        decoder.add(sources[0], BLOCKED, encoded=first)

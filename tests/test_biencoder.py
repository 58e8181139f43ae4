"""Bi-encoder: shapes, pooling, shared weights, dot-product score, config round trip, warm start."""

from __future__ import annotations

import pytest
import torch

from models.biencoder import BiEncoder, BiEncoderConfig
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

TINY = BiEncoderConfig(
    vocab_size=50,
    d_model=16,
    n_heads=2,
    d_ff=32,
    n_layers=2,
    dropout=0.0,
    max_positions=32,
    embed_dim=8,
)


def _model(**overrides: object) -> BiEncoder:
    torch.manual_seed(0)
    cfg = BiEncoderConfig.from_dict({**TINY.to_dict(), **overrides})
    return BiEncoder(cfg).eval()


def test_config_round_trips_and_rejects_unknown_fields() -> None:
    assert BiEncoderConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown BiEncoderConfig fields"):
        BiEncoderConfig.from_dict({**TINY.to_dict(), "colour": "red"})
    with pytest.raises(AssertionError, match="pooling"):
        BiEncoderConfig(pooling="max")  # type: ignore[arg-type]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encode_shapes_and_padding_does_not_change_embeddings(pooling: str) -> None:
    model = _model(pooling=pooling)
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    padded = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]])
    with torch.no_grad():
        a, b = model.encode_contexts(ids), model.encode_contexts(padded)
        r = model.encode_responses(ids)
    assert a.shape == (2, TINY.embed_dim) and r.shape == (2, TINY.embed_dim)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, r)  # separate encoders by default


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_length_sorted_chunks_give_the_same_embeddings_in_the_callers_order(pooling: str) -> None:
    model = _model(pooling=pooling)
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(0, 12, (37,), generator=g)  # an empty row too, most likely
    lengths[5] = 0
    ids = torch.zeros(37, 12, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        ids[row, :n] = torch.randint(3, TINY.vocab_size, (n,), generator=g)
    encoder = model.context_encoder
    with torch.no_grad():
        whole = encoder(ids)
        for rows in (1, 4, 10, 36, 37, 100):
            torch.testing.assert_close(encoder(ids, chunk_rows=rows), whole, atol=1e-5, rtol=1e-5)


def test_all_pad_row_gives_finite_embedding() -> None:
    model = _model()
    with torch.no_grad():
        out = model.encode_responses(torch.tensor([[0, 0], [4, 5]]))
    assert torch.isfinite(out).all()


def test_shared_option_uses_one_encoder_for_both_sides() -> None:
    separate, shared = _model(), _model(shared=True)
    assert shared.response_encoder is None
    assert separate.num_parameters() == 2 * shared.num_parameters()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(shared.encode_contexts(ids), shared.encode_responses(ids))
    assert not any(k.startswith("response_encoder") for k in shared.state_dict())


def test_score_is_the_dot_product_of_embeddings() -> None:
    c = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    r = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.5, 0.5]])
    # row 0: 1*3+2*4=11, 1*1+2*0=1, 0.5+1=1.5; row 1: -4, 0, -0.5
    expected = torch.tensor([[11.0, 1.0, 1.5], [-4.0, 0.0, -0.5]])
    torch.testing.assert_close(BiEncoder.score(c, r), expected)


def test_forward_returns_both_embeddings_with_gradients() -> None:
    model = _model().train()
    ctx, resp = model(torch.tensor([[5, 6]]), torch.tensor([[7, 8, 9], [10, 0, 0]]))
    BiEncoder.score(ctx, resp).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_init_from_generator_copies_the_encoder_stack() -> None:
    gen = Seq2SeqTransformer(
        Seq2SeqConfig(
            vocab_size=50,
            d_model=16,
            n_heads=2,
            d_ff=32,
            n_encoder_layers=2,
            n_decoder_layers=1,
            max_positions=32,
        )
    )
    model = _model()
    copied = model.init_from_generator(gen.state_dict())
    assert "context_encoder.layers.1.ffn.fc2.weight" in copied
    assert "response_encoder.norm.weight" in copied
    assert not any(".proj." in name for name in copied)
    torch.testing.assert_close(model.context_encoder.embed.weight, gen.embed.weight)
    assert model.response_encoder is not None
    torch.testing.assert_close(
        model.response_encoder.layers[0].attn.qkv_proj.weight,  # type: ignore[union-attr]
        gen.encoder_layers[0].attn.qkv_proj.weight,  # type: ignore[union-attr]
    )
    with pytest.raises(ValueError, match="shape mismatch"):
        _model(d_ff=64).init_from_generator(gen.state_dict())


def test_init_embeddings_from_a_wider_generator_keeps_its_geometry() -> None:
    # A generator table of d=32 whose rows lie in a 16-dimensional subspace: PCA to d_model=16
    # keeps every pairwise distance up to one scale (the rotation is free), and nothing else moves.
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 16, generator=g))[0]  # (32, 16) orthonormal columns
    table = torch.randn(50, 16, generator=g) @ basis.T  # (50, 32), rank 16
    table[0] = 0.0
    model = _model()
    layers_before = model.context_encoder.layers[0].attn.qkv_proj.weight.clone()  # type: ignore[union-attr]
    names = model.init_embeddings_from_generator({"embed.weight": table})
    assert names == ["context_encoder.embed.weight", "response_encoder.embed.weight"]
    emb = model.context_encoder.embed.weight
    assert emb.shape == (50, 16) and bool((emb[0] == 0).all())
    assert emb[1:].std().item() == pytest.approx(16**-0.5, rel=1e-4)
    words = table[1:]
    ratio = torch.cdist(emb[1:], emb[1:]) / torch.cdist(words, words).clamp(min=1e-6)
    off_diagonal = ratio[~torch.eye(49, dtype=torch.bool)]
    torch.testing.assert_close(off_diagonal, off_diagonal.mean().expand_as(off_diagonal))
    torch.testing.assert_close(
        model.context_encoder.layers[0].attn.qkv_proj.weight,  # type: ignore[union-attr]
        layers_before,
    )
    with pytest.raises(ValueError, match="cannot start a bi-encoder"):
        model.init_embeddings_from_generator({"embed.weight": torch.zeros(50, 8)})

"""Bi-encoder for response retrieval (Humeau et al. 2019; the retrieval model of G2R, Kim et al. 2021).

Read bottom-up: ``BiEncoderConfig -> TextEncoder -> BiEncoder``. A context and a response are
encoded separately into ``embed_dim``-sized vectors and scored by their dot product (G2R section
2.2), so every response can be embedded once, offline, and searched with FAISS.

* Each encoder is a pre-LN Transformer encoder built from :class:`models.seq2seq.EncoderLayer` (the
  generator's own layer), over the generators' tokenizer and sinusoidal positions.
* Pooling (``BiEncoderConfig.pooling``):

  - ``"mean"`` (default): the average of the final-layer states of the non-pad tokens;
  - ``"cls"``: a BOS token (id 1) is prepended to every sequence and its final state is used,
    like BERT's ``[CLS]``; the caller never adds it.

  The pooled state goes through a bias-free linear projection to ``embed_dim``.
* The context and response encoders have separate weights by default (Humeau et al.); with
  ``shared=True`` one encoder serves both (half the parameters).
* Because the layers match the generator's encoder, :meth:`BiEncoder.init_from_generator` can
  warm-start both encoders from a trained generator of the same shape; from a wider one,
  :meth:`BiEncoder.init_embeddings_from_generator` starts the token embeddings from a PCA
  projection of the generator's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.seq2seq import (
    TokenInput,
    copy_generator_encoder,
    encoder_stack,
    init_weights,
)

# Rows per length-sorted chunk when a call embeds many responses at once (a G2R training batch:
# ~150 responses for 128 contexts). reports/retriever_step.md: 32 was the fastest of 32/64/128.
RESPONSE_CHUNK_ROWS = 32

Pooling = Literal["mean", "cls"]


@dataclass
class BiEncoderConfig:
    """Shape of the bi-encoder; stored in retriever bundles as ``model_config["biencoder"]``."""

    vocab_size: int = 8000  # set from the (generators') tokenizer
    d_model: int = 512  # hidden size of each encoder
    n_heads: int = 8  # attention heads; head_dim = d_model / n_heads
    d_ff: int = 2048  # feed-forward inner size
    n_layers: int = 6  # Transformer layers per encoder
    dropout: float = 0.1  # attention, FFN and residual dropout (as in the generator)
    max_positions: int = 256  # longest input (the cls token included) the position table covers
    embed_dim: int = 256  # size of the context/response embeddings (what the index stores)
    pooling: Pooling = "mean"  # "mean" over non-pad tokens or the state of a prepended "cls" token
    shared: bool = False  # one encoder for contexts and responses instead of two
    # layers of the context encoder; 0 = n_layers. Fewer make the one encoder a request runs
    # cheaper while the index (response embeddings) stays: a shallow context encoder distilled
    # from a trained one (training/methods/g2r/context_distill.py; KALE, Campos et al. 2023)
    context_layers: int = 0
    pad_id: int = 0
    cls_id: int = 1  # BOS doubles as the [CLS] token when pooling == "cls"

    def __post_init__(self) -> None:
        assert self.d_model % self.n_heads == 0, (
            f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
        )
        assert self.pooling in ("mean", "cls"), f"unknown pooling {self.pooling!r}"
        assert self.embed_dim > 0, f"embed_dim must be positive, got {self.embed_dim}"
        assert self.context_layers >= 0, f"context_layers must be >= 0, got {self.context_layers}"
        assert not (self.shared and self.context_layers not in (0, self.n_layers)), (
            "a shared encoder has one depth: context_layers must be 0 or n_layers"
        )

    @property
    def context_config(self) -> BiEncoderConfig:
        """The context encoder's shape: this one with ``n_layers = context_layers`` when set."""
        if self.context_layers in (0, self.n_layers):
            return self
        return replace(self, n_layers=self.context_layers, context_layers=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BiEncoderConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown BiEncoderConfig fields: {sorted(unknown)}")
        return cls(**data)


class TextEncoder(TokenInput):
    """Token ids (B, T) -> pooled, projected embeddings (B, embed_dim)."""

    def __init__(self, cfg: BiEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._init_token_input(
            cfg.vocab_size, cfg.d_model, cfg.pad_id, cfg.max_positions, cfg.dropout
        )
        self.layers = encoder_stack(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.embed_dim, bias=False)

    def forward(self, ids: Tensor, chunk_rows: int = 0) -> Tensor:
        """Embed every row; with ``chunk_rows`` > 0 and more rows than that, rows are sorted by
        length and encoded in chunks trimmed to their own longest row (the same embeddings, up to
        float rounding, for less padding: a G2R batch's responses are ~half padding otherwise)."""
        if chunk_rows <= 0 or ids.size(0) <= chunk_rows:
            return self._encode(ids)
        lengths = ids.ne(self.cfg.pad_id).sum(dim=1)
        order = torch.argsort(lengths, stable=True)
        parts = []
        for start in range(0, ids.size(0), chunk_rows):
            rows = order[start : start + chunk_rows]
            width = max(int(lengths[rows].max()), 1)
            parts.append(self._encode(ids[rows, :width]))
        out = torch.cat(parts)
        return out[torch.argsort(order)]  # back to the callers' row order

    def _encode(self, ids: Tensor) -> Tensor:
        cfg = self.cfg
        if cfg.pooling == "cls":
            cls = torch.full((ids.size(0), 1), cfg.cls_id, dtype=ids.dtype, device=ids.device)
            ids = torch.cat([cls, ids], dim=1)  # (B, 1 + T)
        t = ids.size(1)
        assert t <= cfg.max_positions, (
            f"sequence of {t} positions exceeds max_positions={cfg.max_positions}"
        )
        keep = ids.ne(cfg.pad_id)  # (B, T) True on real tokens
        # An all-pad row (an empty text) would attend to nothing (NaN); let it see position 0.
        keep[:, 0] |= ~keep.any(dim=1)
        mask = None if bool(keep.all()) else keep[:, None, None, :]  # (B, 1, 1, T)
        x = self.token_input(ids)
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)  # (B, T, d)
        if cfg.pooling == "cls":
            pooled = x[:, 0]
        else:
            weights = keep.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, d)
        return self.proj(pooled)  # (B, embed_dim)


class BiEncoder(nn.Module):
    """Context and response encoders whose embeddings are scored by dot product (G2R sec. 2.2)."""

    def __init__(self, cfg: BiEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.context_encoder = TextEncoder(cfg.context_config)
        # Shared weights: no second module, so the state dict holds each tensor once.
        self.response_encoder: TextEncoder | None = None if cfg.shared else TextEncoder(cfg)
        # The generator's initialisation (models/seq2seq.py), so warm starts and fresh runs match.
        self.apply(init_weights)

    def _response_encoder(self) -> TextEncoder:
        return self.context_encoder if self.response_encoder is None else self.response_encoder

    def encode_contexts(self, ids: Tensor) -> Tensor:
        """Right-padded context ids (B, S) -> embeddings (B, embed_dim)."""
        return self.context_encoder(ids)

    def encode_responses(self, ids: Tensor) -> Tensor:
        """Right-padded response ids (M, T), no BOS/EOS -> embeddings (M, embed_dim); encoded in
        length-sorted chunks of ``RESPONSE_CHUNK_ROWS`` (training batches hold hundreds)."""
        return self._response_encoder()(ids, chunk_rows=RESPONSE_CHUNK_ROWS)

    @staticmethod
    def score(contexts: Tensor, responses: Tensor) -> Tensor:
        """Relevance R(c, r) = <e_c, e_r> for every pair: (B, E) x (M, E) -> (B, M)."""
        return contexts @ responses.transpose(0, 1)

    def forward(self, context_ids: Tensor, response_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Both embeddings in one call (DDP only synchronises gradients of ``forward``)."""
        return self.encode_contexts(context_ids), self.encode_responses(response_ids)

    @torch.no_grad()
    def init_from_generator(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Copy a same-shaped generator's embeddings and encoder stack into both encoders.

        ``state_dict`` is a :class:`~models.seq2seq.Seq2SeqTransformer`'s (``embed.weight``,
        ``encoder_layers.<i>.*``, ``encoder_norm.*``); the first ``n_layers`` layers are used and
        the projections stay random. Returns the parameter names that were copied.
        """
        copied: list[str] = []
        encoders = [self.context_encoder]
        if self.response_encoder is not None:
            encoders.append(self.response_encoder)
        for prefix, encoder in zip(("context_encoder", "response_encoder"), encoders, strict=False):
            copied += copy_generator_encoder(
                encoder, state_dict, skip=("proj.",), into="bi-encoder", prefix=f"{prefix}."
            )
        return copied

    @torch.no_grad()
    def init_embeddings_from_generator(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Start both encoders' token embeddings from a generator's ``embed.weight`` (V, D) with
        D >= d_model: the rows projected on their top ``d_model`` principal directions (PCA by
        SVD of the centred table), so that words the generator placed together start together,
        then scaled to the fresh initialisation's std (d_model^-1/2; the padding row stays 0).
        Layers stay random. Returns the parameter names set."""
        table = state_dict.get("embed.weight")
        d = self.cfg.d_model
        if table is None or table.shape[0] != self.cfg.vocab_size or table.shape[1] < d:
            shape = None if table is None else tuple(table.shape)
            raise ValueError(
                f"generator embeddings {shape} cannot start a bi-encoder of vocabulary "
                f"{self.cfg.vocab_size} and d_model {d}"
            )
        x = table.float()
        words = torch.ones(x.shape[0], dtype=torch.bool)
        words[self.cfg.pad_id] = False  # the padding row is not a word
        x = x - x[words].mean(dim=0)
        _, _, v = torch.linalg.svd(x[words], full_matrices=False)  # rows of v: principal directions
        projected = x @ v[:d].T  # (V, d)
        projected *= d**-0.5 / projected[words].std()
        projected[self.cfg.pad_id] = 0.0
        names = []
        for prefix, encoder in (
            ("context_encoder", self.context_encoder),
            ("response_encoder", self.response_encoder),
        ):
            if encoder is not None:
                encoder.embed.weight.copy_(projected)
                names.append(f"{prefix}.embed.weight")
        return names

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

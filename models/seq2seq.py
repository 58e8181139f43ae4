"""Transformer encoder-decoder for response generation (Vaswani et al. 2017).

Read bottom-up: ``MultiHeadAttention -> FeedForward -> EncoderLayer / DecoderLayer -> Seq2SeqConfig
-> Seq2SeqTransformer``. Two things beyond a textbook model:

* the decoder can return every layer's output hidden states and its pre-softmax self-attention
  logits ``QK^T / sqrt(d_k)`` (negative distillation, Li et al. 2022 eqs. 9-12, needs both);
* incremental decoding with a KV cache (:class:`DecoderCache`): cross-attention keys/values are
  computed once per source, self-attention keys/values grow by one position per step.

Layers are pre-LayerNorm (a final LayerNorm closes each stack). The papers used post-LN; pre-LN
trains stably with short warm-ups, which the small CPU presets need. Embeddings are shared by the
encoder, the decoder and the output projection (a common tie for dialogue models of this size).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# The attention kernels a training step on the CPU may use (reports/cpu_attention_small.md). With
# dropout 0 PyTorch picks its fused (flash) CPU kernel, whose backward on this machine's CPU is
# 2.2-4.5x slower in bf16 than matmul-softmax-matmul at the small presets' shapes; calls that
# need no gradient (serving, evaluation) keep PyTorch's choice, the fused kernel being faster at
# batch 1. Empty: PyTorch chooses for training too.
CPU_TRAINING_ATTENTION: tuple[SDPBackend, ...] = (SDPBackend.MATH,)


@contextmanager
def cpu_training_attention(kernels: tuple[SDPBackend, ...]) -> Iterator[None]:
    """The block runs with ``kernels`` as :data:`CPU_TRAINING_ATTENTION` (``()``: PyTorch's own
    choice), restored afterwards; for benchmarks that compare the kernels."""
    global CPU_TRAINING_ATTENTION
    before = CPU_TRAINING_ATTENTION
    CPU_TRAINING_ATTENTION = kernels
    try:
        yield
    finally:
        CPU_TRAINING_ATTENTION = before


@dataclass
class Seq2SeqConfig:
    """Shape of the generator; stored in bundles as ``model_config``."""

    vocab_size: int = 8000  # set from the trained tokenizer
    d_model: int = 512  # hidden size (ND paper: 512)
    n_heads: int = 8  # attention heads; head_dim = d_model / n_heads (paper: 8 x 64)
    d_ff: int = 2048  # feed-forward inner size (paper: 2048)
    n_encoder_layers: int = 6  # paper: 6
    n_decoder_layers: int = 6  # paper: 6
    dropout: float = 0.1  # on attention probs, FFN activations and residual branches (paper: 0.1)
    max_positions: int = 512  # longest source or target sequence the position table covers
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        assert self.d_model % self.n_heads == 0, (
            f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
        )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seq2SeqConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown Seq2SeqConfig fields: {sorted(unknown)}")
        return cls(**data)


def sinusoidal_positions(n_positions: int, d_model: int) -> Tensor:
    """Fixed sine/cosine position table of Vaswani et al. (2017), section 3.5."""
    position = torch.arange(n_positions, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)
    return table


class TokenInput(nn.Module):
    """The input stem every Transformer in models/ shares: a token embedding (zero padding row),
    scaled by sqrt(d) and added to the fixed sinusoidal positions, then dropout (Vaswani et al.
    2017, section 3.4). A base class rather than a submodule, so that the parameter names
    (``embed.weight``) and therefore every saved bundle stay as they are."""

    embed: nn.Embedding
    positions: Tensor
    embed_dropout: nn.Dropout

    def _init_token_input(
        self, vocab_size: int, d_model: int, pad_id: int, max_positions: int, dropout: float
    ) -> None:
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.register_buffer(
            "positions", sinusoidal_positions(max_positions, d_model), persistent=False
        )
        self.embed_dropout = nn.Dropout(dropout)

    def token_input(
        self,
        ids: Tensor,
        offset: int = 0,
        token_embeds: Tensor | None = None,
        extra: Tensor | None = None,
    ) -> Tensor:
        """dropout(embed(ids) * sqrt(d) + positions[offset : offset + T] (+ ``extra``)), (B, T, d).

        ``token_embeds`` (B, T, d) replaces the lookup ``embed(ids)`` so callers can differentiate
        with respect to the input (gibbs-enum); ``extra`` is added before the dropout (segments)."""
        t = ids.size(1)
        n_positions = self.positions.size(0)
        assert offset + t <= n_positions, (
            f"sequence of {offset + t} positions exceeds max_positions={n_positions}"
        )
        tokens = self.embed(ids) if token_embeds is None else token_embeds
        x = tokens * math.sqrt(self.embed.embedding_dim) + self.positions[offset : offset + t]
        return self.embed_dropout(x if extra is None else x + extra)


@dataclass
class DecoderCache:
    """Per-layer key/value tensors for incremental decoding, each ``(B, heads, T, head_dim)``."""

    cross_k: list[Tensor]
    cross_v: list[Tensor]
    src_mask: Tensor | None  # (B, 1, 1, S) True = attend; None when the batch has no padding
    self_k: list[Tensor | None] = field(default_factory=list)
    self_v: list[Tensor | None] = field(default_factory=list)
    length: int = 0  # target positions already decoded

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search reordering / expansion), in place."""
        self.cross_k = [k.index_select(0, index) for k in self.cross_k]
        self.cross_v = [v.index_select(0, index) for v in self.cross_v]
        self.self_k = [None if k is None else k.index_select(0, index) for k in self.self_k]
        self.self_v = [None if v is None else v.index_select(0, index) for v in self.self_v]
        if self.src_mask is not None:
            self.src_mask = self.src_mask.index_select(0, index)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``heads`` subspaces (Vaswani et al. eq. 1)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, *, cross: bool) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.cross = cross
        if cross:  # queries from the decoder, keys/values from the encoder memory
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, heads, T, head_dim)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the encoder memory, computed once per source in decoding."""
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(
        self,
        x: Tensor,
        *,
        memory_kv: tuple[Tensor, Tensor] | None = None,
        mask: Tensor | None = None,
        causal: bool = False,
        past_kv: tuple[Tensor, Tensor] | None = None,
        return_logits: bool = False,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None]:
        """Attend; returns (output (B, T, d), the (k, v) used, pre-softmax logits or None).

        ``mask`` is boolean, True where attention is allowed, broadcastable to (B, heads, T, S).
        ``past_kv`` holds earlier self-attention keys/values when decoding incrementally.
        """
        b, t, d = x.shape
        if self.cross:
            assert memory_kv is not None, "cross-attention needs the encoder memory"
            q = self._split(self.q_proj(x))
            k, v = memory_kv
        else:
            q, k, v = (self._split(y) for y in self.qkv_proj(x).chunk(3, dim=-1))
            if past_kv is not None:
                k = torch.cat([past_kv[0], k], dim=2)  # (B, heads, T_past + T, head_dim)
                v = torch.cat([past_kv[1], v], dim=2)
        dropout_p = self.dropout if self.training else 0.0
        logits: Tensor | None = None
        if return_logits:
            # Explicit path: ND's attention loss (eq. 10-12) needs the pre-softmax logits.
            logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, heads, T, S)
            allowed = mask
            if causal:
                s = k.size(2)
                tri = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(s - t)
                allowed = tri if allowed is None else allowed & tri
            scores = logits if allowed is None else logits.masked_fill(~allowed, float("-inf"))
            probs = F.dropout(scores.softmax(dim=-1), p=dropout_p, training=self.training)
            out = probs @ v
        else:
            # Fused kernel. A single new query attends to every cached key, so needs no mask.
            s = k.size(2)
            attn_mask, is_causal = mask, False
            if causal and t > 1:
                if mask is None and s == t:
                    is_causal = True
                else:
                    tri = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(s - t)
                    attn_mask = tri if mask is None else mask & tri
            if CPU_TRAINING_ATTENTION and q.requires_grad and q.device.type == "cpu":
                with sdpa_kernel(list(CPU_TRAINING_ATTENTION)):
                    out = F.scaled_dot_product_attention(
                        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
                    )
            else:
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
                )
        out = out.transpose(1, 2).reshape(b, t, d)  # (B, T, d)
        return self.out_proj(out), (k, v), logits


class FeedForward(nn.Module):
    """Position-wise FFN: Linear -> ReLU -> dropout -> Linear."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class EncoderLayer(nn.Module):
    """Pre-LN self-attention + FFN block."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout, cross=False)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        h, _, _ = self.attn(self.norm1(x), mask=mask)
        x = x + self.dropout(h)
        return x + self.dropout(self.ffn(self.norm2(x)))


def encoder_stack(
    n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float
) -> nn.ModuleList:
    """``n_layers`` :class:`EncoderLayer` blocks of this shape: the bi-encoder and the safety
    cross-encoder are built from the generator's own layer, so a trained generator's encoder can
    warm-start them."""
    cfg = Seq2SeqConfig(d_model=d_model, n_heads=n_heads, d_ff=d_ff, dropout=dropout)
    return nn.ModuleList(EncoderLayer(cfg) for _ in range(n_layers))


@torch.no_grad()
def copy_generator_encoder(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    skip: tuple[str, ...],
    into: str,
    prefix: str = "",
) -> list[str]:
    """Warm-start an encoder built like the generator's (parameters ``embed.*``, ``layers.<i>.*``,
    ``norm.*``) from a same-shaped :class:`Seq2SeqTransformer` state dict: its first layers are
    used; parameters starting with ``skip`` stay as they are. Returns the names copied (with
    ``prefix``); ``into`` names the receiving model in errors."""
    copied = []
    for name, param in module.named_parameters():
        if name.startswith(skip):
            continue
        label = f"{prefix}{name}"
        # layers.<i>.* -> encoder_layers.<i>.*, norm.* -> encoder_norm.*, embed.* as is
        source = f"encoder_{name}" if name.startswith(("layers.", "norm.")) else name
        if source not in state_dict:
            raise ValueError(f"generator state has no {source!r} for {label}")
        value = state_dict[source]
        if value.shape != param.shape:
            raise ValueError(
                f"shape mismatch for {label}: generator {tuple(value.shape)}, "
                f"{into} {tuple(param.shape)}"
            )
        param.copy_(value)
        copied.append(label)
    return copied


class DecoderLayer(nn.Module):
    """Pre-LN causal self-attention + cross-attention + FFN block."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout, cross=False)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout, cross=True)
        self.norm3 = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        memory_kv: tuple[Tensor, Tensor],
        src_mask: Tensor | None,
        *,
        past_kv: tuple[Tensor, Tensor] | None = None,
        return_logits: bool = False,
        self_mask: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None]:
        """``self_mask`` (B, 1, 1, T_past + T), True = attend, hides self-attention keys on top of
        the causal rule: continuous batching (models/continuous.py) shares the cache's columns
        between rows that started at different steps."""
        h, self_kv, logits = self.self_attn(
            self.norm1(x),
            causal=True,
            past_kv=past_kv,
            return_logits=return_logits,
            mask=self_mask,
        )
        x = x + self.dropout(h)
        h, _, _ = self.cross_attn(self.norm2(x), memory_kv=memory_kv, mask=src_mask)
        x = x + self.dropout(h)
        x = x + self.dropout(self.ffn(self.norm3(x)))
        return x, self_kv, logits


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform linear layers, N(0, d^-1/2) embeddings with a zero padding row; shared by
    every Transformer in models/ so warm starts and fresh runs start alike."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=module.embedding_dim**-0.5)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


@dataclass
class Seq2SeqOutput:
    """Teacher-forced decoder outputs.

    ``hidden_states[l]``: output of decoder layer l, (B, T, d).
    ``self_attn_logits[l]``: pre-softmax QK^T/sqrt(d_k) of decoder layer l, (B, heads, T, T),
    not masked (callers mask the future positions and padding themselves).
    """

    logits: Tensor  # (B, T, vocab)
    hidden_states: list[Tensor] = field(default_factory=list)
    self_attn_logits: list[Tensor] = field(default_factory=list)


class Seq2SeqTransformer(TokenInput):
    """Encoder-decoder Transformer with tied embeddings and a KV-cached incremental decoder."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._init_token_input(
            cfg.vocab_size, cfg.d_model, cfg.pad_id, cfg.max_positions, cfg.dropout
        )
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.encoder_norm = nn.LayerNorm(cfg.d_model)
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.decoder_norm = nn.LayerNorm(cfg.d_model)
        self.apply(init_weights)

    def _decoder(self) -> list[DecoderLayer]:
        return [layer for layer in self.decoder_layers if isinstance(layer, DecoderLayer)]

    def _embed(self, ids: Tensor, offset: int = 0, token_embeds: Tensor | None = None) -> Tensor:
        return self.token_input(ids, offset, token_embeds)

    def _padding_mask(self, ids: Tensor) -> Tensor | None:
        """(B, 1, 1, S) True where a key is real; None when nothing is padded (faster kernels)."""
        keep = ids.ne(self.cfg.pad_id)
        if bool(keep.all()):
            return None
        return keep[:, None, None, :]

    def encode(
        self, src: Tensor, *, src_embeds: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Encode source ids (B, S) -> memory (B, S, d) and its key mask.

        ``src_embeds`` (B, S, d), when given, stands in for the embedding lookup of ``src``
        (``src`` still gives the padding mask): the gradient of a loss with respect to a one-hot
        input is then ``grad(src_embeds) @ embed.weight.T``.
        """
        mask = self._padding_mask(src)
        x = self._embed(src, token_embeds=src_embeds)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    def output_logits(self, hidden: Tensor) -> Tensor:
        """Project decoder states onto the (tied) vocabulary."""
        return F.linear(hidden, self.embed.weight)

    def decode(
        self,
        tgt_in: Tensor,
        memory: Tensor,
        src_mask: Tensor | None,
        *,
        return_internals: bool = False,
        tgt_embeds: Tensor | None = None,
    ) -> Seq2SeqOutput:
        """Teacher-forced decoding of ``tgt_in`` (B, T) -> logits (B, T, vocab).

        ``tgt_embeds`` stands in for the embedding lookup of ``tgt_in``, as in :meth:`encode`.
        """
        x = self._embed(tgt_in, token_embeds=tgt_embeds)
        out = Seq2SeqOutput(logits=x)  # logits filled below
        for layer in self._decoder():
            memory_kv = layer.cross_attn.project_memory(memory)
            x, _, logits = layer(x, memory_kv, src_mask, return_logits=return_internals)
            if return_internals:
                assert logits is not None
                out.hidden_states.append(x)
                out.self_attn_logits.append(logits)
        out.logits = self.output_logits(self.decoder_norm(x))
        return out

    def forward(
        self, src: Tensor, tgt_in: Tensor, *, return_internals: bool = False
    ) -> Seq2SeqOutput:
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask, return_internals=return_internals)

    # --- incremental decoding -------------------------------------------------------------

    def start_cache(self, memory: Tensor, src_mask: Tensor | None) -> DecoderCache:
        """Project the encoder memory once for every decoder layer."""
        cross = [layer.cross_attn.project_memory(memory) for layer in self._decoder()]
        n = len(self.decoder_layers)
        return DecoderCache(
            cross_k=[k for k, _ in cross],
            cross_v=[v for _, v in cross],
            src_mask=src_mask,
            self_k=[None] * n,
            self_v=[None] * n,
        )

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Feed the newest target tokens (B, t) given the cache; return last-position logits (B, V)."""
        x = self._embed(tokens, offset=cache.length)
        for i, layer in enumerate(self.decoder_layers):
            k_past, v_past = cache.self_k[i], cache.self_v[i]
            past = None if k_past is None or v_past is None else (k_past, v_past)
            x, (k, v), _ = layer(
                x, (cache.cross_k[i], cache.cross_v[i]), cache.src_mask, past_kv=past
            )
            cache.self_k[i], cache.self_v[i] = k, v
        cache.length += tokens.size(1)
        return self.output_logits(self.decoder_norm(x[:, -1]))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

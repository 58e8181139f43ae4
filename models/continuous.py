"""Continuous (iteration-level) batching for greedy and sampled decoding.

:func:`models.decoding.generate` decodes a fixed batch until its longest reply ends: a request
that arrives meanwhile waits for the whole batch, and a finished row keeps being computed. A
:class:`ContinuousDecoder` owns a *running batch* instead and works one decoder step at a time
(:meth:`ContinuousDecoder.step`):

1. **admit** at the step boundary: the sources of waiting requests are encoded (one encoder call
   for all of them) and their cross-attention keys/values become new rows of the batch. A source
   may come encoded already (:func:`encode_sources`, ``add(..., encoded=...)``): the service
   encodes waiting requests on a second thread while this one steps (service/continuous_batcher.py),
   so the admission only splices the rows in;
2. **step**: one incremental decoder call for every running row, each row at its own position;
3. **release**: rows that produced EOS or reached their ``max_length`` leave the batch at once
   and their replies are returned by that very step. Their KV-cache rows become *free slots*:
   the next admission writes a waiting request's cross-attention keys/values into a free slot in
   place (and hides the slot's old self-attention columns from it), so under steady load a
   release followed by an admission copies only the new rows, not the whole cache. Slots still
   free after an admission (nothing waiting) are dropped, so a step never decodes a free slot:
   only the state between a release and the next admission has them.

KV-cache layout (:class:`models.seq2seq.DecoderCache`, ``(rows, heads, columns, head_dim)``):

* cross-attention keys/values are padded to the longest running source, with ``src_mask``
  hiding each row's padding (trimmed again when the longest source leaves);
* self-attention keys/values grow by one *column* per step for all rows, as in ``generate``;
  a row admitted at step ``s`` owns the columns from ``s`` on and a per-row mask hides the
  older ones. Attention does not care where a key sits (positions are added to the embeddings,
  which here use each row's own position), so this is exact; columns no running row owns are
  cut off, so the cache is never wider than the oldest running row's reply.

Equivalence with ``generate``: every per-row rule is the same code (``_processed_log_probs``,
``filter_top_k_top_p``), so greedy rows give the same tokens as ``generate`` on the same source
and config, whatever else runs beside them (tests/test_continuous.py; only float rounding from
other padding differs, as between two batch compositions of ``generate`` itself). Sampling draws
from the same distribution; a request given its own ``torch.Generator`` draws its tokens with
it alone, one ``multinomial`` per step over its row, which is exactly what ``generate`` does for
that source alone with a generator in the same state, so seeded requests reproduce
``generate(model, src[i:i+1], cfg, generator=g)`` token for token (up to the same rounding).
Rows without their own generator share the decoder's (or torch's global) RNG: same
distribution, but draws depend on which rows run together, as they do in a ``generate`` batch.

Beam search stays request-level (``generate``): its K hypotheses of one source are reordered
together at every step and it stops on a rule over all of them (the best open beam cannot beat
the K-th finished one), so its unit of work is the whole beam, never one row; and its replies
all end together. Interleaving beams with greedy rows would buy nothing but bookkeeping.

The decoder is not thread-safe: one thread calls :meth:`add` / :meth:`step` (the service's
backend worker thread); :meth:`cancel` frees a request's rows at the next boundary.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.decoding import (
    ContextFreePrior,
    DecodingConfig,
    Generation,
    _strip,
    anti_lm_scores,
    banned_ngram_tokens,
    filter_top_k_top_p,
)
from models.seq2seq import DecoderCache, DecoderLayer, Seq2SeqTransformer

__all__ = ["ContinuousDecoder", "Encoded", "Finished", "decode_continuously", "encode_sources"]


@dataclass
class Finished:
    """A request that left the batch: ``num_return_sequences`` replies, as ``generate`` gives."""

    key: int
    generation: Generation
    steps: int  # decoder steps the request was in the batch for


@dataclass
class Encoded:
    """One source encoded ahead of its admission (:func:`encode_sources`): what the decoder's
    cache needs of it, its cross-attention keys and values per decoder layer, each
    ``(1, heads, len(src), head_dim)``, unpadded."""

    src: list[int]
    cross_k: list[Tensor]
    cross_v: list[Tensor]


def _padded(sources: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> Tensor:
    """Token id lists as one right-padded (B, S) batch on ``device``."""
    src = torch.full((len(sources), max(len(s) for s in sources)), pad_id, dtype=torch.long)
    for i, ids in enumerate(sources):
        src[i, : len(ids)] = torch.tensor(ids)
    return src.to(device)


@torch.inference_mode()
def encode_sources(model: Seq2SeqTransformer, sources: Sequence[Sequence[int]]) -> list[Encoded]:
    """Encode ``sources`` (token ids, no padding) in one encoder call and project each decoder
    layer's cross-attention keys/values (``Seq2SeqTransformer.start_cache``); one
    :class:`Encoded` per source, its padding cut off. Reads the model only, so it may run on
    another thread than the decoder's steps (the weights must not change meanwhile)."""
    src = _padded(sources, model.cfg.pad_id, next(model.parameters()).device)
    cache = model.start_cache(*model.encode(src))
    return [
        Encoded(
            list(ids),
            [k[i : i + 1, :, : len(ids)] for k in cache.cross_k],
            [v[i : i + 1, :, : len(ids)] for v in cache.cross_v],
        )
        for i, ids in enumerate(sources)
    ]


@dataclass
class _Pending:
    key: int
    src: list[int]
    cfg: DecodingConfig
    generator: torch.Generator | None
    encoded: Encoded | None = None


@dataclass
class _Row:
    key: int
    cfg: DecodingConfig
    generator: torch.Generator | None
    src_len: int
    start_col: int  # first self-attention cache column this row owns
    tokens: list[int] = field(default_factory=list)  # generated so far (EOS included when out)
    score: float = 0.0
    done: bool = False
    # a released slot (key -1): reused or dropped by the next admission, never decoded
    free: bool = False

    @property
    def position(self) -> int:
        """Position of the token fed next (BOS is 0)."""
        return len(self.tokens)


class ContinuousDecoder:
    """A running batch of greedy / sampled decodes that requests join and leave at step boundaries.

    ``max_rows`` bounds the running rows (a request takes ``num_return_sequences`` rows); waiting
    requests are admitted in arrival order as rows free up. ``generator`` is the RNG of sampled
    rows that bring none of their own; ``prior`` serves rows decoded with ``anti_lm``.
    """

    def __init__(
        self,
        model: Seq2SeqTransformer,
        *,
        max_rows: int = 64,
        generator: torch.Generator | None = None,
        prior: ContextFreePrior | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.model = model
        self.max_rows = max_rows
        self.generator = generator
        self.prior = prior
        self.device = next(model.parameters()).device
        self._keys = itertools.count()
        self._waiting: deque[_Pending] = deque()
        self._rows: list[_Row] = []
        self._cache: DecoderCache | None = None
        self._src_mask: Tensor | None = None  # (rows, S) True = real source token
        self._self_mask: Tensor | None = None  # (rows, columns) True = the row's own column
        self._cancelled: set[int] = set()
        self.steps = 0  # decoder steps run so far (admissions included)

    # --- state ---------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Rows in the running batch (free slots not counted)."""
        return sum(not row.free for row in self._rows)

    @property
    def waiting(self) -> int:
        """Requests added but not admitted yet."""
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        return not self.running and not self._waiting

    def running_keys(self) -> set[int]:
        return {row.key for row in self._rows if not row.free}

    # --- requests ------------------------------------------------------------------------------

    def add(
        self,
        src: Sequence[int] | Tensor,
        cfg: DecodingConfig,
        *,
        generator: torch.Generator | None = None,
        encoded: Encoded | None = None,
    ) -> int:
        """Queue one source (token ids; padding is dropped) for the next step boundary; returns
        the request's key, which its :class:`Finished` carries. ``encoded``: the source encoded
        ahead by :func:`encode_sources` with this decoder's model (the admission then skips the
        encoder)."""
        if cfg.strategy == "beam":
            raise ValueError("beam search is request-level: use models.decoding.generate")
        if cfg.anti_lm > 0 and self.prior is None:
            raise ValueError("anti_lm decoding needs the decoder's ContextFreePrior")
        if cfg.num_return_sequences > self.max_rows:
            raise ValueError(
                f"num_return_sequences={cfg.num_return_sequences} exceeds max_rows={self.max_rows}"
            )
        ids = src.tolist() if isinstance(src, Tensor) else list(src)
        pad = self.model.cfg.pad_id
        ids = [int(t) for t in ids if t != pad]
        if not ids:
            raise ValueError("an empty source")
        if encoded is not None and encoded.src != ids:
            raise ValueError("encoded is not this source's encoding")
        if len(ids) > self.model.cfg.max_positions or cfg.max_length > self.model.cfg.max_positions:
            raise ValueError("source or max_length beyond the model's max_positions")
        key = next(self._keys)
        self._waiting.append(_Pending(key, ids, cfg, generator, encoded))
        return key

    def cancel(self, key: int) -> None:
        """Stop decoding request ``key`` (its client left): it is dropped at the next boundary
        without a result."""
        self._cancelled.add(key)

    # --- the loop ------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Finished]:
        """Admit what fits, run one decoder step for every running row, release what ended."""
        self._drop_cancelled()
        self._admit()
        if not self.running:
            return []
        assert self._cache is not None and self._self_mask is not None
        mc = self.model.cfg
        rows = self._rows
        last = [row.tokens[-1] if row.tokens else mc.bos_id for row in rows]
        tokens = torch.tensor(last, dtype=torch.long, device=self.device)[:, None]
        positions = torch.tensor([row.position for row in rows], device=self.device)
        logits = self._decode_step(tokens, positions)
        self.steps += 1
        finished_rows = self._choose(logits)
        return self._release(finished_rows)

    def run(self) -> Iterator[Finished]:
        """Step until nothing runs or waits, yielding each request as it ends."""
        while not self.idle:
            yield from self.step()

    # --- internals -----------------------------------------------------------------------------

    def _decode_step(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """``Seq2SeqTransformer.decode_step`` with a position per row and the row masks."""
        model, cache = self.model, self._cache
        assert cache is not None and self._self_mask is not None
        x = model.embed(tokens) * math.sqrt(model.cfg.d_model) + model.positions[positions][:, None]
        x = model.embed_dropout(x)
        ones = torch.ones(len(self._rows), 1, dtype=torch.bool, device=self.device)
        self._self_mask = torch.cat([self._self_mask, ones], dim=1)
        # no mask while every row owns every column (all started together): faster kernels
        own_all = all(row.start_col == 0 for row in self._rows)
        self_mask = None if own_all else self._self_mask[:, None, None, :]
        for i, layer in enumerate(model.decoder_layers):
            assert isinstance(layer, DecoderLayer)
            k_past, v_past = cache.self_k[i], cache.self_v[i]
            past = None if k_past is None or v_past is None else (k_past, v_past)
            x, (k, v), _ = layer(
                x,
                (cache.cross_k[i], cache.cross_v[i]),
                cache.src_mask,
                past_kv=past,
                self_mask=self_mask,
            )
            cache.self_k[i], cache.self_v[i] = k, v
        cache.length += 1
        return model.output_logits(model.decoder_norm(x[:, -1]))

    def _choose(self, logits: Tensor) -> list[int]:
        """Pick each row's next token by its own config; the indices of rows that ended."""
        mc = self.model.cfg
        rows = self._rows
        chosen = [0] * len(rows)
        # rows that share the per-step rules are processed together, as one generate batch
        groups: dict[tuple[bool, str, float, int, float], list[int]] = {}
        for r, row in enumerate(rows):
            c = row.cfg
            key = (row.position < c.min_length, c.strategy, c.temperature, c.top_k, c.top_p)
            groups.setdefault(key, []).append(r)
        for (no_eos, strategy, temperature, top_k, top_p), members in groups.items():
            index = None
            if len(members) < len(rows):
                index = torch.tensor(members, device=self.device)
            sub = logits if index is None else logits.index_select(0, index)
            # the rules of models.decoding._processed_log_probs, each row with its own history
            lp = sub.float().log_softmax(dim=-1)
            if no_eos:
                lp[:, mc.eos_id] = float("-inf")
            for j, r in enumerate(members):
                n = rows[r].cfg.no_repeat_ngram_size
                if n:
                    [banned] = banned_ngram_tokens([rows[r].tokens], n)
                    if banned:
                        lp[j, banned] = float("-inf")
                if rows[r].cfg.block_adjacent_repeats and rows[r].tokens:
                    lp[j, rows[r].tokens[-1]] = float("-inf")
            choice = anti_lm_scores(
                lp,
                [rows[r].tokens for r in members],
                [rows[r].cfg for r in members],
                self.prior,
            )
            if strategy == "greedy":
                picks = choice.argmax(dim=-1)
            else:
                probs = filter_top_k_top_p(choice / temperature, top_k, top_p).softmax(dim=-1)
                picks = torch.empty(len(members), dtype=torch.long, device=self.device)
                # one multinomial per RNG: rows of a seeded request draw from their own
                by_rng: dict[int, tuple[torch.Generator | None, list[int]]] = {}
                for j, r in enumerate(members):
                    g = rows[r].generator
                    by_rng.setdefault(id(g), (g, []))[1].append(j)
                for g, js in by_rng.values():
                    if g is None:
                        g = self.generator
                    sel = torch.tensor(js, device=self.device)
                    drawn = torch.multinomial(probs.index_select(0, sel), 1, generator=g)
                    picks[sel] = drawn.squeeze(1)
            scores = lp.gather(1, picks[:, None]).squeeze(1).tolist()
            for j, (r, tok) in enumerate(zip(members, picks.tolist(), strict=True)):
                chosen[r] = tok
                rows[r].score += scores[j]
        ended = []
        for r, row in enumerate(rows):
            row.tokens.append(chosen[r])
            if chosen[r] == mc.eos_id or len(row.tokens) >= row.cfg.max_length:
                row.done = True
                ended.append(r)
        return ended

    def _release(self, ended: list[int]) -> list[Finished]:
        """Drop rows that ended; a request is finished when all its rows have."""
        if not ended:
            return []
        mc = self.model.cfg
        finished_keys = []
        for r in ended:
            key = self._rows[r].key
            if all(row.done for row in self._rows if row.key == key):
                finished_keys.append(key)
        out = []
        for key in dict.fromkeys(finished_keys):
            mine = [row for row in self._rows if row.key == key]
            out.append(
                Finished(
                    key,
                    Generation(
                        tokens=[_strip(row.tokens, mc.eos_id, mc.pad_id) for row in mine],
                        scores=[row.score for row in mine],
                    ),
                    steps=max(len(row.tokens) for row in mine),
                )
            )
        gone = set(finished_keys)
        for row in self._rows:
            if row.key in gone:
                # the slot stays until the next admission reuses or drops it
                row.free, row.key = True, -1
        if self.running == 0:
            self._keep([])
        else:
            self._trim_columns()
        return out

    def _drop_cancelled(self) -> None:
        if not self._cancelled:
            return
        cancelled, self._cancelled = self._cancelled, set()
        self._waiting = deque(p for p in self._waiting if p.key not in cancelled)
        if any(row.key in cancelled for row in self._rows if not row.free):
            self._keep(
                [r for r, row in enumerate(self._rows) if row.key not in cancelled and not row.free]
            )

    def _keep(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (in order): cache rows, masks; trim unused columns."""
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[r] for r in keep]
        if not self._rows:
            self._cache = self._src_mask = self._self_mask = None
            return
        assert self._cache is not None and self._self_mask is not None
        assert self._src_mask is not None
        index = torch.tensor(keep, device=self.device)
        cache = self._cache
        src_len = max(row.src_len for row in self._rows)
        cache.cross_k = [k.index_select(0, index)[:, :, :src_len] for k in cache.cross_k]
        cache.cross_v = [v.index_select(0, index)[:, :, :src_len] for v in cache.cross_v]
        cache.self_k = [None if k is None else k.index_select(0, index) for k in cache.self_k]
        cache.self_v = [None if v is None else v.index_select(0, index) for v in cache.self_v]
        self._src_mask = self._src_mask.index_select(0, index)[:, :src_len]
        self._self_mask = self._self_mask.index_select(0, index)
        self._trim_columns()
        self._sync_src_mask()

    def _trim_columns(self) -> None:
        """Cut the self-attention columns no running row owns (views: no copy)."""
        live = [row for row in self._rows if not row.free]
        if not live or self._cache is None or self._self_mask is None:
            return
        first_col = min(row.start_col for row in live)
        if first_col <= 0:
            return
        cache = self._cache
        cache.self_k = [None if k is None else k[:, :, first_col:] for k in cache.self_k]
        cache.self_v = [None if v is None else v[:, :, first_col:] for v in cache.self_v]
        self._self_mask = self._self_mask[:, first_col:]
        for row in self._rows:
            row.start_col = max(0, row.start_col - first_col)

    def _drop_free(self) -> None:
        """Drop the free slots (nothing waits to reuse them)."""
        if any(row.free for row in self._rows):
            self._keep([r for r, row in enumerate(self._rows) if not row.free])

    def _sync_src_mask(self) -> None:
        assert self._cache is not None and self._src_mask is not None
        # None when nothing is padded, as Seq2SeqTransformer.encode gives (faster kernels)
        self._cache.src_mask = (
            None if bool(self._src_mask.all()) else self._src_mask[:, None, None, :]
        )

    def _admit(self) -> None:
        """Encode waiting requests that fit and put their rows into free slots, then append the
        rest (at a step boundary); slots still free afterwards are dropped."""
        free = self.max_rows - self.running
        admitted: list[_Pending] = []
        while self._waiting and self._waiting[0].cfg.num_return_sequences <= free:
            pending = self._waiting.popleft()
            free -= pending.cfg.num_return_sequences
            admitted.append(pending)
        if not admitted:
            self._drop_free()
            return
        new, src = self._encode(admitted)
        new_src_mask = src.ne(self.model.cfg.pad_id)
        columns = 0 if self._self_mask is None else self._self_mask.size(1)
        new_rows = [
            _Row(p.key, p.cfg, p.generator, len(p.src), start_col=columns)
            for p in admitted
            for _ in range(p.cfg.num_return_sequences)
        ]
        if self._cache is None:
            assert not self._rows
            self._cache = new
            self._src_mask = new_src_mask
            self._self_mask = torch.zeros(len(new_rows), 0, dtype=torch.bool, device=self.device)
            self._rows = new_rows
            self._sync_src_mask()
            return
        assert self._src_mask is not None and self._self_mask is not None
        cache = self._cache
        s_old, s_new = self._src_mask.size(1), new_src_mask.size(1)
        s = max(s_old, s_new)
        pad = torch.nn.functional.pad

        def pad_src(t: Tensor, size: int) -> Tensor:  # (B, H, S, hd) -> (B, H, s, hd)
            return t if size == s else pad(t, (0, 0, 0, s - size))

        if s_old < s:  # a longer source than any running one: widen the cache once
            cache.cross_k = [pad_src(k, s_old) for k in cache.cross_k]
            cache.cross_v = [pad_src(v, s_old) for v in cache.cross_v]
            self._src_mask = pad(self._src_mask, (0, s - s_old))
        new_k = [pad_src(k, s_new) for k in new.cross_k]
        new_v = [pad_src(v, s_new) for v in new.cross_v]
        new_src_mask = pad(new_src_mask, (0, s - s_new))
        # 1. free slots, written in place: the new row owns none of the slot's old columns
        slots = [r for r, row in enumerate(self._rows) if row.free][: len(new_rows)]
        n = len(slots)
        if n:
            index = torch.tensor(slots, device=self.device)
            for i in range(len(cache.cross_k)):
                cache.cross_k[i].index_copy_(0, index, new_k[i][:n])
                cache.cross_v[i].index_copy_(0, index, new_v[i][:n])
            self._src_mask.index_copy_(0, index, new_src_mask[:n])
            self._self_mask.index_fill_(0, index, False)
            for slot, row in zip(slots, new_rows[:n], strict=True):
                self._rows[slot] = row
        # 2. the rest appended as new rows (zeros in the self-attention cache, hidden by the mask)
        rest = len(new_rows) - n
        if rest:
            cache.cross_k = [
                torch.cat([a, b[n:]]) for a, b in zip(cache.cross_k, new_k, strict=True)
            ]
            cache.cross_v = [
                torch.cat([a, b[n:]]) for a, b in zip(cache.cross_v, new_v, strict=True)
            ]
            self._src_mask = torch.cat([self._src_mask, new_src_mask[n:]])
            for i, (k, v) in enumerate(zip(cache.self_k, cache.self_v, strict=True)):
                if k is None or v is None:
                    continue
                cache.self_k[i] = torch.cat([k, k.new_zeros(rest, *k.shape[1:])])
                cache.self_v[i] = torch.cat([v, v.new_zeros(rest, *v.shape[1:])])
            self._self_mask = torch.cat([self._self_mask, self._self_mask.new_zeros(rest, columns)])
            self._rows += new_rows[n:]
        self._drop_free()  # fewer new rows than free slots
        self._sync_src_mask()

    def _encode(self, admitted: list[_Pending]) -> tuple[DecoderCache, Tensor]:
        """The admitted requests' new cache rows (``num_return_sequences`` each) and their
        right-padded sources: one encoder call for those not encoded ahead."""
        model = self.model
        src = _padded([p.src for p in admitted], model.cfg.pad_id, self.device)
        width = src.size(1)
        repeats = torch.tensor([p.cfg.num_return_sequences for p in admitted], device=self.device)
        repeated = bool((repeats > 1).any())
        if all(p.encoded is None for p in admitted):  # the encoder's own padded batch
            memory, mask = model.encode(src)
            if repeated:
                memory = memory.repeat_interleave(repeats, dim=0)
                mask = None if mask is None else mask.repeat_interleave(repeats, dim=0)
            new = model.start_cache(memory, mask)
        else:  # encoded ahead (or now, for the rest): pad each to the widest and stack
            missing = [p for p in admitted if p.encoded is None]
            if missing:
                fresh = encode_sources(model, [p.src for p in missing])
                for p, e in zip(missing, fresh, strict=True):
                    p.encoded = e
            encoded = [p.encoded for p in admitted if p.encoded is not None]

            def stack(parts: list[Tensor]) -> Tensor:
                pad = torch.nn.functional.pad
                return torch.cat([pad(t, (0, 0, 0, width - t.size(2))) for t in parts])

            layers = range(len(model.decoder_layers))
            new = DecoderCache(
                cross_k=[stack([e.cross_k[i] for e in encoded]) for i in layers],
                cross_v=[stack([e.cross_v[i] for e in encoded]) for i in layers],
                src_mask=None,
                self_k=[None] * len(layers),
                self_v=[None] * len(layers),
            )
            if repeated:
                new.reorder(
                    torch.arange(len(admitted), device=self.device).repeat_interleave(repeats)
                )
        if repeated:
            src = src.repeat_interleave(repeats, dim=0)
        return new, src


def decode_continuously(
    model: Seq2SeqTransformer,
    sources: Sequence[Sequence[int]],
    configs: Sequence[DecodingConfig],
    *,
    arrivals: Sequence[int] | None = None,
    max_rows: int = 64,
    generators: Sequence[torch.Generator | None] | None = None,
    prior: ContextFreePrior | None = None,
) -> list[Generation]:
    """Decode ``sources`` through one :class:`ContinuousDecoder`, source i added just before
    decoder step ``arrivals[i]`` (default: all at step 0); one Generation per source, in order.
    For tests and benchmarks: the same schedule the service produces with staggered requests."""
    arrivals = list(arrivals) if arrivals is not None else [0] * len(sources)
    gens = list(generators) if generators is not None else [None] * len(sources)
    decoder = ContinuousDecoder(model, max_rows=max_rows, prior=prior)
    order = sorted(range(len(sources)), key=lambda i: arrivals[i])
    keys: dict[int, int] = {}
    out: dict[int, Generation] = {}
    step = 0
    pending = deque(order)
    while pending or not decoder.idle:
        while pending and arrivals[pending[0]] <= step:
            i = pending.popleft()
            keys[decoder.add(sources[i], configs[i], generator=gens[i])] = i
        for done in decoder.step():
            out[keys[done.key]] = done.generation
        step += 1
    return [out[i] for i in range(len(sources))]

"""Response decoding for :class:`~models.seq2seq.Seq2SeqTransformer`: greedy, sampling, beam search.

Every strategy is batched (sources right-padded) and incremental: the decoder runs one new token
per step against a KV cache (``use_cache=False`` recomputes the prefix each step; it exists to
check the cache and to measure what the cache buys). Options:

* ``min_length`` forbids EOS until that many tokens are out; ``max_length`` caps the tokens
  generated (EOS included);
* sampling: ``temperature``, ``top_k`` (Fan et al. 2018), ``top_p`` (nucleus, Holtzman et al. 2020);
* ``no_repeat_ngram_size``: n-gram blocking (Paulus et al. 2018): a token that would repeat an
  n-gram already in the hypothesis is forbidden;
* ``block_adjacent_repeats``: a token may not repeat the one just before it, so no word comes
  twice in a row ("about about about a few days ."). Trigram blocking leaves such stutters
  through, and anti-LM provokes them: it pushes the first tokens off the likely ones, and a small
  model then repeats the unlikely word (reports/adjacent_repeats_small.md);
* beam search ranks finished hypotheses by ``sum log p / length ** length_penalty``;
* ``anti_lm``: MMI-antiLM (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
  Conversation Models", eq. 9-10): for the first ``anti_lm_steps`` tokens the choice is made on
  ``log p(t_k | t_<k, S) - anti_lm * log U(t_k | t_<k)``, a penalty on what is likely whatever the
  context, the mark of a generic reply. U is the same model given a content-free source
  (:class:`ContextFreePrior`), so no second model is trained; the returned scores stay ``log p``.
  ``anti_lm_plausibility`` (alpha) keeps the penalty's choice among plausible tokens: at those
  positions a token is eligible only if ``p(t_k | t_<k, S) >= alpha * max_t p(t | t_<k, S)``, the
  plausibility constraint of contrastive decoding (Li et al. 2023, "Contrastive Decoding: Open-
  ended Text Generation as Optimization", its V_head). Greedy barely needs it, but sampling with
  the penalty flattens the distribution towards rare subword pieces the model barely considers,
  which a small model then completes into non-words ("appet umile's seemer .";
  reports/safety_alternatives_small.md, reports/anti_lm_plausibility_small_val.md).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from models.seq2seq import DecoderCache, Seq2SeqTransformer

Strategy = Literal["greedy", "sample", "beam"]


@dataclass(frozen=True)
class DecodingConfig:
    """How to decode; services expose a bounded subset of these as per-request overrides."""

    strategy: Strategy = "greedy"
    max_length: int = 32  # generated tokens, EOS included
    min_length: int = 1  # tokens before EOS is allowed
    beam_size: int = 5
    length_penalty: float = 1.0  # beam score = sum log p / length ** length_penalty
    temperature: float = 1.0  # sampling only
    top_k: int = 0  # sampling only; 0 = no top-k filter
    top_p: float = 1.0  # sampling only; 1.0 = no nucleus filter
    no_repeat_ngram_size: int = 0  # 0 = off
    block_adjacent_repeats: bool = False  # forbid the previous token (no word twice in a row)
    num_return_sequences: int = 1  # per source (sampling draws; beam returns the n best)
    use_cache: bool = True
    anti_lm: float = 0.0  # lambda of MMI-antiLM; 0 = off (module doc)
    anti_lm_steps: int = 1  # gamma: the first tokens the penalty applies to
    anti_lm_plausibility: float = 0.0  # alpha: only tokens with p >= alpha * max p (module doc)

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "sample", "beam"):
            raise ValueError(f"unknown decoding strategy {self.strategy!r}")
        if self.max_length < 1 or self.min_length < 0 or self.min_length > self.max_length:
            raise ValueError(
                f"need 0 <= min_length <= max_length and max_length >= 1, "
                f"got min_length={self.min_length}, max_length={self.max_length}"
            )
        if self.beam_size < 1 or self.num_return_sequences < 1:
            raise ValueError("beam_size and num_return_sequences must be >= 1")
        if self.strategy == "beam" and self.num_return_sequences > self.beam_size:
            raise ValueError("beam search cannot return more sequences than beam_size")
        if self.strategy == "greedy" and self.num_return_sequences != 1:
            raise ValueError("greedy decoding returns one sequence per source")
        if self.temperature <= 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("need temperature > 0, top_k >= 0 and 0 < top_p <= 1")
        if self.no_repeat_ngram_size < 0:
            raise ValueError("no_repeat_ngram_size must be >= 0")
        if not isinstance(self.block_adjacent_repeats, bool):
            raise ValueError("block_adjacent_repeats must be true or false")
        if not 0 <= self.anti_lm < 1 or self.anti_lm_steps < 0:
            raise ValueError("need 0 <= anti_lm < 1 and anti_lm_steps >= 0")
        if not 0 <= self.anti_lm_plausibility < 1:
            raise ValueError("need 0 <= anti_lm_plausibility < 1")

    def anti_lm_at(self, position: int) -> bool:
        """Whether the anti-LM penalty applies to the token at ``position`` (0 = the first)."""
        return self.anti_lm > 0 and position < self.anti_lm_steps

    def with_overrides(self, **overrides: object) -> DecodingConfig:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **overrides)  # type: ignore[arg-type]

    def n_best(self, n: int) -> DecodingConfig:
        """The ``n`` best of a beam search ``n`` wide, the other settings kept: the candidates
        of generate, then rank (the service's GENERATIVE_RERANK, G2R's ranked augmentation)."""
        return self.with_overrides(strategy="beam", beam_size=n, num_return_sequences=n)


@dataclass
class Generation:
    """Decoded token ids (no BOS/EOS/pad), ``num_return_sequences`` rows per source, in order."""

    tokens: list[list[int]]
    scores: list[float]  # greedy/sample: sum of log p of the chosen tokens; beam: ranking score


class ContextFreePrior:
    """U(t | prefix) of MMI-antiLM: the model's next-token log-probabilities after a reply prefix
    given a content-free source ``src`` (1, S), instead of a separately trained language model.

    The penalty covers only a reply's first few tokens, whose prefixes repeat across requests
    (most replies start with one of a few dozen tokens), so rows are memoised by prefix, up to
    ``max_entries`` (least recently used dropped): after warm-up a served request costs a
    dictionary lookup, not a second decoder pass. The memo assumes fixed weights (a loaded
    bundle); build a new prior after changing the model."""

    def __init__(self, model: Seq2SeqTransformer, src: Tensor, max_entries: int = 4096) -> None:
        self.model = model
        self.src = src[:1]
        self.max_entries = max_entries
        self._memo: OrderedDict[tuple[int, ...], Tensor] = OrderedDict()

    @torch.inference_mode()
    def __call__(self, prefixes: Sequence[Sequence[int]]) -> Tensor:
        """log U (B, V), float32, for each reply prefix (generated tokens, no BOS)."""
        keys = [tuple(p) for p in prefixes]
        missing = list(dict.fromkeys(k for k in keys if k not in self._memo))
        by_length: dict[int, list[tuple[int, ...]]] = {}
        for key in missing:
            by_length.setdefault(len(key), []).append(key)
        mc = self.model.cfg
        for length, group in by_length.items():
            tgt = torch.tensor([[mc.bos_id, *k] for k in group], device=self.src.device)
            src = self.src.expand(len(group), -1)
            logits = self.model(src, tgt).logits[:, length].float().log_softmax(dim=-1)
            for key, row in zip(group, logits, strict=True):
                self._memo[key] = row
        out = []
        for key in keys:
            self._memo.move_to_end(key)
            out.append(self._memo[key])
        while len(self._memo) > self.max_entries:
            self._memo.popitem(last=False)
        return torch.stack(out)


def anti_lm_scores(
    log_probs: Tensor,
    prefixes: Sequence[Sequence[int]],
    configs: Sequence[DecodingConfig],
    prior: ContextFreePrior | None,
) -> Tensor:
    """MMI-antiLM's choice scores for rows at position ``len(prefix)`` (Li et al. 2016, eq. 10
    with g(k) = 1 for k <= gamma): ``log p - lambda * log U`` for each row where its own config's
    penalty applies, else ``log p`` unchanged (rows of a continuous batch carry different
    configs). Where a row's ``anti_lm_plausibility`` alpha > 0, tokens with
    ``log p < log alpha + max log p`` get -inf (the plausibility constraint, module doc)."""
    rows = [r for r, prefix in enumerate(prefixes) if configs[r].anti_lm_at(len(prefix))]
    if not rows:
        return log_probs
    if prior is None:
        raise ValueError("anti_lm decoding needs a ContextFreePrior")
    penalty = prior([prefixes[r] for r in rows]).to(log_probs.device)
    weights = torch.tensor([configs[r].anti_lm for r in rows], device=log_probs.device)
    out = log_probs.clone()
    index = torch.tensor(rows, device=log_probs.device)
    chosen = log_probs[index]
    scores = chosen - weights[:, None] * penalty
    alphas = [configs[r].anti_lm_plausibility for r in rows]
    if any(a > 0 for a in alphas):
        # log 0 = -inf: a row with alpha 0 keeps every token
        log_alpha = torch.tensor(alphas, device=log_probs.device).log()
        floor = chosen.max(dim=-1, keepdim=True).values + log_alpha[:, None]
        scores = scores.masked_fill(chosen < floor, float("-inf"))
    out[index] = scores
    return out


class _Stepper:
    """Runs the decoder one position at a time, with or without the KV cache."""

    def __init__(self, model: Seq2SeqTransformer, src: Tensor, use_cache: bool) -> None:
        self.model = model
        self.memory, self.src_mask = model.encode(src)
        self.cache: DecoderCache | None = (
            model.start_cache(self.memory, self.src_mask) if use_cache else None
        )

    def __call__(self, prefix: Tensor) -> Tensor:
        """Logits (B, V) for the position after ``prefix`` (B, T)."""
        if self.cache is not None:
            return self.model.decode_step(prefix[:, self.cache.length :], self.cache)
        return self.model.decode(prefix, self.memory, self.src_mask).logits[:, -1]

    def reorder(self, index: Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(index)
        else:
            self.memory = self.memory.index_select(0, index)
            if self.src_mask is not None:
                self.src_mask = self.src_mask.index_select(0, index)


def banned_ngram_tokens(hypotheses: list[list[int]], n: int) -> list[list[int]]:
    """For each hypothesis, the tokens that would complete an n-gram it already contains."""
    banned: list[list[int]] = []
    for seq in hypotheses:
        if n == 0 or len(seq) < n:
            banned.append([])
            continue
        prefix = seq[len(seq) - n + 1 :] if n > 1 else []
        banned.append(
            [seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i : i + n - 1] == prefix]
        )
    return banned


def _block_adjacent(scores: Tensor, generated: Tensor) -> None:
    """Set each row's score of its previous token to -inf, in place (``generated`` excludes BOS)."""
    if generated.size(1):
        scores.scatter_(1, generated[:, -1:], float("-inf"))


def _block_ngrams(scores: Tensor, generated: Tensor, n: int) -> None:
    """Set scores of n-gram-repeating tokens to -inf, in place; ``generated`` excludes BOS."""
    for row, tokens in enumerate(banned_ngram_tokens(generated.tolist(), n)):
        if tokens:
            scores[row, tokens] = float("-inf")


def filter_top_k_top_p(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Keep the ``top_k`` best logits and the smallest set whose probability exceeds ``top_p``."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p (the best one always stays).
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _processed_log_probs(
    logits: Tensor, generated: Tensor, step: int, cfg: DecodingConfig, eos_id: int
) -> Tensor:
    """Log-probabilities after the min-length, n-gram and adjacent-repeat constraints."""
    log_probs = logits.float().log_softmax(dim=-1)
    if step < cfg.min_length:
        log_probs[:, eos_id] = float("-inf")
    if cfg.no_repeat_ngram_size:
        _block_ngrams(log_probs, generated, cfg.no_repeat_ngram_size)
    if cfg.block_adjacent_repeats:
        _block_adjacent(log_probs, generated)
    return log_probs


@torch.inference_mode()
def generate(
    model: Seq2SeqTransformer,
    src: Tensor,
    cfg: DecodingConfig,
    *,
    generator: torch.Generator | None = None,
    prior: ContextFreePrior | None = None,
) -> Generation:
    """Decode responses for right-padded source ids ``src`` (B, S); ``prior`` is required when
    ``cfg.anti_lm`` is on."""
    if cfg.strategy == "beam":
        return _beam_search(model, src, cfg, prior)
    if cfg.num_return_sequences > 1:
        src = src.repeat_interleave(cfg.num_return_sequences, dim=0)
    mc = model.cfg
    batch = src.size(0)
    stepper = _Stepper(model, src, cfg.use_cache)
    seqs = torch.full((batch, cfg.max_length + 1), mc.pad_id, dtype=torch.long, device=src.device)
    seqs[:, 0] = mc.bos_id
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    scores = torch.zeros(batch, device=src.device)
    for step in range(cfg.max_length):
        logits = stepper(seqs[:, : step + 1])
        log_probs = _processed_log_probs(logits, seqs[:, 1 : step + 1], step, cfg, mc.eos_id)
        choice = log_probs
        if cfg.anti_lm_at(step):
            choice = anti_lm_scores(log_probs, seqs[:, 1 : step + 1].tolist(), [cfg] * batch, prior)
        if cfg.strategy == "greedy":
            next_tokens = choice.argmax(dim=-1)
        else:
            filtered = filter_top_k_top_p(choice / cfg.temperature, cfg.top_k, cfg.top_p)
            next_tokens = torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator)
            next_tokens = next_tokens.squeeze(1)
        chosen = log_probs.gather(1, next_tokens[:, None]).squeeze(1)
        scores += chosen.masked_fill(finished, 0.0)
        next_tokens = next_tokens.masked_fill(finished, mc.pad_id)
        seqs[:, step + 1] = next_tokens
        finished |= next_tokens == mc.eos_id
        if bool(finished.all()):
            break
    return Generation(
        tokens=[_strip(row, mc.eos_id, mc.pad_id) for row in seqs[:, 1:].tolist()],
        scores=scores.tolist(),
    )


def _strip(row: list[int], eos_id: int, pad_id: int) -> list[int]:
    """Tokens up to (not including) EOS, without padding."""
    out = []
    for tok in row:
        if tok == eos_id:
            break
        if tok != pad_id:
            out.append(tok)
    return out


def _beam_search(
    model: Seq2SeqTransformer,
    src: Tensor,
    cfg: DecodingConfig,
    prior: ContextFreePrior | None = None,
) -> Generation:
    """Batched beam search with length-normalised ranking of finished hypotheses (with
    ``anti_lm``, the first tokens' terms in a hypothesis's score are the anti-LM scores)."""
    mc = model.cfg
    batch, k = src.size(0), cfg.beam_size
    device = src.device
    stepper = _Stepper(model, src, cfg.use_cache)
    stepper.reorder(torch.arange(batch, device=device).repeat_interleave(k))  # (B*K, ...)
    seqs = torch.full((batch * k, 1), mc.bos_id, dtype=torch.long, device=device)
    beam_scores = torch.zeros(batch, k, device=device)
    beam_scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch

    def rank(total: float, length: int) -> float:
        return total / (length**cfg.length_penalty)

    for step in range(cfg.max_length):
        logits = stepper(seqs)
        log_probs = _processed_log_probs(logits, seqs[:, 1:], step, cfg, mc.eos_id)
        if cfg.anti_lm_at(step):
            log_probs = anti_lm_scores(log_probs, seqs[:, 1:].tolist(), [cfg] * len(seqs), prior)
        vocab = log_probs.size(-1)
        candidates = (beam_scores.view(-1, 1) + log_probs).view(batch, k * vocab)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)  # (B, 2K)
        top_scores_l, top_ids_l = top_scores.tolist(), top_ids.tolist()
        next_scores = torch.full((batch, k), float("-inf"))
        next_rows = torch.zeros(batch, k, dtype=torch.long)
        next_tokens = torch.full((batch, k), mc.pad_id, dtype=torch.long)
        for b in range(batch):
            if done[b]:
                continue
            j = 0
            for r, (score, flat) in enumerate(zip(top_scores_l[b], top_ids_l[b], strict=True)):
                beam, token = divmod(flat, vocab)
                if score == float("-inf"):
                    break
                if token == mc.eos_id:
                    if r < k:  # an EOS outside the top K would not have survived as a beam
                        hyp = seqs[b * k + beam, 1:].tolist()
                        finished[b].append((rank(score, len(hyp) + 1), hyp))
                else:
                    next_scores[b, j], next_rows[b, j], next_tokens[b, j] = (
                        score,
                        b * k + beam,
                        token,
                    )
                    j += 1
                if j == k:
                    break
            if len(finished[b]) >= k:
                finished[b] = sorted(finished[b], key=lambda h: -h[0])[:k]
                best_open = float(next_scores[b].max())
                if finished[b][-1][0] >= rank(best_open, step + 1):
                    done[b] = True
        if all(done):
            break
        for b in range(batch):  # keep finished rows' tensors well-formed
            if done[b]:
                next_rows[b] = torch.arange(b * k, (b + 1) * k)
        rows = next_rows.view(-1).to(device)
        seqs = torch.cat([seqs.index_select(0, rows), next_tokens.view(-1, 1).to(device)], dim=1)
        stepper.reorder(rows)
        beam_scores = next_scores.to(device)
    tokens: list[list[int]] = []
    scores: list[float] = []
    for b in range(batch):
        if not done[b]:  # ran out of length: open beams compete with finished ones
            for j in range(k):
                total = float(beam_scores[b, j])
                if total > float("-inf"):
                    hyp = seqs[b * k + j, 1:].tolist()
                    finished[b].append((rank(total, len(hyp)), hyp))
        best = sorted(finished[b], key=lambda h: -h[0])[: cfg.num_return_sequences]
        for score, hyp in best:
            tokens.append(_strip(hyp, mc.eos_id, mc.pad_id))
            scores.append(score)
    return Generation(tokens=tokens, scores=scores)


@torch.inference_mode()
def sequence_log_likelihood(
    model: Seq2SeqTransformer, src: Tensor, tgt_in: Tensor, tgt_out: Tensor
) -> tuple[Tensor, Tensor]:
    """Sum of log P(tgt_out | src, tgt_in) per row (B,) and the number of scored tokens (B,).

    Padding in ``tgt_out`` is not scored. Used for perplexity and G2R teacher scores (eq. 3).
    """
    logits = model(src, tgt_in).logits.float()
    nll = F.cross_entropy(
        logits.transpose(1, 2), tgt_out, ignore_index=model.cfg.pad_id, reduction="none"
    )  # (B, T)
    mask = tgt_out.ne(model.cfg.pad_id)
    return -(nll * mask).sum(dim=1), mask.sum(dim=1)


def group_by_config(
    n_contexts: int, configs: Sequence[DecodingConfig]
) -> dict[DecodingConfig, list[int]]:
    """The rows of each distinct decoding config, groups in the order their config first appears
    (what every generator's ``reply_each`` decodes as one batch); raises ValueError unless there is
    one config per context."""
    if n_contexts != len(configs):
        raise ValueError(f"{n_contexts} contexts but {len(configs)} decoding configs")
    groups: dict[DecodingConfig, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(config, []).append(i)
    return groups

"""G2R: distilling a generative teacher into a bi-encoder retriever (Kim et al., Findings of EMNLP 2021).

Sections, in pipeline order:

1. Teachers: :class:`Teacher` samples replies and scores pairs with eq. 3 (LL / |r|) and eq. 6
   (MI / |r|); :class:`BundleTeacher` wraps our generator bundles, :class:`HFTeacher` a local
   Hugging Face seq2seq or causal LM (``transformers`` is an optional extra, imported lazily).
2. Data-level G2R (sec. 2.3): m teacher replies per training context written to resumable JSONL
   shards ``shard-<rank>-of-<world>.jsonl`` (context i belongs to rank i % world), then read back
   into the augmented set D^G and response set R^G (deduplicated).
3. The response set filter (length bounds and a blocklist), with counts of what was dropped.
4. Losses: eq. 2 (cross-entropy over the positives against in-batch and shared random
   negatives) and eqs. 4-5 (KD from the teacher's scores, teacher probability 0 for negatives).
5. Hits@1/K and Hits@5/K (K = 100) for validation and early stopping.
6. The retriever training job (``biencoder``, ``g2r-d``, ``g2r-dm``) and its bundle.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from models.biencoder import BiEncoder, BiEncoderConfig
from models.bundle import INDEX_FILE, Manifest, load_state_dict, read_manifest, verify_bundle
from models.decoding import DecodingConfig, sequence_log_likelihood
from models.generator import GenerativeResponder, InputConfig
from models.retriever import (
    IndexConfig,
    ResponseIndex,
    RetrievalResponder,
    build_response_index,
    embed_responses,
    exact_search,
    read_responses,
)
from models.text import normalize_text
from models.tokenizer import DialogueTokenizer
from training.data import DialogueExample, DialogueSplits
from training.distributed import DistContext, barrier
from training.generator import bucketed_batches
from training.presets import AugmentConfig, RetrieverPreset
from training.trainer import Trainer

logger = logging.getLogger(__name__)

Method = Literal["biencoder", "g2r-d", "g2r-dm"]
METHODS: tuple[Method, ...] = ("biencoder", "g2r-d", "g2r-dm")
DEFAULT_BLOCKLIST = Path(__file__).resolve().parents[1].parent / "shared/data/blocklist/en.txt"
SHARD_FORMAT = 1

# --- 1. teachers --------------------------------------------------------------------------------


class Teacher(Protocol):
    """A generative model that samples replies and scores (context, response) pairs."""

    name: str  # provenance recorded in shards and manifests

    def sample(
        self,
        contexts: Sequence[Sequence[str]],
        m: int,
        *,
        min_length: int = 0,
        top_k: int = 20,
        no_repeat_ngram_size: int = 3,
        max_length: int = 32,
        seed: int = 0,
    ) -> list[list[str]]:
        """``m`` normalised replies per context, sampled with top-k and n-gram blocking."""
        ...

    def score(
        self, contexts: Sequence[Sequence[str]], responses: Sequence[str]
    ) -> tuple[list[float], list[float]]:
        """Per pair: G_LL = log P(r|c) / |r| (eq. 3) and G_MI = (log P(r|c) - log P(r)) / |r| (eq. 6)."""
        ...


def teacher_scores(
    log_likelihood: Tensor, n_tokens: Tensor, dummy_log_likelihoods: Tensor
) -> tuple[Tensor, Tensor]:
    """Eq. 3 and eq. 6 from summed log-probabilities.

    ``log_likelihood`` (B,) is log P(r|c), ``n_tokens`` (B,) is |r| (EOS included) and
    ``dummy_log_likelihoods`` (D, B) is log P(r|d) for D content-free contexts d. P(r) is their
    average likelihood (G2R appendix G): log P(r) = logsumexp_d log P(r|d) - log D.
    """
    n = n_tokens.to(log_likelihood.dtype).clamp(min=1)
    log_prior = torch.logsumexp(dummy_log_likelihoods, dim=0) - math.log(
        dummy_log_likelihoods.size(0)
    )
    return log_likelihood / n, (log_likelihood - log_prior) / n


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


class BundleTeacher:
    """One of our generator bundles as the G2R teacher.

    MI's dummy contexts are ".", ``<unk>`` and ``<sep>``: the paper's ``<PAD>`` cannot be used
    because our encoder masks padding out of attention, so the separator stands in for it.
    """

    def __init__(self, responder: GenerativeResponder, *, batch_size: int = 128) -> None:
        self.responder = responder
        self.name = responder.bundle_id
        self.batch_size = batch_size
        tok = responder.tokenizer
        self._dummy_sources = [tok.encode_contexts([["."]], 8)[0], [tok.unk_id], [tok.sep_id]]

    @classmethod
    def load(cls, bundle_dir: Path, device: str | torch.device = "cpu") -> BundleTeacher:
        return cls(GenerativeResponder.load(bundle_dir, device=device))

    def sample(
        self,
        contexts: Sequence[Sequence[str]],
        m: int,
        *,
        min_length: int = 0,
        top_k: int = 20,
        no_repeat_ngram_size: int = 3,
        max_length: int = 32,
        seed: int = 0,
    ) -> list[list[str]]:
        decoding = DecodingConfig(
            strategy="sample",
            top_k=top_k,
            no_repeat_ngram_size=no_repeat_ngram_size,
            min_length=min_length,
            max_length=max_length,
            num_return_sequences=m,
        )
        gen = torch.Generator(device=self.responder.device).manual_seed(seed)
        texts = [
            normalize_text(t) for t in self.responder.respond(contexts, decoding, generator=gen)
        ]
        return [texts[i * m : (i + 1) * m] for i in range(len(contexts))]

    @torch.inference_mode()
    def score(
        self, contexts: Sequence[Sequence[str]], responses: Sequence[str]
    ) -> tuple[list[float], list[float]]:
        assert len(contexts) == len(responses), (
            f"{len(contexts)} contexts, {len(responses)} responses"
        )
        r, tok, model = self.responder, self.responder.tokenizer, self.responder.model
        ll_out: list[float] = []
        mi_out: list[float] = []
        for rows in _chunks(len(responses), self.batch_size):
            src = r.encode_contexts([contexts[i] for i in rows])
            ids = tok.encode_responses([responses[i] for i in rows], r.inputs.max_target_len)
            tgt_in, tgt_out = (t.to(r.device) for t in tok.decoder_io(ids))
            ll, n = sequence_log_likelihood(model, src, tgt_in, tgt_out)
            dummies = torch.stack(
                [
                    sequence_log_likelihood(
                        model, tok.pad([d] * len(rows), r.device), tgt_in, tgt_out
                    )[0]
                    for d in self._dummy_sources
                ]
            )
            g_ll, g_mi = teacher_scores(ll, n, dummies)
            ll_out += g_ll.tolist()
            mi_out += g_mi.tolist()
        return ll_out, mi_out


class HFTeacher:
    """A local Hugging Face seq2seq or causal LM directory as the G2R teacher (never the hub).

    A context is its turns joined by ``turn_separator``; a causal LM reads it followed by the
    separator and continues with the reply. Replies are normalised like our corpus. MI's dummy
    contexts are ".", the unknown token and the pad token (G2R appendix G).
    """

    def __init__(
        self,
        model_dir: Path,
        device: str | torch.device = "cpu",
        *,
        turn_separator: str = "\n",
        max_source_len: int = 256,
        batch_size: int = 32,
    ) -> None:
        try:
            transformers: Any = importlib.import_module("transformers")
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "a Hugging Face teacher needs the optional 'transformers' package "
                "(pip install -e '.[bench]')"
            ) from exc
        model_dir = Path(model_dir)
        config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            model_dir, local_files_only=True
        )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        auto = (
            transformers.AutoModelForSeq2SeqLM
            if self.seq2seq
            else transformers.AutoModelForCausalLM
        )
        self.model = auto.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        self.device = torch.device(device)
        self.name = f"hf:{model_dir.resolve().name}"
        self.turn_separator = turn_separator
        self.max_source_len = max_source_len
        self.batch_size = batch_size
        specials = [self.tokenizer.unk_token, self.tokenizer.pad_token]
        self._dummy_contexts = [["."], *([s] for s in specials if s)]

    def _prompt(self, context: Sequence[str]) -> str:
        text = self.turn_separator.join(context)
        return text if self.seq2seq else text + self.turn_separator

    @torch.inference_mode()
    def sample(
        self,
        contexts: Sequence[Sequence[str]],
        m: int,
        *,
        min_length: int = 0,
        top_k: int = 20,
        no_repeat_ngram_size: int = 3,
        max_length: int = 32,
        seed: int = 0,
    ) -> list[list[str]]:
        tok = self.tokenizer
        tok.padding_side = "right" if self.seq2seq else "left"  # causal LMs continue on the right
        enc = tok(
            [self._prompt(c) for c in contexts],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_source_len,
        ).to(self.device)
        torch.manual_seed(seed)
        out = self.model.generate(
            **enc,
            do_sample=True,
            top_k=top_k,
            no_repeat_ngram_size=no_repeat_ngram_size,
            min_new_tokens=min_length,
            max_new_tokens=max_length,
            num_return_sequences=m,
            pad_token_id=tok.pad_token_id,
        )
        if not self.seq2seq:
            out = out[:, enc["input_ids"].shape[1] :]
        texts = [normalize_text(t) for t in tok.batch_decode(out, skip_special_tokens=True)]
        return [texts[i * m : (i + 1) * m] for i in range(len(contexts))]

    def _log_likelihoods(
        self, prompts: Sequence[str], responses: Sequence[str]
    ) -> tuple[Tensor, Tensor]:
        """Summed log P(response | prompt) (EOS included) and token counts, (B,) each."""
        tok = self.tokenizer
        eos = tok.eos_token_id
        if self.seq2seq:
            tok.padding_side = "right"
            enc = tok(
                list(prompts),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_source_len,
            ).to(self.device)
            lab = tok(text_target=list(responses), return_tensors="pt", padding=True).to(
                self.device
            )
            labels = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
            logits = self.model(**enc, labels=labels).logits.float()
            mask = labels.ne(-100)
            target = labels.clamp(min=0)
        else:
            rows = []
            starts = []
            for p, r in zip(prompts, responses, strict=True):
                p_ids = tok(p)["input_ids"][-self.max_source_len :] or [eos]
                r_ids = [*tok(r, add_special_tokens=False)["input_ids"], eos]
                rows.append(p_ids + r_ids)
                starts.append(len(p_ids))
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
                attn[i, : len(row)] = 1
            ids, attn = ids.to(self.device), attn.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
            target = ids[:, 1:]  # token t is predicted at position t - 1
            pos = torch.arange(width - 1, device=self.device)[None, :]
            start = torch.tensor(starts, device=self.device)[:, None] - 1
            mask = (pos >= start) & attn[:, 1:].bool()
        logp = logits.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return (logp * mask).sum(dim=1), mask.sum(dim=1)

    @torch.inference_mode()
    def score(
        self, contexts: Sequence[Sequence[str]], responses: Sequence[str]
    ) -> tuple[list[float], list[float]]:
        assert len(contexts) == len(responses), (
            f"{len(contexts)} contexts, {len(responses)} responses"
        )
        ll_out: list[float] = []
        mi_out: list[float] = []
        for rows in _chunks(len(responses), self.batch_size):
            resp = [responses[i] for i in rows]
            ll, n = self._log_likelihoods([self._prompt(contexts[i]) for i in rows], resp)
            dummies = torch.stack(
                [
                    self._log_likelihoods([self._prompt(d)] * len(rows), resp)[0]
                    for d in self._dummy_contexts
                ]
            )
            g_ll, g_mi = teacher_scores(ll, n, dummies)
            ll_out += g_ll.tolist()
            mi_out += g_mi.tolist()
        return ll_out, mi_out


def load_teacher(path: Path, device: str | torch.device = "cpu") -> Teacher:
    """A generator bundle (has manifest.json) or a local HF model directory (has config.json)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return BundleTeacher.load(path, device)
    if (path / "config.json").is_file():
        return HFTeacher(path, device)
    raise FileNotFoundError(
        f"teacher {path} is neither a generator bundle (manifest.json) nor a Hugging Face "
        "model directory (config.json)"
    )


# --- 2. data-level G2R: augmentation shards ------------------------------------------------------


@dataclass(frozen=True)
class ContextGroup:
    """A distinct training context and its gold responses in D."""

    context: tuple[str, ...]
    responses: tuple[str, ...]


def group_by_context(examples: Sequence[DialogueExample]) -> list[ContextGroup]:
    """Distinct contexts in order of first appearance, each with its distinct gold responses."""
    groups: dict[tuple[str, ...], dict[str, None]] = {}
    for e in examples:
        groups.setdefault(e.context, {}).setdefault(e.response)
    return [ContextGroup(c, tuple(r)) for c, r in groups.items()]


def select_contexts(
    groups: Sequence[ContextGroup], max_contexts: int, seed: int
) -> list[ContextGroup]:
    """A seeded subset of ``max_contexts`` groups in corpus order (all when 0 or enough)."""
    if not max_contexts or max_contexts >= len(groups):
        return list(groups)
    keep = np.sort(np.random.default_rng(seed).choice(len(groups), max_contexts, replace=False))
    return [groups[i] for i in keep.tolist()]


def shard_path(out_dir: Path, rank: int, world_size: int) -> Path:
    return Path(out_dir) / f"shard-{rank}-of-{world_size}.jsonl"


def _shard_header(
    teacher: str, cfg: AugmentConfig, groups: Sequence[ContextGroup]
) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps([g.context for g in groups]).encode()).hexdigest()
    header = {
        "format": SHARD_FORMAT,
        "teacher": teacher,
        "config": asdict(cfg),
        "n_contexts": len(groups),
        "contexts_sha256": digest,
    }
    return dict(json.loads(json.dumps(header)))  # as read back from disk (tuples become lists)


def _read_jsonl_records(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of a shard; a torn last line (a killed writer) is ignored."""
    records = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.endswith("\n"):
                logger.warning("%s: ignoring a partial last line", path)
                break
            records.append(json.loads(line))
    return records


def read_shards(out_dir: Path) -> tuple[dict[str, Any] | None, dict[int, dict[str, Any]]]:
    """The shards' common header and their records by context index (first copy wins)."""
    header: dict[str, Any] | None = None
    records: dict[int, dict[str, Any]] = {}
    for path in sorted(Path(out_dir).glob("shard-*-of-*.jsonl")):
        for rec in _read_jsonl_records(path):
            if "header" in rec:
                if header is not None and rec["header"] != header:
                    raise ValueError(
                        f"{path} was written with different settings than its siblings"
                    )
                header = rec["header"]
            else:
                records.setdefault(int(rec["index"]), rec)
    return header, records


def _truncate_partial_line(path: Path) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def augment_contexts(
    teacher: Teacher,
    groups: Sequence[ContextGroup],
    out_dir: Path,
    cfg: AugmentConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> int:
    """Write m teacher replies (and teacher scores of gold and replies) for this rank's contexts.

    Context i goes to rank ``i % world_size``. Contexts already in any shard of ``out_dir`` are
    skipped, so a killed run continues where it stopped. Returns the contexts written now.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = _shard_header(teacher.name, cfg, groups)
    old_header, done = read_shards(out_dir)
    if old_header is not None and old_header != header:
        raise ValueError(
            f"{out_dir} holds shards of a different teacher, configuration or context list; "
            "use another directory or delete it to start over"
        )
    path = shard_path(out_dir, rank, world_size)
    if path.exists():
        _truncate_partial_line(path)
    pending = [i for i in range(rank, len(groups), world_size) if i not in done]
    logger.info(
        "G2R augmentation rank %d/%d: %d of %d contexts left -> %s",
        rank,
        world_size,
        len(pending),
        len(groups),
        path,
    )
    with path.open("a", encoding="utf-8") as shard:
        if shard.tell() == 0:
            shard.write(json.dumps({"header": header}) + "\n")
        bar = tqdm(total=len(pending), desc=f"g2r-augment[{rank}]", disable=not progress)
        for rows in _chunks(len(pending), cfg.batch_contexts):
            indices = [pending[r] for r in rows]
            contexts = [groups[i].context for i in indices]
            generated: list[list[tuple[str, int]]] = [[] for _ in indices]
            for min_length, count in cfg.replies_per_min_length():
                seed = int(
                    np.random.SeedSequence([cfg.seed, indices[0], min_length]).generate_state(1)[0]
                )
                replies = teacher.sample(
                    contexts,
                    count,
                    min_length=min_length,
                    top_k=cfg.top_k,
                    no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                    max_length=cfg.max_length,
                    seed=seed,
                )
                for j, texts in enumerate(replies):
                    generated[j] += [(t, min_length) for t in texts]
            pairs = [
                (j, text)
                for j, i in enumerate(indices)
                for text in [*groups[i].responses, *(t for t, _ in generated[j])]
            ]
            ll, mi = teacher.score([contexts[j] for j, _ in pairs], [t for _, t in pairs])
            at = 0  # position of the context's first pair in (ll, mi)
            for j, i in enumerate(indices):
                n_gold = len(groups[i].responses)
                gold = [
                    {"text": t, "ll": ll[at + k], "mi": mi[at + k]}
                    for k, t in enumerate(groups[i].responses)
                ]
                gen = [
                    {
                        "text": t,
                        "ll": ll[at + n_gold + k],
                        "mi": mi[at + n_gold + k],
                        "min_length": ml,
                    }
                    for k, (t, ml) in enumerate(generated[j])
                ]
                at += n_gold + len(generated[j])
                record = {"index": i, "context": list(contexts[j]), "gold": gold, "generated": gen}
                shard.write(json.dumps(record, ensure_ascii=False) + "\n")
            shard.flush()
            os.fsync(shard.fileno())
            bar.update(len(indices))
        bar.close()
    return len(pending)


def augmentation_status(out_dir: Path) -> tuple[int, int]:
    """(contexts written, contexts expected) over all shards of ``out_dir``; (0, 0) when empty."""
    header, records = read_shards(out_dir) if Path(out_dir).is_dir() else (None, {})
    return len(records), int(header["n_contexts"]) if header else 0


# --- 3. the response set and its filter ----------------------------------------------------------


def load_blocklist(path: Path | None) -> list[str]:
    """Normalised blocklist phrases, one per line (``#`` comments and blank lines skipped)."""
    if path is None:
        return []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return sorted({normalize_text(x) for x in lines if x.strip() and not x.startswith("#")})


@dataclass(frozen=True)
class ResponseFilter:
    """Keeps responses of ``min_tokens..max_tokens`` whitespace tokens with no blocklisted phrase."""

    min_tokens: int = 1
    max_tokens: int = 60
    blocklist: tuple[str, ...] = ()
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.blocklist:
            # Whole-token phrases: "ass" must not match "class". Longest first within the alternation.
            phrases = sorted(self.blocklist, key=len, reverse=True)
            pattern = r"(?<!\S)(?:" + "|".join(map(re.escape, phrases)) + r")(?!\S)"
            object.__setattr__(self, "_pattern", re.compile(pattern))

    def reason(self, text: str) -> str | None:
        """Why ``text`` is dropped (``too_short``, ``too_long``, ``blocked``), or None to keep it."""
        n = len(text.split())
        if n < self.min_tokens:
            return "too_short"
        if n > self.max_tokens:
            return "too_long"
        if self._pattern is not None and self._pattern.search(text):
            return "blocked"
        return None

    def apply(self, texts: Sequence[str]) -> tuple[list[int], dict[str, int]]:
        """Indices of the kept texts and counts: input, kept, too_short, too_long, blocked."""
        counts = {"input": len(texts), "kept": 0, "too_short": 0, "too_long": 0, "blocked": 0}
        kept = []
        for i, text in enumerate(texts):
            why = self.reason(text)
            if why is None:
                kept.append(i)
            else:
                counts[why] += 1
        counts["kept"] = len(kept)
        return kept, counts


@dataclass
class RetrievalData:
    """D or D^G grouped by context, and the (filtered) response set R or R^G to index."""

    contexts: list[tuple[str, ...]]
    positives: list[list[str]]  # per context: gold responses first, then teacher replies
    teacher_scores: list[list[float] | None]  # aligned with positives; None when not scored
    responses: list[str]  # the indexed response set: row i = id i
    sources: list[str]  # "corpus" | "teacher" per response
    stats: dict[str, int]


def build_retrieval_data(
    train: Sequence[DialogueExample],
    augmented: Mapping[int, Mapping[str, Any]] | None,
    response_filter: ResponseFilter,
    *,
    score: str = "ll",
) -> RetrievalData:
    """D^G = D + teacher replies as extra positives; R^G = R + teacher replies, deduplicated and
    filtered (teacher replies the filter drops are not used as positives either)."""
    assert score in ("ll", "mi"), f"teacher score must be 'll' or 'mi', got {score!r}"
    groups = group_by_context(train)
    by_context = {tuple(r["context"]): r for r in (augmented or {}).values()}
    corpus = list(dict.fromkeys(e.response for e in train))
    teacher_texts = [
        g["text"] for r in (augmented or {}).values() for g in r["generated"] if g["text"]
    ]
    in_corpus = set(corpus)
    candidates = corpus + [t for t in dict.fromkeys(teacher_texts) if t not in in_corpus]
    kept, counts = response_filter.apply(candidates)
    responses = [candidates[i] for i in kept]
    sources = ["corpus" if i < len(corpus) else "teacher" for i in kept]
    indexed = set(responses)  # a teacher reply that is also a corpus response is still a positive
    contexts, positives, scores = [], [], []
    n_augmented = n_teacher_pairs = 0
    for g in groups:
        rec = by_context.get(g.context)
        texts = list(g.responses)
        row_scores: list[float] | None = None
        if rec is not None:
            n_augmented += 1
            scored = {x["text"]: float(x[score]) for x in [*rec["gold"], *rec["generated"]]}
            extra = [x["text"] for x in rec["generated"] if x["text"] in indexed]
            texts = list(dict.fromkeys([*texts, *extra]))
            n_teacher_pairs += len(texts) - len(g.responses)
            if all(t in scored for t in texts):
                row_scores = [scored[t] for t in texts]
        contexts.append(g.context)
        positives.append(texts)
        scores.append(row_scores)
    stats = {
        "contexts": len(contexts),
        "augmented_contexts": n_augmented,
        "pairs": sum(map(len, positives)),
        "teacher_pairs": n_teacher_pairs,
        "responses": len(responses),
        "responses_corpus": sources.count("corpus"),
        "responses_teacher": sources.count("teacher"),
        **{f"responses_{k}": v for k, v in counts.items()},
    }
    logger.info("retrieval data: %s", stats)
    return RetrievalData(contexts, positives, scores, responses, sources, stats)


# --- 4. losses -------------------------------------------------------------------------------


def contrastive_cross_entropy(scores: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """Eq. 2, averaged over the positive pairs: -log e^{s_p} / (e^{s_p} + sum_{n in R^-} e^{s_n}).

    ``scores`` (B, M) are R(c_b, r_j); ``positive``/``negative`` (B, M) are disjoint boolean masks.
    Each positive competes with the row's negatives only, never with the row's other positives.
    """
    neg = scores.masked_fill(~negative, float("-inf")).logsumexp(dim=1, keepdim=True)  # (B, 1)
    log_p = scores - torch.logaddexp(scores, neg)  # (B, M)
    return -log_p[positive].mean()


def distillation_cross_entropy(
    scores: Tensor, teacher: Tensor, positive: Tensor, negative: Tensor, temperature: float = 1.0
) -> Tensor:
    """Eq. 4, averaged over the rows (contexts) that have teacher scores for all their positives.

    P_G = softmax(G/T) over the row's positives R_i (random and in-batch negatives get teacher
    probability 0), P_R = softmax(R/T) over R_i + R^-; loss = -sum_{r in R_i} P_G log P_R.
    ``teacher`` (B, M) holds G(c_b, r_j) on positive entries (NaN elsewhere or when unknown).
    """
    rows = positive.any(dim=1) & ~(teacher.isnan() & positive).any(dim=1)
    if not bool(rows.any()):
        return scores.new_zeros(())
    s, t, pos, neg = scores[rows], teacher[rows], positive[rows], negative[rows]
    log_p_student = (s / temperature).masked_fill(~(pos | neg), float("-inf")).log_softmax(dim=1)
    p_teacher = (t.nan_to_num(0.0) / temperature).masked_fill(~pos, float("-inf")).softmax(dim=1)
    return -(p_teacher * log_p_student.masked_fill(~pos, 0.0)).sum(dim=1).mean()


class RetrievalCrossEntropyLoss(nn.Module):
    """Bi-encoder cross-entropy over the gold response and the negatives (G2R eq. 2)."""

    def forward(self, scores: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return contrastive_cross_entropy(scores, positive, negative)


class G2RDistillationLoss(nn.Module):
    """Model-level G2R: alpha * L_CE (eq. 2) + (1 - alpha) * L_KD (eq. 4), i.e. eq. 5.

    With ``alpha = 1`` this is the data-level (and plain bi-encoder) objective and L_KD is skipped.
    """

    def __init__(self, alpha: float = 0.9, temperature: float = 1.0) -> None:
        super().__init__()
        assert 0.0 <= alpha <= 1.0 and temperature > 0, "need 0 <= alpha <= 1 and T > 0"
        self.alpha, self.temperature = alpha, temperature

    def forward(
        self, scores: Tensor, positive: Tensor, negative: Tensor, teacher: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        ce = contrastive_cross_entropy(scores, positive, negative)
        if self.alpha == 1.0:
            return ce, {"ce": ce.item()}
        kd = distillation_cross_entropy(scores, teacher, positive, negative, self.temperature)
        logs = {"ce": ce.item()}
        if (positive & ~teacher.isnan()).any():  # else no row had teacher scores: kd is 0
            logs["kd"] = kd.item()
        return self.alpha * ce + (1 - self.alpha) * kd, logs


# --- 5. Hits@k/K ------------------------------------------------------------------------------


def hits_at_k(scores: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Hits@k/K for candidate scores (N, K) whose column 0 is the gold response.

    The gold's rank is the number of distractors scoring at least as high (ties count against it).
    """
    rank = (scores[:, 1:] >= scores[:, :1]).sum(dim=1)  # (N,)
    return {f"hits@{k}": (rank < k).float().mean().item() for k in ks}


def hits_candidates(golds: Sequence[str], pool: Sequence[str], k: int, seed: int) -> np.ndarray:
    """(N, k) indices into ``pool``: the gold first, then k - 1 distinct random other responses."""
    position = {text: i for i, text in enumerate(pool)}
    k = min(k, len(pool))
    rng = np.random.default_rng(seed)
    out = np.empty((len(golds), k), dtype=np.int64)
    for row, gold in enumerate(golds):
        g = position[gold]
        others = rng.choice(len(pool) - 1, k - 1, replace=False)
        out[row, 0] = g
        out[row, 1:] = others + (others >= g)  # skip the gold's own index
    return out


class HitsEvaluator:
    """Validation Hits@1/K and Hits@5/K (K = 100: gold + 99 random responses of the split).

    Returns ``val_loss = -Hits@1/K`` so the trainer's early stopping maximises Hits@1/K.
    """

    def __init__(
        self,
        examples: Sequence[DialogueExample],
        tokenizer: DialogueTokenizer,
        inputs: InputConfig,
        *,
        k: int = 100,
        max_examples: int = 0,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        pool = list(dict.fromkeys(e.response for e in examples))
        chosen = list(examples[:max_examples] if max_examples else examples)
        cand = hits_candidates([e.response for e in chosen], pool, k, seed)
        used = np.unique(cand)
        self.candidates = torch.from_numpy(np.searchsorted(used, cand))  # into self.responses
        self.responses = [pool[i] for i in used.tolist()]
        contexts = [list(e.context)[-inputs.max_context_turns :] for e in chosen]
        self.context_ids = tokenizer.encode_contexts(contexts, inputs.max_source_len)
        self.tokenizer, self.inputs, self.batch_size = tokenizer, inputs, batch_size
        self.k = cand.shape[1]

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        assert isinstance(model, BiEncoder)
        device = next(model.parameters()).device
        resp = torch.from_numpy(
            np.concatenate(
                list(
                    embed_responses(
                        model,
                        self.tokenizer,
                        self.responses,
                        self.inputs,
                        batch_size=self.batch_size,
                    )
                )
            )
        )
        ctx = torch.cat(
            [
                model.encode_contexts(
                    self.tokenizer.pad(self.context_ids[r.start : r.stop], device)
                )
                .float()
                .cpu()
                for r in _chunks(len(self.context_ids), self.batch_size)
            ]
        )
        scores = (ctx[:, None, :] * resp[self.candidates]).sum(dim=-1)  # (N, K)
        hits = hits_at_k(scores)
        return {"val_loss": -hits["hits@1"], **hits, "hits_k": float(self.k)}


# --- 6. the retriever training job ----------------------------------------------------------------


@dataclass
class RetrievalBatch:
    """One update: B contexts, M distinct candidate responses, and per-(context, response) roles."""

    context_ids: Tensor  # (B, S)
    response_ids: Tensor  # (M, T)
    positive: Tensor  # (B, M) bool: sampled positives of each context
    negative: Tensor  # (B, M) bool: in-batch and random responses that are no positive of it
    teacher: Tensor  # (B, M) float: G(c, r) on positives, NaN elsewhere


class RetrievalTrainSet:
    """D^G tokenised once; batches of distinct contexts with their positives and shared negatives."""

    def __init__(
        self,
        data: RetrievalData,
        tokenizer: DialogueTokenizer,
        inputs: InputConfig,
        *,
        positives_per_context: int,
        random_negatives: int,
        seed: int = 0,
    ) -> None:
        # Text ids: the response set first (what random negatives are drawn from), then any
        # positive that is not in it; equal texts share an id, so they never act as negatives.
        ids: dict[str, int] = {t: i for i, t in enumerate(data.responses)}
        for texts in data.positives:
            for t in texts:
                ids.setdefault(t, len(ids))
        self.response_ids = tokenizer.encode_responses(list(ids), inputs.max_target_len)
        self.positives = [[ids[t] for t in texts] for texts in data.positives]
        self.scores = data.teacher_scores
        self.context_ids = tokenizer.encode_contexts(
            [list(c)[-inputs.max_context_turns :] for c in data.contexts], inputs.max_source_len
        )
        self.n_response_set = len(data.responses)
        self.tokenizer = tokenizer
        self.positives_per_context = positives_per_context
        self.random_negatives = random_negatives
        self.seed = seed

    def __len__(self) -> int:
        return len(self.context_ids)

    def context_lengths(self) -> list[int]:
        return [len(c) for c in self.context_ids]

    def collate(self, indices: Sequence[int], device: torch.device | str = "cpu") -> RetrievalBatch:
        # A pure function of the indices, so a resumed run sees the same negatives.
        key = zlib.crc32(np.asarray(indices, dtype=np.int64).tobytes())
        rng = np.random.default_rng([self.seed, key])
        sampled: list[list[tuple[int, float]]] = []
        for i in indices:
            pos, sc = self.positives[i], self.scores[i]
            keep = list(range(len(pos)))
            if len(keep) > self.positives_per_context:  # the first (gold) always stays
                rest = rng.choice(len(pos) - 1, self.positives_per_context - 1, replace=False)
                keep = [0, *sorted(int(j) + 1 for j in rest)]
            sampled.append([(pos[j], sc[j] if sc is not None else math.nan) for j in keep])
        n_neg = min(self.random_negatives, self.n_response_set)
        negatives = rng.choice(self.n_response_set, n_neg, replace=False).tolist()
        columns = list(dict.fromkeys([p for row in sampled for p, _ in row] + negatives))
        col = {r: j for j, r in enumerate(columns)}
        b, m = len(indices), len(columns)
        positive = torch.zeros(b, m, dtype=torch.bool)
        negative = torch.ones(b, m, dtype=torch.bool)
        teacher = torch.full((b, m), math.nan)
        for row, (i, pairs) in enumerate(zip(indices, sampled, strict=True)):
            for p in self.positives[i]:  # every positive of the context, sampled or not
                if p in col:
                    negative[row, col[p]] = False
            for p, s in pairs:
                positive[row, col[p]] = True
                teacher[row, col[p]] = s
        device = torch.device(device)
        return RetrievalBatch(
            context_ids=self.tokenizer.pad([self.context_ids[i] for i in indices], device),
            response_ids=self.tokenizer.pad(
                [self.response_ids[r] or [self.tokenizer.unk_id] for r in columns], device
            ),
            positive=positive.to(device),
            negative=negative.to(device),
            teacher=teacher.to(device),
        )


class RetrievalObjective:
    """Trainer objective: embed the batch in one forward, score by dot product, apply eq. 2 / eq. 5."""

    def __init__(self, loss: G2RDistillationLoss) -> None:
        self.loss = loss

    def __call__(self, model: nn.Module, batch: RetrievalBatch) -> tuple[Tensor, dict[str, float]]:
        ctx, resp = model(batch.context_ids, batch.response_ids)
        scores = BiEncoder.score(ctx.float(), resp.float())  # (B, M)
        return self.loss(scores, batch.positive, batch.negative, batch.teacher)


def index_recall(
    index: ResponseIndex, database: np.ndarray, queries: np.ndarray, k: int = 1
) -> float:
    """Recall@k of the approximate index against exact inner-product search (FlatIP)."""
    _, approx = index.search(queries, k)
    _, exact = exact_search(database, queries, k)
    hits = [len(set(a) & set(e)) for a, e in zip(approx.tolist(), exact.tolist(), strict=True)]
    return float(np.sum(hits) / exact.size)


def _embed_contexts(
    model: BiEncoder,
    tokenizer: DialogueTokenizer,
    contexts: Sequence[Sequence[str]],
    inputs: InputConfig,
) -> np.ndarray:
    ids = tokenizer.encode_contexts(
        [list(c)[-inputs.max_context_turns :] for c in contexts], inputs.max_source_len
    )
    with torch.no_grad():
        out = [
            model.encode_contexts(tokenizer.pad(ids[r.start : r.stop])).float()
            for r in _chunks(len(ids), 256)
        ]
    return torch.cat(out).numpy() if out else np.zeros((0, model.cfg.embed_dim), np.float32)


def index_and_save(
    model: BiEncoder,
    tokenizer: DialogueTokenizer,
    inputs: InputConfig,
    texts: Sequence[str],
    sources: Sequence[str],
    index_config: IndexConfig,
    *,
    out_dir: Path,
    name: str,
    training: Mapping[str, Any],
    metrics: Mapping[str, Any],
    recall_contexts: Sequence[Sequence[str]] = (),
    progress: bool = True,
) -> Manifest:
    """Embed and index the response set, measure the index's recall@1 against exact search on
    ``recall_contexts``, and write the retriever bundle."""
    model = model.cpu().eval()
    index = build_response_index(model, tokenizer, texts, inputs, index_config, progress=progress)
    metrics = dict(metrics)
    if recall_contexts:
        database = index.vectors()
        queries = _embed_contexts(model, tokenizer, recall_contexts, inputs)
        metrics["index_recall@1"] = index_recall(index, database, queries, k=1)
    responder = RetrievalResponder(model, tokenizer, inputs, index, texts, sources)
    return responder.save(out_dir, name=name, training=training, metrics=metrics)


def train_retriever(
    *,
    method: Method,
    preset: RetrieverPreset,
    tokenizer: DialogueTokenizer,
    train_examples: Sequence[DialogueExample],
    val_examples: Sequence[DialogueExample],
    out_dir: Path,
    name: str,
    run_dir: Path,
    dist_ctx: DistContext,
    data_desc: str,
    augmentation_dir: Path | None = None,
    init_from: Path | None = None,
    blocklist: Path | None = None,
    teacher_score: str | None = None,
    resume: bool = True,
    seed: int = 0,
) -> Manifest | None:
    """Train a bi-encoder (``biencoder`` on D, ``g2r-d`` on D^G, ``g2r-dm`` on D^G with eq. 5),
    index its response set and write the retriever bundle; returns None on non-main ranks."""
    assert method in METHODS, f"unknown method {method!r}; choose one of {METHODS}"
    score = teacher_score or preset.teacher_score
    augmented = None
    teacher_name = None
    if method != "biencoder":
        if augmentation_dir is None:
            raise ValueError(f"method {method} needs the augmentation shards (augmentation_dir)")
        header, augmented = read_shards(augmentation_dir)
        if header is None or not augmented:
            raise FileNotFoundError(f"no G2R augmentation shards in {augmentation_dir}")
        teacher_name = header["teacher"]
    blocked = load_blocklist(blocklist)
    response_filter = ResponseFilter(
        preset.response_min_tokens, preset.response_max_tokens, tuple(blocked)
    )
    data = build_retrieval_data(train_examples, augmented, response_filter, score=score)
    trainset = RetrievalTrainSet(
        data,
        tokenizer,
        preset.inputs,
        positives_per_context=preset.positives_per_context,
        random_negatives=preset.random_negatives,
        seed=seed,
    )
    torch.manual_seed(seed)
    model = BiEncoder(replace(preset.model, vocab_size=tokenizer.vocab_size))
    warm = None
    if init_from is not None:
        state = load_state_dict(init_from, verify_bundle(init_from))
        model.init_from_generator(state)
        warm = str(init_from)
        logger.info("bi-encoder warm-started from the generator %s", init_from)
    cfg = replace(preset.train, seed=seed)
    lengths = trainset.context_lengths()
    alpha = preset.alpha if method == "g2r-dm" else 1.0
    evaluator = HitsEvaluator(
        val_examples,
        tokenizer,
        preset.inputs,
        k=preset.hits_k,
        max_examples=preset.val_examples,
        seed=seed,
    )
    logger.info(
        "training %s (%s): %d contexts, %d pairs, %d responses, %.2fM parameters",
        name,
        method,
        len(trainset),
        data.stats["pairs"],
        len(data.responses),
        model.num_parameters() / 1e6,
    )
    trainer = Trainer(
        model,
        RetrievalObjective(G2RDistillationLoss(alpha, preset.temperature)),
        cfg,
        run_dir=run_dir,
        make_epoch=lambda epoch: bucketed_batches(
            lengths, cfg.batch_size, seed=cfg.seed, epoch=epoch
        ),
        collate=lambda idx: trainset.collate(idx, dist_ctx.device),
        evaluate=evaluator,
        dist_ctx=dist_ctx,
    )
    result = trainer.fit(resume=resume)
    trainer.load_best()
    if not dist_ctx.is_main:
        return None
    st = result.state
    best = next((h for h in st.history if h["step"] == st.best_step), {})
    training = {
        "data": data_desc,
        "preset": preset.name,
        "method": method,
        "teacher": teacher_name,
        "teacher_score": score if method == "g2r-dm" else None,
        "alpha": alpha,
        "temperature": preset.temperature,
        "warm_start": warm,
        "steps": st.step,
        "best_step": st.best_step,
        "seed": seed,
        "world_size": dist_ctx.world_size,
        "stop_reason": st.stop_reason,
        "wall_time_s": round(st.elapsed_s, 1),
        "blocklist": str(blocklist) if blocklist else None,
        "response_min_tokens": preset.response_min_tokens,
        "response_max_tokens": preset.response_max_tokens,
        "counts": data.stats,
    }
    metrics: dict[str, Any] = {k: best[k] for k in ("hits@1", "hits@5", "hits_k") if k in best}
    return index_and_save(
        model,
        tokenizer,
        preset.inputs,
        data.responses,
        data.sources,
        preset.index,
        out_dir=out_dir,
        name=name,
        training=training,
        metrics=metrics,
        recall_contexts=[e.context for e in val_examples[:1000]],
        progress=cfg.progress,
    )


def warm_start_matches(cfg: BiEncoderConfig, bundle_dir: Path, vocab_size: int) -> bool:
    """True when ``bundle_dir`` is a generator whose encoder can initialise this bi-encoder."""
    manifest = read_manifest(bundle_dir)
    if manifest.kind != "generator":
        return False
    g = manifest.model_config["seq2seq"]
    return (g["vocab_size"], g["d_model"], g["n_heads"], g["d_ff"]) == (
        vocab_size,
        cfg.d_model,
        cfg.n_heads,
        cfg.d_ff,
    ) and g["n_encoder_layers"] >= cfg.n_layers


def build_retriever(
    *,
    method: Method,
    preset: RetrieverPreset,
    splits: DialogueSplits,
    tokenizer: DialogueTokenizer,
    out_dir: Path,
    name: str,
    run_dir: Path,
    dist_ctx: DistContext,
    data_desc: str,
    augmentation_dir: Path,
    teacher: Path | None = None,
    init_from: Path | None = None,
    blocklist: Path | None = DEFAULT_BLOCKLIST,
    teacher_score: str | None = None,
    resume: bool = True,
    seed: int = 0,
) -> Manifest | None:
    """The whole retrieval stage: augmentation shards (G2R methods; resumable, sharded by rank),
    bi-encoder training, index and bundle. Returns the manifest on the main rank, else None.

    ``teacher`` may be omitted when ``augmentation_dir`` already holds complete shards.
    """
    if method != "biencoder":
        if not resume and dist_ctx.is_main:
            for old in Path(augmentation_dir).glob("shard-*-of-*.jsonl"):
                old.unlink()
        barrier(dist_ctx)
        if teacher is not None:
            cfg = preset.augment
            groups = select_contexts(group_by_context(splits.train), cfg.max_contexts, cfg.seed)
            augment_contexts(
                load_teacher(teacher, dist_ctx.device),
                groups,
                augmentation_dir,
                cfg,
                rank=dist_ctx.rank,
                world_size=dist_ctx.world_size,
                progress=preset.train.progress,
            )
            barrier(dist_ctx)
        done, expected = augmentation_status(augmentation_dir)
        if expected == 0 or done < expected:
            raise FileNotFoundError(
                f"G2R augmentation in {augmentation_dir} has {done} of {expected} contexts; "
                "give a teacher to (re)run it"
            )
    if blocklist is not None and not Path(blocklist).is_file():
        if blocklist != DEFAULT_BLOCKLIST:
            raise FileNotFoundError(f"blocklist {blocklist} not found")
        logger.warning(
            "default blocklist %s not found: the response set is not blocklisted", blocklist
        )
        blocklist = None
    return train_retriever(
        method=method,
        preset=preset,
        tokenizer=tokenizer,
        train_examples=splits.train,
        val_examples=splits.validation,
        out_dir=out_dir,
        name=name,
        run_dir=run_dir,
        dist_ctx=dist_ctx,
        data_desc=data_desc,
        augmentation_dir=augmentation_dir if method != "biencoder" else None,
        init_from=init_from,
        blocklist=blocklist,
        teacher_score=teacher_score,
        resume=resume,
        seed=seed,
    )


def rebuild_index(
    bundle_dir: Path,
    *,
    out_dir: Path | None = None,
    ef_search: int | None = None,
    progress: bool = True,
    recall_queries: int = 1000,
) -> Manifest:
    """Re-embed a retriever bundle's responses.jsonl and write a fresh index.faiss (atomically).

    Every file but ``index.faiss`` must verify, so a missing, corrupt or mismatched index can be
    repaired; ``ef_search`` changes the bundle's search setting.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    files = {f: d for f, d in manifest.files.items() if f != INDEX_FILE}
    for file_name, expected in files.items():
        actual = hashlib.sha256((bundle_dir / file_name).read_bytes()).hexdigest()
        if actual != expected:
            raise ValueError(f"bundle {bundle_dir}: {file_name} checksum mismatch; cannot rebuild")
    mc = manifest.model_config
    model = BiEncoder(BiEncoderConfig.from_dict(mc["biencoder"]))
    model.load_state_dict(load_state_dict(bundle_dir, manifest))
    tokenizer = DialogueTokenizer.from_file(bundle_dir / "tokenizer.json")
    texts, sources = read_responses(bundle_dir)
    index_config = IndexConfig(**mc.get("index", {}))
    if ef_search is not None:
        index_config = replace(index_config, ef_search=ef_search)
    rng = np.random.default_rng(0)
    picks: list[int] = (
        rng.choice(len(texts), min(recall_queries, len(texts)), replace=False).tolist()
        if texts
        else []
    )
    return index_and_save(
        model,
        tokenizer,
        InputConfig(**mc["inputs"]),
        texts,
        sources,
        index_config,
        out_dir=Path(out_dir or bundle_dir),
        name=manifest.name,
        training=manifest.training,
        metrics=manifest.metrics,
        recall_contexts=[[texts[i]] for i in picks],  # responses as stand-in queries
        progress=progress,
    )

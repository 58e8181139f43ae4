"""Reply safety shared by training and serving: the DiaSafety classifier (the blocklist and the
risk phrases, whole-token phrase lists, are models/blocklist.py; re-exported here).

* :class:`SafetyClassifier` scores a (context, response) pair with P(unsafe), trained on DiaSafety
  (Sun et al., Findings of ACL 2022), where the label depends on the context: "you're right ." is
  safe after a harmless remark and unsafe after a toxic one. Two architectures, read bottom-up:

  - ``cross-encoder``: ``context <sep> response`` through pre-LN Transformer encoder layers (the
    generator's own :class:`~models.seq2seq.EncoderLayer`, so a trained generator's encoder can warm
    start it), a segment embedding for the response side, mean pooling, a linear head;
  - ``bag``: fastText-style (Joulin et al., EACL 2017): mean embeddings of the context's and the
    response's BPE pieces and hashed piece bigrams, combined as ``[c, r, c * r]`` by a small MLP.

* The classifier judges only what it can read (:func:`readable_turn`): a context turn whose
  content words are mostly outside the words it was trained on (``words.txt``; another language
  or script) or that has no words at all (emoji, punctuation) is judged as an empty context, so
  the verdict rests on the reply alone; links (URLs, e-mail addresses, domains) are dropped from
  the context first. Training applies the same rule and adds reply-only examples, so the model
  knows what an empty context means (training/methods/safety_classifier/).

A classifier is stored as a bundle of kind ``classifier`` (models/bundle.py): ``model_config``
holds ``classifier`` (:class:`SafetyClassifierConfig`), ``threshold`` (the decision threshold
on P(unsafe)) and, with ``words.txt``, ``min_known_share`` (the readability rule); an optional
``blocklist.txt`` travels with it so the service is self-contained. A bundle without
``words.txt`` (written before the readability rule) reads every context as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from models.blocklist import (
    BLOCKLIST_FILE,
    DEFAULT_RISK_PHRASES,
    Blocklist,
    RiskDetector,
    load_blocklist,
)
from models.bundle import MANIFEST_FILE, Manifest, bundle_error
from models.responder import Responder, load_tokenizer, load_weights
from models.seq2seq import (
    TokenInput,
    copy_generator_encoder,
    encoder_stack,
    init_weights,
)
from models.text import normalize_text
from models.tokenizer import DialogueTokenizer

__all__ = [
    "BLOCKLIST_FILE",
    "DEFAULT_RISK_PHRASES",
    "WORDS_FILE",
    "BagOfNgramsClassifier",
    "Blocklist",
    "CrossEncoderClassifier",
    "RiskDetector",
    "SafetyClassifier",
    "SafetyClassifierConfig",
    "is_link",
    "known_words",
    "load_blocklist",
    "readable_turn",
]

WORDS_FILE = "words.txt"  # the classifier's known words, one per line
MIN_KNOWN_SHARE = 0.5  # a turn is readable when at least this share of its content words is known
Architecture = Literal["cross-encoder", "bag"]
ARCHITECTURES: tuple[Architecture, ...] = ("cross-encoder", "bag")


# --- what the classifier can read -------------------------------------------------------------

# A whole normalised token that is a link: models/text.py keeps URLs, e-mail addresses and
# name.com-style domains as single tokens.
_LINK_RE = re.compile(
    r"(?:https?://|www\.)\S*"
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
    r"|[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|edu|gov)(?:[/?#]\S*)?"
)
_NUMBER_RE = re.compile(r"\d+(?:[.,:]\d+)*(?:st|nd|rd|th|s)?")


def is_link(token: str) -> bool:
    """Whether a normalised token is a URL, an e-mail address or a ``name.com``-style domain."""
    return _LINK_RE.fullmatch(token) is not None


def _is_content(token: str) -> bool:
    """A token with a letter or digit in it (not punctuation, emoji or other symbols)."""
    return any(ch.isalnum() for ch in token)


def known_words(texts: Iterable[str], min_count: int = 2) -> list[str]:
    """Content tokens (not links) of normalised ``texts`` seen at least ``min_count`` times,
    sorted: the words a classifier trained on these texts can read."""
    counts: dict[str, int] = {}
    for text in texts:
        for token in text.split():
            if _is_content(token) and not is_link(token):
                counts[token] = counts.get(token, 0) + 1
    return sorted(w for w, n in counts.items() if n >= min_count)


def readable_turn(
    text: str, words: frozenset[str] | set[str], min_known_share: float = MIN_KNOWN_SHARE
) -> str:
    """The part of ``text`` a classifier that knows ``words`` can judge, normalised.

    Links are dropped (the classifier cannot open them). The rest is kept whole when at least
    ``min_known_share`` of its content tokens (tokens with a letter or digit) are known words or
    numbers, so misspellings inside an English turn still reach the model; otherwise the turn is
    not one the model can read (another language or script, emoji or punctuation only, nothing
    left) and the empty string is returned: the verdict then rests on the reply.
    """
    tokens = [t for t in normalize_text(text).split() if not is_link(t)]
    content = [t for t in tokens if _is_content(t)]
    if not content:
        return ""
    known = sum(t in words or _NUMBER_RE.fullmatch(t) is not None for t in content)
    if known < min_known_share * len(content):
        return ""
    return " ".join(tokens)


# --- the classifier models --------------------------------------------------------------------


@dataclass
class SafetyClassifierConfig:
    """Shape of a safety classifier; stored in bundles as ``model_config["classifier"]``."""

    architecture: Architecture = "cross-encoder"
    vocab_size: int = 8000  # set from the tokenizer
    d_model: int = 256  # hidden size (cross-encoder) or embedding size (bag)
    n_heads: int = 4  # cross-encoder only
    d_ff: int = 1024  # cross-encoder only
    n_layers: int = 2  # cross-encoder only: Transformer encoder layers
    dropout: float = 0.1
    max_len: int = 96  # pieces of "context <sep> response" kept (the most recent ones)
    bigram_buckets: int = 1 << 16  # bag only: hashed piece bigrams per side
    pad_id: int = 0
    sep_id: int = 4  # <sep> of models/tokenizer.py: where the response starts

    def __post_init__(self) -> None:
        assert self.architecture in ARCHITECTURES, f"unknown architecture {self.architecture!r}"
        assert self.d_model % self.n_heads == 0, (
            f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
        )
        assert self.max_len >= 2 and self.bigram_buckets >= 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SafetyClassifierConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown SafetyClassifierConfig fields: {sorted(unknown)}")
        return cls(**data)


def response_segments(ids: Tensor, sep_id: int) -> Tensor:
    """(B, T) long: 1 from the first ``<sep>`` on (the response side), 0 before it."""
    return ids.eq(sep_id).long().cumsum(dim=1).clamp(max=1)


class CrossEncoderClassifier(TokenInput):
    """``context <sep> response`` ids (B, T) -> unsafe logits (B,): encoder, mean pool, linear."""

    def __init__(self, cfg: SafetyClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._init_token_input(cfg.vocab_size, cfg.d_model, cfg.pad_id, cfg.max_len, cfg.dropout)
        self.segment = nn.Embedding(2, cfg.d_model)  # context / response side
        self.layers = encoder_stack(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 1)
        self.apply(init_weights)
        nn.init.zeros_(self.segment.weight)  # a warm start begins as the generator's encoder

    def forward(self, ids: Tensor) -> Tensor:
        cfg = self.cfg
        t = ids.size(1)
        assert t <= cfg.max_len, f"sequence of {t} pieces exceeds max_len={cfg.max_len}"
        keep = ids.ne(cfg.pad_id)  # (B, T)
        keep[:, 0] |= ~keep.any(dim=1)  # an all-pad row would attend to nothing (NaN)
        mask = None if bool(keep.all()) else keep[:, None, None, :]  # (B, 1, 1, T)
        x = self.token_input(ids, extra=self.segment(response_segments(ids, cfg.sep_id)))
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)  # (B, T, d)
        weights = keep.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, d)
        return self.head(pooled).squeeze(-1)  # (B,)

    @torch.no_grad()
    def init_from_generator(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Copy a same-shaped generator's embeddings, encoder layers and encoder norm; returns the
        names copied. The generator's first ``n_layers`` encoder layers are used."""
        return copy_generator_encoder(
            self, state_dict, skip=("head.", "segment."), into="classifier"
        )


class BagOfNgramsClassifier(nn.Module):
    """fastText-style: per side, the mean embedding of its pieces and hashed piece bigrams; the
    two means ``c`` and ``r`` go through an MLP over ``[c, r, c * r]`` (the product lets the
    verdict on a response depend on its context)."""

    def __init__(self, cfg: SafetyClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Feature 0 is padding; then unigrams and bigram buckets of each side.
        self.n_features = 1 + 2 * (cfg.vocab_size + cfg.bigram_buckets)
        self.embed = nn.Embedding(self.n_features, cfg.d_model, padding_idx=0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.mlp = nn.Sequential(
            nn.Linear(3 * cfg.d_model, cfg.d_model), nn.ReLU(), nn.Linear(cfg.d_model, 1)
        )
        self.apply(init_weights)

    def features(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Feature ids (B, 2T - 1) (0 = none) and their side (B, 2T - 1) for piece ids (B, T)."""
        cfg = self.cfg
        v, buckets = cfg.vocab_size, cfg.bigram_buckets
        seg = response_segments(ids, cfg.sep_id)  # (B, T)
        real = ids.ne(cfg.pad_id) & ids.ne(cfg.sep_id)
        uni = torch.where(real, 1 + ids + seg * v, torch.zeros_like(ids))
        a, b = ids[:, :-1], ids[:, 1:]
        pair = real[:, :-1] & real[:, 1:] & seg[:, :-1].eq(seg[:, 1:])
        # A fixed multiplicative hash of the id pair: deterministic across processes.
        bucket = (a * 1_000_003 + b) % buckets
        bi = torch.where(pair, 1 + 2 * v + seg[:, 1:] * buckets + bucket, torch.zeros_like(a))
        return torch.cat([uni, bi], dim=1), torch.cat([seg, seg[:, 1:]], dim=1)

    def forward(self, ids: Tensor) -> Tensor:
        feats, side = self.features(ids)  # (B, F)
        x = self.dropout(self.embed(feats))  # (B, F, d)
        present = feats.ne(0)
        means = []
        for s in (0, 1):  # context, response
            w = (present & side.eq(s)).unsqueeze(-1).to(x.dtype)  # (B, F, 1)
            means.append((x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0))  # (B, d)
        c, r = means
        return self.mlp(torch.cat([c, r, c * r], dim=-1)).squeeze(-1)  # (B,)


def build_classifier_model(cfg: SafetyClassifierConfig) -> nn.Module:
    """The module for ``cfg.architecture``."""
    if cfg.architecture == "cross-encoder":
        return CrossEncoderClassifier(cfg)
    return BagOfNgramsClassifier(cfg)


# --- the responder-facing wrapper and its bundle ----------------------------------------------


class SafetyClassifier(Responder):
    """P(unsafe | context, response) with a stored decision threshold, loadable from a bundle."""

    kind: ClassVar[str] = "classifier"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: DialogueTokenizer,
        cfg: SafetyClassifierConfig,
        *,
        threshold: float = 0.5,
        blocklist: Blocklist | None = None,
        manifest: Manifest | None = None,
        words: Iterable[str] | None = None,
        min_known_share: float = MIN_KNOWN_SHARE,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        if not 0.0 <= min_known_share <= 1.0:
            raise ValueError(f"min_known_share must lie in [0, 1], got {min_known_share}")
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.threshold = threshold
        self.blocklist = blocklist
        self.manifest = manifest
        # None: no readability rule (bundles written before it), every context is read as is.
        self.words: frozenset[str] | None = None if words is None else frozenset(words)
        self.min_known_share = min_known_share

    def readable_context(self, context: str) -> str:
        """What the model reads of a context turn: :func:`readable_turn` with this classifier's
        words ("" when it cannot read the turn), or the turn itself without a word list."""
        if self.words is None:
            return context
        return readable_turn(context, self.words, self.min_known_share)

    def encode_ids(self, contexts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """``context <sep> response`` ids of each pair, the context read by
        :meth:`readable_context`, the last ``max_len`` ids kept (training uses this too)."""
        if len(contexts) != len(responses):
            raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
        pairs = [[self.readable_context(c), r] for c, r in zip(contexts, responses, strict=True)]
        return self.tokenizer.encode_contexts(pairs, self.cfg.max_len)

    def encode(self, contexts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """Right-padded ``context <sep> response`` ids (B, T), the last ``max_len`` kept."""
        return self.tokenizer.pad(self.encode_ids(contexts, responses), self.device)

    def unsafe_probability(
        self, contexts: Sequence[str], responses: Sequence[str], *, batch_size: int = 64
    ) -> list[float]:
        """P(unsafe) of each (context, response) pair; batched, without gradients."""
        if len(contexts) != len(responses):
            raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
        # eval mode for the call, switched only when needed: a switch walks every module, twice
        # per call, and the served filter calls this for every reply
        was_training = self.model.training
        if was_training:
            self.model.eval()
        out: list[float] = []
        try:
            with torch.inference_mode():
                for start in range(0, len(contexts), batch_size):
                    ids = self.encode(
                        contexts[start : start + batch_size], responses[start : start + batch_size]
                    )
                    out.extend(torch.sigmoid(self.model(ids).float()).tolist())
        finally:
            if was_training:
                self.model.train()
        return out

    def is_unsafe(
        self, contexts: Sequence[str], responses: Sequence[str], *, threshold: float | None = None
    ) -> list[bool]:
        """P(unsafe) >= the stored threshold (or ``threshold``) for each pair."""
        cut = self.threshold if threshold is None else threshold
        return [p >= cut for p in self.unsafe_probability(contexts, responses)]

    def model_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"classifier": self.cfg.to_dict(), "threshold": self.threshold}
        if self.words is not None:
            config["min_known_share"] = self.min_known_share
        return config

    def bundle_files(self) -> dict[str, bytes | Path]:
        """Its blocklist and word list, if any."""
        extra: dict[str, bytes | Path] = {}
        if self.blocklist:
            extra[BLOCKLIST_FILE] = self.blocklist.to_text().encode()
        if self.words is not None:
            extra[WORDS_FILE] = "".join(f"{w}\n" for w in sorted(self.words)).encode()
        return extra

    @classmethod
    def from_bundle(cls, bundle_dir: Path, manifest: Manifest) -> SafetyClassifier:
        """Also checks the classifier's ``model_config``; raises BundleError naming what is wrong."""
        mc = manifest.model_config
        try:
            cfg = SafetyClassifierConfig.from_dict(mc["classifier"])
            threshold = float(mc["threshold"])
            if not 0.0 < threshold < 1.0:
                raise ValueError(f"threshold {threshold} is not in (0, 1)")
            min_known_share = float(mc.get("min_known_share", MIN_KNOWN_SHARE))
            if not 0.0 <= min_known_share <= 1.0:
                raise ValueError(f"min_known_share {min_known_share} is not in [0, 1]")
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            problem = f"{MANIFEST_FILE}: invalid classifier model_config ({exc!r})"
            raise bundle_error(bundle_dir, MANIFEST_FILE, problem) from exc
        model = build_classifier_model(cfg)
        load_weights(model, bundle_dir, manifest)
        tokenizer = load_tokenizer(bundle_dir)
        blocklist = (
            Blocklist.from_file(bundle_dir / BLOCKLIST_FILE)
            if BLOCKLIST_FILE in manifest.files
            else None
        )
        words = None
        if WORDS_FILE in manifest.files:
            words = (bundle_dir / WORDS_FILE).read_text(encoding="utf-8").split()
        return cls(
            model,
            tokenizer,
            cfg,
            threshold=threshold,
            blocklist=blocklist,
            manifest=manifest,
            words=words,
            min_known_share=min_known_share,
        )

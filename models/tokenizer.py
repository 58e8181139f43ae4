"""The dialogue tokenizer: a Hugging Face ``tokenizers`` BPE model plus the turn conventions.

Text is normalised by :func:`models.text.normalize_text` (training and serving alike), split on
whitespace by a Metaspace pre-tokenizer, and cut into BPE pieces. Special tokens have fixed ids so
models and bundles can rely on them:

=====  =========  ==================================================
id     token      use
=====  =========  ==================================================
0      ``<pad>``  padding (ignored by losses and attention)
1      ``<s>``    BOS, first decoder input
2      ``</s>``   EOS, ends a response
3      ``<unk>``  unknown piece (rare with BPE)
4      ``<sep>``  between context turns (oldest first)
=====  =========  ==================================================

A context longer than ``max_source_len`` keeps its most recent tokens (the left is cut).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor

from models.text import normalize_text

PAD, BOS, EOS, UNK, SEP = "<pad>", "<s>", "</s>", "<unk>", "<sep>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, SEP]  # ids 0..4, in this order


# A request's few turns are encoded one by one: ``encode_batch`` hands them to the tokenizers
# library's thread pool, which for a 3-turn context costs about twice the encoding itself (300
# DailyDialog test contexts, 1 core, idle: 0.15 ms per context through the pool, 0.07 one by one).
SEQUENTIAL_TEXTS = 16


class DialogueTokenizer:
    """Encodes contexts and responses to ids and decodes ids back to normalised text."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            actual = tokenizer.token_to_id(token)
            if actual != expected_id:
                raise ValueError(f"tokenizer maps {token!r} to id {actual}, expected {expected_id}")
        self._tok = tokenizer
        self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.sep_id = range(5)

    # --- construction / persistence -----------------------------------------------------------

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2
    ) -> DialogueTokenizer:
        """Learn a BPE vocabulary from (already normalised) texts."""
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIAL_TOKENS,
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_str(cls, data: str) -> DialogueTokenizer:
        return cls(Tokenizer.from_str(data))

    @classmethod
    def from_file(cls, path: Path) -> DialogueTokenizer:
        return cls(Tokenizer.from_file(str(path)))

    def to_str(self) -> str:
        return self._tok.to_str()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    # --- encoding ----------------------------------------------------------------------------

    def encode_texts(self, texts: Sequence[str], *, normalized: bool = False) -> list[list[int]]:
        """Piece ids of each text after normalisation (no special tokens); ``normalized`` says
        the texts are :func:`normalize_text`'s output already (it is idempotent: only time).

        Each distinct text is normalised and encoded once: a corpus's 3-turn contexts hold every
        utterance up to three times (the 3-turn contexts and responses of DailyDialog's train
        split: 244k texts, 70k distinct; encoding them took 10.4 s before, 6.7-7.7 s now)."""
        if not texts:
            return []
        unique = list(dict.fromkeys(texts))
        normalised = unique if normalized else [normalize_text(t) for t in unique]
        if len(normalised) <= SEQUENTIAL_TEXTS:
            ids = [self._tok.encode(t, add_special_tokens=False).ids for t in normalised]
        else:
            ids = [e.ids for e in self._tok.encode_batch(normalised, add_special_tokens=False)]
        if len(unique) == len(texts):
            return ids
        by_text = dict(zip(unique, ids, strict=True))
        return [list(by_text[t]) for t in texts]  # a list of its own per text, as before

    def encode_contexts(
        self, contexts: Sequence[Sequence[str]], max_len: int, *, normalized: bool = False
    ) -> list[list[int]]:
        """Each context's turns joined by ``<sep>``, keeping the last ``max_len`` ids
        (``normalized``: as in :meth:`encode_texts`)."""
        flat = [turn for turns in contexts for turn in turns]
        pieces = iter(self.encode_texts(flat, normalized=normalized))
        out: list[list[int]] = []
        for turns in contexts:
            ids: list[int] = []
            for i in range(len(turns)):
                if i:
                    ids.append(self.sep_id)
                ids.extend(next(pieces))
            out.append(ids[-max_len:] if ids else [self.unk_id])
        return out

    def encode_responses(self, responses: Sequence[str], max_len: int) -> list[list[int]]:
        """Response ids truncated so that, with BOS or EOS added, they fit ``max_len``."""
        return [ids[: max_len - 1] for ids in self.encode_texts(responses)]

    def pad(self, seqs: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> Tensor:
        """Right-pad id lists into a (B, T) long tensor."""
        width = max((len(s) for s in seqs), default=1) or 1
        out = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return out.to(device)

    def decoder_io(self, responses: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Teacher-forcing pair: inputs ``<s> r`` and targets ``r </s>``, both (B, T)."""
        tgt_in = self.pad([[self.bos_id, *r] for r in responses])
        tgt_out = self.pad([[*r, self.eos_id] for r in responses])
        return tgt_in, tgt_out

    # --- decoding ----------------------------------------------------------------------------

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to normalised text (special tokens dropped)."""
        return self._tok.decode(list(ids), skip_special_tokens=True).strip()

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        return [
            t.strip()
            for t in self._tok.decode_batch([list(b) for b in batch], skip_special_tokens=True)
        ]

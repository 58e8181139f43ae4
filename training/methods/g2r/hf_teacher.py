"""The G2R teacher of a local Hugging Face model (Kim et al. 2021, eqs. 3 and 6): a seq2seq or causal
LM directory, or an imported ``hf-*`` bundle; ``transformers`` is an optional extra, imported
lazily. Never the hub: the directory must hold the model."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.hf_generator import max_positions
from models.text import normalize_text
from training.methods.g2r.teachers import batch_ranges, teacher_scores

logger = logging.getLogger(__name__)


class HFTeacher:
    """A local Hugging Face seq2seq or causal LM directory as the G2R teacher (never the hub).

    A context is its turns joined by ``turn_separator``; a causal LM reads it followed by the
    separator and continues with the reply. Replies are normalised like our corpus. MI's dummy
    contexts are ".", the unknown token and the pad token (G2R appendix G).

    :meth:`from_responder` takes an imported ``hf-*`` bundle instead: its prompt (chat template
    or separator) and limits come from the bundle.
    """

    has_scores = True
    _prompt_fn: Callable[[Sequence[str]], str] | None = None
    _add_special_tokens = True
    _max_positions: int | None = None  # prompt + reply never exceed the model's positions

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
                "(pip install -e '.[hf]')"
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
        self._max_positions = max_positions(config)
        self.device = torch.device(device)
        self.name = f"hf:{model_dir.resolve().name}"
        self.turn_separator = turn_separator
        self.max_source_len = max_source_len
        self.batch_size = batch_size
        specials = [self.tokenizer.unk_token, self.tokenizer.pad_token]
        self._dummy_contexts = [["."], *([s] for s in specials if s)]

    @classmethod
    def from_responder(cls, responder: Any, *, batch_size: int = 32) -> HFTeacher:
        """A teacher over a loaded :class:`~models.hf_generator.HFGenerativeResponder`."""
        self = cls.__new__(cls)
        self.model = responder.model
        self.tokenizer = responder.tokenizer
        self.seq2seq = responder.seq2seq
        self.device = responder.device
        self.name = responder.bundle_id
        self.turn_separator = responder.prompt_config.separator
        self.max_source_len = responder.prompt_config.max_source_len
        self.batch_size = batch_size
        self._prompt_fn = responder.prompt
        self._add_special_tokens = not responder.uses_chat_template
        self._max_positions = max_positions(responder.model.config)
        specials = [self.tokenizer.unk_token, self.tokenizer.pad_token]
        self._dummy_contexts = [["."], *([s] for s in specials if s)]
        return self

    def _prompt(self, context: Sequence[str]) -> str:
        if self._prompt_fn is not None:
            return self._prompt_fn(context)
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
        source_len = self.max_source_len
        if not self.seq2seq and self._max_positions:  # room for the reply
            source_len = max(1, min(source_len, self._max_positions - max_length))
        enc = tok(
            [self._prompt(c) for c in contexts],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=source_len,
            add_special_tokens=self._add_special_tokens,
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
                add_special_tokens=self._add_special_tokens,
            ).to(self.device)
            lab = tok(
                text_target=list(responses),
                return_tensors="pt",
                padding=True,
                truncation=self._max_positions is not None,
                max_length=self._max_positions,
            ).to(self.device)
            labels = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
            logits = self.model(**enc, labels=labels).logits.float()
            mask = labels.ne(-100)
            target = labels.clamp(min=0)
        else:
            rows = []
            starts = []
            for p, r in zip(prompts, responses, strict=True):
                p_ids = tok(p, add_special_tokens=self._add_special_tokens)["input_ids"]
                r_ids = [*tok(r, add_special_tokens=False)["input_ids"], eos]
                keep = self.max_source_len
                if self._max_positions:  # the prompt yields its oldest tokens first
                    r_ids = r_ids[: self._max_positions - 1]
                    keep = min(keep, self._max_positions - len(r_ids))
                p_ids = p_ids[-keep:] or [eos]
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
        for rows in batch_ranges(len(responses), self.batch_size):
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

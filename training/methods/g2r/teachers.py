"""G2R teachers (Kim et al., Findings of EMNLP 2021): sample replies and score pairs.

:class:`Teacher` samples replies and scores (context, response) pairs with eq. 3 (LL / |r|) and
eq. 6 (MI / |r|); :class:`BundleTeacher` wraps our generator bundles, :class:`HFTeacher` a local
Hugging Face seq2seq or causal LM, as a directory or an imported ``hf-*`` bundle (``transformers``
is an optional extra, imported lazily), and :class:`RemoteTeacher` an OpenAI-compatible endpoint
(a ``remote-openai`` bundle). :func:`load_teacher` takes any of them.

A teacher that cannot give log-probabilities (``has_scores`` False: an endpoint without
``logprobs``) still writes data-level replies; its shards then carry no scores, so only G2R-D
(``--method g2r-d``) can use them, and the teacher filter's score floor is off (the job says so).
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from models.bundle import HF_ARCHITECTURES, read_manifest
from models.decoding import DecodingConfig, sequence_log_likelihood
from models.generator import GenerativeResponder
from models.hf_generator import max_positions
from models.text import normalize_text

logger = logging.getLogger(__name__)


class Teacher(Protocol):
    """A generative model that samples replies and scores (context, response) pairs."""

    name: str  # provenance recorded in shards and manifests
    # False: score() is unavailable (see the module docstring); absent means True
    has_scores: bool

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


def batch_ranges(n: int, size: int) -> list[range]:
    """``range(n)`` cut into consecutive ranges of at most ``size``."""
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


class BundleTeacher:
    """One of our generator bundles as the G2R teacher.

    MI's dummy contexts are ".", ``<unk>`` and ``<sep>``: the paper's ``<PAD>`` cannot be used
    because our encoder masks padding out of attention, so the separator stands in for it.
    """

    has_scores = True

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
        for rows in batch_ranges(len(responses), self.batch_size):
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


UNSCORED_LOG_PROB = -100.0


class RemoteTeacher:
    """An OpenAI-compatible endpoint (a ``remote-openai`` bundle) as the G2R teacher.

    Replies: ``m`` chat completions per context (``n=m``, seeded), the contexts of a batch sent
    concurrently, at most ``max_concurrency`` at a time (the bundle's, unless given). n-gram
    blocking has no API equivalent and is not applied. Scores: only from an endpoint that serves
    log-probabilities of given text (``/completions`` with ``echo``, as vLLM does); the prompt is
    then the turns joined by ``turn_separator`` plus the separator (the endpoint's chat template
    is not known here), the reply's end is not scored, and MI's dummy contexts are "." and the
    empty context. Without them ``has_scores`` is False (see the module docstring).
    """

    def __init__(
        self,
        generator: Any,
        *,
        max_concurrency: int | None = None,
        turn_separator: str = "\n",
        probe_scores: bool = True,
    ) -> None:
        self.generator = generator
        self.name = generator.bundle_id
        self.max_concurrency = max_concurrency or generator.config.max_concurrency
        self.turn_separator = turn_separator
        self._dummy_contexts: list[list[str]] = [["."], [""]]
        self.has_scores = probe_scores and self._probe_scores()
        if not self.has_scores:
            logger.warning(
                "teacher %s: the endpoint returns no log-probabilities of given text "
                "(/completions with echo and logprobs), so the augmentation holds replies only: "
                "G2R-D (--method g2r-d) can use it, G2R-DM cannot, and the teacher filter's "
                "score floor is off",
                self.name,
            )

    @classmethod
    def load(cls, bundle_dir: Path, *, max_concurrency: int | None = None) -> RemoteTeacher:
        from models.remote_generator import RemoteGenerator

        return cls(RemoteGenerator.load(bundle_dir), max_concurrency=max_concurrency)

    def _probe_scores(self) -> bool:
        from models.remote_generator import RemoteBadResponse

        try:
            probe = self.generator.response_log_likelihood(
                self._prompt(["hello , how are you ?"]), "i am fine , thanks ."
            )
            return probe is not None
        except RemoteBadResponse:  # a 4xx (no /completions, no echo): no scores
            return False

    def _map(self, fn: Callable[[int], Any], n: int) -> list[Any]:
        with ThreadPoolExecutor(min(self.max_concurrency, max(n, 1))) as pool:
            return list(pool.map(fn, range(n)))

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
            min_length=min_length,
            max_length=max_length,
            num_return_sequences=m,
        )
        rows = self._map(
            lambda i: self.generator.complete(contexts[i], decoding, n=m, seed=seed + i * m),
            len(contexts),
        )
        return [[normalize_text(r.text) for r in row] for row in rows]

    def _prompt(self, context: Sequence[str]) -> str:
        return self.turn_separator.join(context) + self.turn_separator

    def score(
        self, contexts: Sequence[Sequence[str]], responses: Sequence[str]
    ) -> tuple[list[float], list[float]]:
        if not self.has_scores:
            raise RuntimeError(f"teacher {self.name} gives no log-probabilities")
        assert len(contexts) == len(responses)
        prompts = [self._prompt(c) for c in contexts]
        dummies = [self._prompt(d) for d in self._dummy_contexts]
        jobs = [(p, r) for p, r in zip(prompts, responses, strict=True)]
        jobs += [(d, r) for d in dummies for r in responses]

        def one(i: int) -> tuple[float, int]:
            got = self.generator.response_log_likelihood(*jobs[i])
            # Nothing to score (an empty reply): the floor of a very unlikely token.
            return got if got is not None else (UNSCORED_LOG_PROB, 1)

        results = self._map(one, len(jobs))
        n = len(responses)
        ll = torch.tensor([results[i][0] for i in range(n)], dtype=torch.float64)
        count = torch.tensor([results[i][1] for i in range(n)])
        dummy_ll = torch.tensor(
            [[results[n * (1 + d) + i][0] for i in range(n)] for d in range(len(dummies))],
            dtype=torch.float64,
        )
        g_ll, g_mi = teacher_scores(ll, count, dummy_ll)
        return g_ll.tolist(), g_mi.tolist()


def load_teacher(
    path: Path, device: str | torch.device = "cpu", *, max_concurrency: int | None = None
) -> Teacher:
    """Any generator bundle (manifest.json: ours, an imported ``hf-*`` model or a
    ``remote-openai`` endpoint) or a local HF model directory (config.json).
    ``max_concurrency`` bounds a remote teacher's requests in flight (default: the bundle's)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        architecture = read_manifest(path).architecture
        if architecture is None:
            return BundleTeacher.load(path, device)
        if architecture in HF_ARCHITECTURES:
            from models.hf_generator import HFGenerativeResponder

            return HFTeacher.from_responder(HFGenerativeResponder.load(path, device))
        return RemoteTeacher.load(path, max_concurrency=max_concurrency)
    if (path / "config.json").is_file():
        return HFTeacher(path, device)
    raise FileNotFoundError(
        f"teacher {path} is neither a generator bundle (manifest.json) nor a Hugging Face "
        "model directory (config.json)"
    )

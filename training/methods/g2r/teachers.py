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

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from models.bundle import HF_ARCHITECTURES, read_manifest
from models.decoding import DecodingConfig, sequence_log_likelihood
from models.device import native_bf16
from models.generator import GenerativeResponder
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

    def nbest(
        self, contexts: Sequence[Sequence[str]], n: int, *, max_length: int = 32
    ) -> list[list[str]]:
        """The ``n`` best of a beam search ``n`` wide per context (the bundle's own decoding
        settings otherwise, as the service's generate-then-rank asks for), normalised; the
        candidates of a ranked augmentation (``AugmentConfig.rank_pool``)."""
        own = self.responder.decoding
        decoding = own.n_best(n).with_overrides(max_length=min(max_length, own.max_length))
        texts = [normalize_text(t) for t in self.responder.respond(contexts, decoding)]
        return [texts[i * n : (i + 1) * n] for i in range(len(contexts))]

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
        # Matmuls in bf16 where the device has it natively, as training runs: 1.5x faster on this
        # CPU for the 3,009 pairs of small's augmentation, per-token LL within 0.012 of fp32,
        # Spearman 0.99998 (LL) and 0.9995 (MI) (reports/build_small.md, session 14); the
        # log-softmax of sequence_log_likelihood stays in fp32.
        with torch.autocast(r.device.type, dtype=torch.bfloat16, enabled=native_bf16(r.device)):
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
            from training.methods.g2r.hf_teacher import HFTeacher

            return HFTeacher.from_responder(HFGenerativeResponder.load(path, device))
        from training.methods.g2r.remote_teacher import RemoteTeacher

        return RemoteTeacher.load(path, max_concurrency=max_concurrency)
    if (path / "config.json").is_file():
        from training.methods.g2r.hf_teacher import HFTeacher

        return HFTeacher(path, device)
    raise FileNotFoundError(
        f"teacher {path} is neither a generator bundle (manifest.json) nor a Hugging Face "
        "model directory (config.json)"
    )

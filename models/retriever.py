"""A retrieval responder: bi-encoder + tokenizer + response set + FAISS index, as a bundle.

The response set lives in ``responses.jsonl`` (row i = ``{"id": i, "text", "source"}``) and its
embeddings in ``index.faiss``, a :class:`~models.index.ResponseIndex` (FAISS ``HNSW32,Flat``,
inner product) whose id i is row i (G2R, Kim et al. 2021, section 3.4). The bundle's
``model_config`` holds ``biencoder`` (:class:`BiEncoderConfig`), ``inputs``
(:class:`~models.inputs.InputConfig`, the generators' input limits) and ``index``
(:class:`~models.index.IndexConfig`).

Contexts go through the generators' path: the last ``max_context_turns`` turns, normalised and
tokenised by :meth:`DialogueTokenizer.encode_contexts`. With a re-ranker (``lexical.json``,
models/lexical.py) the index's best candidates are re-ranked by bi-encoder + TF-IDF.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from models.biencoder import BiEncoder, BiEncoderConfig
from models.bundle import INDEX_FILE, RESPONSES_FILE, BundleError, Manifest, bundle_error
from models.index import (
    IndexConfig,
    ResponseIndex,
    as_float32,
    exact_search,
    gpu_faiss_available,
)
from models.inputs import InputConfig, encode_contexts
from models.lexical import LEXICAL_FILE, LexicalReranker, context_text, mix_scores
from models.responder import Responder, StageObserver, load_tokenizer, load_weights, observe
from models.text import normalize_text
from models.tokenizer import DialogueTokenizer

__all__ = [  # the index and InputConfig live in models/index.py and models/inputs.py
    "RESPONSE_SOURCES",
    "IndexConfig",
    "InputConfig",
    "ResponseIndex",
    "RetrievalResponder",
    "build_response_index",
    "embed_responses",
    "exact_search",
    "gpu_faiss_available",
    "read_responses",
    "responses_jsonl",
]

logger = logging.getLogger(__name__)

RESPONSE_SOURCES = ("corpus", "teacher")
# the least cosine an int8 context encoder's embeddings may have to float32's on the probes
INT8_MIN_COSINE = 0.99


def read_responses(bundle_dir: Path) -> tuple[list[str], list[str]]:
    """Texts and sources of ``responses.jsonl``; raises BundleError unless row i has id i."""
    path = Path(bundle_dir) / RESPONSES_FILE

    def fail(problem: str) -> BundleError:
        return bundle_error(bundle_dir, RESPONSES_FILE, f"{RESPONSES_FILE} {problem}")

    texts: list[str] = []
    sources: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise fail(f"line {lineno} is not valid JSON: {exc}") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise fail(f"line {lineno} is not an object with a string 'text'")
            if row.get("id") != len(texts):
                raise fail(f"line {lineno} has id {row.get('id')!r}, expected {len(texts)}")
            texts.append(row["text"])
            sources.append(str(row.get("source", "corpus")))
    return texts, sources


def responses_jsonl(texts: Sequence[str], sources: Sequence[str]) -> bytes:
    """``responses.jsonl`` bytes: row i is ``{"id": i, "text": ..., "source": ...}``."""
    assert len(texts) == len(sources), f"{len(texts)} texts but {len(sources)} sources"
    lines = []
    for i, (text, source) in enumerate(zip(texts, sources, strict=True)):
        assert source in RESPONSE_SOURCES, f"unknown response source {source!r}"
        lines.append(json.dumps({"id": i, "text": text, "source": source}, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def ids_by_text(texts: Sequence[str]) -> dict[str, list[int]]:
    """The positions of each distinct text in ``texts``."""
    out: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        out.setdefault(text, []).append(i)
    return out


class RetrievalResponder(Responder):
    """Answers a conversation with the best-scoring responses of a fixed, indexed response set."""

    kind: ClassVar[str] = "retriever"
    model: BiEncoder

    def __init__(
        self,
        model: BiEncoder,
        tokenizer: DialogueTokenizer,
        inputs: InputConfig,
        index: ResponseIndex,
        responses: Sequence[str],
        sources: Sequence[str] | None = None,
        manifest: Manifest | None = None,
        reranker: LexicalReranker | None = None,
    ) -> None:
        if index.ntotal != len(responses):
            raise ValueError(f"index holds {index.ntotal} vectors for {len(responses)} responses")
        self.reranker = reranker  # hybrid dense + TF-IDF re-ranking (models/lexical.py), or None
        # TorchScript trace of the context encoder for one unpadded context on the CPU (the
        # batch-1 serving path; :meth:`trace_context_encoder`), with the dtype it was traced in
        self._traced: torch.jit.ScriptModule | None = None
        self._traced_dtype: torch.dtype | None = None
        # an int8 copy of the context encoder that serves contexts on the CPU in place of the
        # model's (:meth:`quantize_context_encoder`); None = the model's own
        self._int8_encoder: torch.nn.Module | None = None
        self._vectors: np.ndarray | None = None  # the index's raw vectors, for re-ranking
        self._ids_by_text: dict[str, list[int]] | None = None  # response ids of each text
        if reranker is not None:  # at load, not on the first request
            reranker.index_responses(responses)
            self._vectors = index.vectors()
        self.model = model
        self.tokenizer = tokenizer
        self.inputs = inputs
        self.index = index
        self.responses = list(responses)
        if reranker is not None:
            self._ids_by_text = ids_by_text(self.responses)
        self.sources = list(sources) if sources is not None else ["corpus"] * len(self.responses)
        self.manifest = manifest

    def model_config(self) -> dict[str, Any]:
        return {
            "biencoder": self.model.cfg.to_dict(),
            "inputs": asdict(self.inputs),
            "index": asdict(self.index.config),
        }

    def bundle_files(self) -> dict[str, bytes | Path]:
        return {
            RESPONSES_FILE: responses_jsonl(self.responses, self.sources),
            INDEX_FILE: self.index.to_bytes(),
            **({LEXICAL_FILE: self.reranker.to_json()} if self.reranker else {}),
        }

    @classmethod
    def from_bundle(cls, bundle_dir: Path, manifest: Manifest) -> RetrievalResponder:
        """Also checks the response ids and the index size; raises BundleError."""
        mc = manifest.model_config
        cfg = BiEncoderConfig.from_dict(mc["biencoder"])
        texts, sources = read_responses(bundle_dir)
        index_config = IndexConfig(**mc.get("index", {}))
        try:
            index = ResponseIndex.from_bytes((bundle_dir / INDEX_FILE).read_bytes(), index_config)
        except RuntimeError as exc:  # FAISS raises RuntimeError on unreadable data
            problem = f"{INDEX_FILE} is not a readable FAISS index: {exc}"
            raise bundle_error(bundle_dir, INDEX_FILE, problem) from exc
        if index.ntotal != len(texts) or index.dim != cfg.embed_dim:
            raise bundle_error(
                bundle_dir,
                INDEX_FILE,
                f"{INDEX_FILE} holds {index.ntotal} vectors of size {index.dim} but "
                f"{RESPONSES_FILE} has {len(texts)} rows and the bi-encoder embeds to "
                f"{cfg.embed_dim}",
            )
        reranker = None
        if LEXICAL_FILE in manifest.files:
            try:
                reranker = LexicalReranker.from_json((bundle_dir / LEXICAL_FILE).read_bytes())
            except (ValueError, KeyError, TypeError) as exc:
                problem = f"{LEXICAL_FILE} is not a valid re-ranker: {exc}"
                raise bundle_error(bundle_dir, LEXICAL_FILE, problem) from exc
        model = BiEncoder(cfg)
        load_weights(model, bundle_dir, manifest)
        inputs = InputConfig(**mc["inputs"])
        tokenizer = load_tokenizer(bundle_dir)
        return cls(model, tokenizer, inputs, index, texts, sources, manifest, reranker)

    @classmethod
    def load(
        cls,
        bundle_dir: Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        *,
        int8: bool | None = None,
    ) -> RetrievalResponder:
        """:meth:`Responder.load`, then the CPU fast paths where they apply: the int8 context
        encoder (``int8``: None = on where it applies, a float32 model on the CPU; False = off;
        True = required, a ValueError where it cannot be) and its batch-1 trace."""
        responder = super().load(bundle_dir, device, dtype)
        if int8 is False:
            responder.trace_context_encoder()
        elif not responder.quantize_context_encoder() and int8:
            raise ValueError(
                f"{bundle_dir}: an int8 context encoder needs a float32 model on the CPU "
                f"(got {next(responder.model.parameters()).dtype} on {responder.device})"
            )
        return responder

    @property
    def int8(self) -> bool:
        """Whether contexts are encoded by the int8 copy of the context encoder."""
        return self._int8_encoder is not None

    def quantize_context_encoder(self, min_cosine: float = INT8_MIN_COSINE) -> bool:
        """Encode contexts with an int8 copy of the context encoder (CPU, float32 models only).

        PyTorch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``): every
        ``nn.Linear`` of the context encoder holds int8 weights, one scale per output channel,
        and quantizes its input per call; embeddings, LayerNorm and attention's softmax stay in
        float32. The response side, and so the index, is untouched. Why: at batch 1 the context
        encoder is the one Transformer a retrieval request runs, and its matmuls are where the
        time goes; in int8 the base bi-encoder's forward ran 2.06x faster on this CPU at the same
        test Hits@1/100 within 0.001 (reports/retrieval_int8_base.md). The copy must give
        embeddings within ``min_cosine`` of the float32 encoder's on probe inputs, or it is not
        used. Returns whether it is on; the model itself stays float32 (evaluations and training
        use it). The copy is made now: weights loaded into the model later reach it only by
        calling this again. Either way the batch-1 trace is made again, of the encoder that now
        serves."""
        on = self._quantize_context_encoder(min_cosine)
        self.trace_context_encoder()
        return on

    def _quantize_context_encoder(self, min_cosine: float) -> bool:
        self._int8_encoder = None
        encoder = self.model.context_encoder
        if (
            self.device.type != "cpu"
            or self.model.training
            or next(encoder.parameters()).dtype != torch.float32
        ):
            return False
        probes = self._probe_ids()
        try:
            with warnings.catch_warnings():  # torch.ao's notice that torchao is its successor
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", UserWarning)
                quantized = torch.ao.quantization.quantize_dynamic(
                    copy.deepcopy(encoder),
                    {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
                    dtype=torch.qint8,
                )
            with torch.no_grad():
                worst = min(
                    float(torch.nn.functional.cosine_similarity(quantized(x), encoder(x)).min())
                    for x in probes
                )
        except Exception as exc:  # no quantized engine on this build: float32 serves
            logger.warning("context encoder not quantized (float32 serves): %s", exc)
            return False
        if worst < min_cosine:
            logger.warning(
                "int8 context encoder off: cosine %.4f to float32 on probes < %.4f",
                worst,
                min_cosine,
            )
            return False
        self._int8_encoder = quantized.eval()
        return True

    def _probe_ids(self) -> list[Tensor]:
        """Unpadded id rows of a few lengths up to ``max_source_len``, to check a fast path."""
        lengths = sorted({1, 7, self.inputs.max_source_len})
        # ids 5.. are ordinary pieces (0-4: pad, bos, eos, unk, sep); a cls token adds one
        pieces = max(self.model.cfg.vocab_size - 5, 1)
        return [torch.arange(n).remainder(pieces)[None] + 5 for n in lengths]

    def _context_encoder(self) -> torch.nn.Module:
        """The module that encodes contexts as served: the int8 copy where on (and the model is
        in eval mode: a model being trained again is served as it is), else the model's."""
        if self._int8_encoder is not None and not self.model.training:
            return self._int8_encoder
        return self.model.context_encoder

    def trace_context_encoder(self) -> bool:
        """Serve a single context through a TorchScript trace of the context encoder.

        At batch 1 the context encoder's time is mostly Python and dispatch overhead around small
        matmuls; a trace (``torch.jit.trace``, not frozen, so it shares the module's parameters
        and sees weights loaded in place; not so the int8 copy's) runs the same ops without the
        module calls (reports/retrieval_stages_base.md). It is recorded for one unpadded row, so
        :meth:`embed` uses it only for exactly that: one context, no padding, on the CPU, in eval
        mode, in the dtype traced; anything else takes the module. It traces the module that
        serves (the int8 copy where on) and must match it on several lengths (allclose) or it
        is not used. Returns whether it is on."""
        self._traced = self._traced_dtype = None
        if self.device.type != "cpu" or self.model.training:
            return False
        encoder = self._context_encoder()  # the int8 copy where it is on
        probes = self._probe_ids()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # the trace records the no-padding branch and the position assert as constants:
                # exactly the case embed() restricts it to
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(encoder, probes[0], check_trace=False)
                ok = all(
                    torch.allclose(traced(x), encoder(x), rtol=1e-4, atol=1e-5) for x in probes
                )
        except Exception as exc:  # a failed trace only means the module serves
            logger.warning("context encoder not traced (the module serves): %s", exc)
            return False
        if not ok:
            logger.warning("context encoder trace disagrees with the module: not used")
            return False
        self._traced = traced
        self._traced_dtype = next(self.model.context_encoder.parameters()).dtype
        return True

    @contextmanager
    def untraced(self) -> Iterator[None]:
        """Within the block one context goes through the module too (benchmarks compare)."""
        traced, self._traced = self._traced, None
        try:
            yield
        finally:
            self._traced = traced

    def _context_encoder_for(self, context_ids: Tensor) -> Any:
        """The trace for one unpadded CPU row it was recorded for, else the module's method."""
        traced = self._traced
        if (
            traced is not None
            and context_ids.size(0) == 1
            and context_ids.size(1) <= self.inputs.max_source_len
            and context_ids.device.type == "cpu"
            and not self.model.training
            and next(self.model.context_encoder.parameters()).dtype == self._traced_dtype
            and bool(context_ids.ne(self.model.cfg.pad_id).all())
        ):
            return traced
        return self._context_encoder()

    # --- the three serving stages: tokenize -> encode -> search ---------------------------------

    def encode_contexts(
        self, contexts: Sequence[Sequence[str]], *, normalized: bool = False
    ) -> Tensor:
        """Right-padded context ids (B, S) from the last ``max_context_turns`` turns of each
        (``normalized``: the turns are :func:`normalize_text`'s output already)."""
        return encode_contexts(
            self.tokenizer, self.inputs, contexts, self.device, normalized=normalized
        )

    @torch.inference_mode()
    def embed(self, context_ids: Tensor) -> np.ndarray:
        """Context embeddings (B, embed_dim), float32 on the CPU (what FAISS searches with); one
        context at a time goes through the traced encoder where it is on.

        The int8 encoder takes the contexts one by one, unpadded: it quantizes each input with
        one scale over the whole tensor, so in a batch a context's embedding would depend on
        the other contexts (and their padding) beside it, and a reply on who else was asking."""
        if context_ids.size(0) > 1 and self._context_encoder() is self._int8_encoder:
            lengths = context_ids.ne(self.model.cfg.pad_id).sum(dim=1).clamp(min=1).tolist()
            rows = [context_ids[i : i + 1, :n] for i, n in enumerate(lengths)]
            return np.concatenate([self.embed(row) for row in rows])
        return as_float32(self._context_encoder_for(context_ids)(context_ids))

    def search(
        self,
        embeddings: np.ndarray,
        top_k: int = 1,
        contexts: Sequence[Sequence[str]] | None = None,
        *,
        normalized: bool = False,
    ) -> list[list[tuple[str, float]]]:
        """The ``top_k`` responses and their scores for each context embedding, best first
        (``normalized``: the ``contexts``' turns are :func:`normalize_text`'s output already).

        Scores are R(c, r) = <e_c, e_r>. With a re-ranker and the ``contexts`` the embeddings
        came from, the candidates are the index's best ``reranker.candidates`` together with the
        responses that share the context's rarer words (``LexicalReranker.lexical_candidates``),
        minus any that repeat a turn of the context word for word; they are ranked by the hybrid
        score (models/lexical.py), which is returned."""
        reranker = self.reranker
        if reranker is None or reranker.weight <= 0 or contexts is None:
            scores, ids = self.index.search(embeddings, min(top_k, len(self.responses)))
            return [
                [(self.responses[i], float(s)) for s, i in zip(rs, ri, strict=True) if i >= 0]
                for rs, ri in zip(scores.tolist(), ids.tolist(), strict=True)
            ]
        k = min(max(top_k, reranker.candidates), len(self.responses))
        _, dense_ids = self.index.search(embeddings, k)
        last = self.inputs.max_context_turns
        if self._vectors is None:  # a re-ranker attached after construction (evaluations)
            self._vectors = self.index.vectors()
        out: list[list[tuple[str, float]]] = []
        if self._ids_by_text is None:
            self._ids_by_text = ids_by_text(self.responses)
        for row, context in enumerate(contexts):
            turns = list(context) if normalized else [normalize_text(t) for t in context]
            # the query is the last turns joined (= context_text(context, last)); each turn's
            # row too, for the near-echo test below
            terms = reranker.context_terms(turns[-last:])
            lexical_ids = reranker.lexical_candidates(terms.query, reranker.candidates)
            cand = np.unique(np.concatenate([dense_ids[row][dense_ids[row] >= 0], lexical_ids]))
            # no reply that repeats a turn of the context word for word
            repeats = [i for t in turns for i in self._ids_by_text.get(t, ())]
            if repeats:
                cand = cand[~np.isin(cand, repeats)]
            # near-echoes too: a reply that restates one of the recent turns
            lexical, echo = reranker.candidate_scores(terms, cand)
            cand, lexical = cand[~echo], lexical[~echo]
            if cand.size == 0:
                out.append([])
                continue
            dense = self._vectors[cand] @ np.asarray(embeddings[row], dtype=np.float32)
            mixed = reranker.mix(dense[None, :], lexical[None, :])[0]
            order = np.argsort(-mixed, kind="stable")[:top_k]
            out.append([(self.responses[int(cand[j])], float(mixed[j])) for j in order])
        return out

    def respond(
        self,
        contexts: Sequence[Sequence[str]],
        top_k: int = 1,
        *,
        on_stage: StageObserver | None = None,
    ) -> list[list[tuple[str, float]]]:
        """For each context (turns, oldest first), the ``top_k`` (response text, score), best
        first: tokenize -> encode -> search (re-ranked with the contexts when the bundle has a
        re-ranker); ``on_stage`` hears each stage's seconds."""
        if not contexts:
            return []
        started = time.perf_counter()
        reranks = self.reranker is not None and self.reranker.weight > 0
        # with a re-ranker (which reads every turn) normalised once, for it and the tokenizer
        turns = [[normalize_text(t) for t in c] for c in contexts] if reranks else contexts
        ids = self.encode_contexts(turns, normalized=reranks)
        started = observe(on_stage, "tokenize", started)
        embeddings = self.embed(ids)
        started = observe(on_stage, "encode", started)
        hits = self.search(embeddings, top_k, turns, normalized=reranks)
        observe(on_stage, "search", started)
        return hits

    @torch.inference_mode()
    def rank_replies(
        self, contexts: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """Scores (higher is better) of each context's candidate replies, texts from outside the
        response set (a generator's n-best: generate, then rank), as :meth:`search` scores its
        own candidates: R(c, r) = <e_c, e_r> (G2R's eq. 1), mixed with the re-ranker's TF-IDF
        cosine where the bundle has one (models/lexical.py). A candidate that repeats a turn of
        the context word for word, or restates one (the re-ranker's echo test), scores -inf,
        unless every candidate does (then they keep their scores: something must be served)."""
        out: list[np.ndarray] = []
        if not contexts:
            return out
        turns = [[normalize_text(t) for t in c] for c in contexts]
        ctx = self.embed(self.encode_contexts(turns, normalized=True))
        texts = [t for row in candidates for t in row]
        if not texts:
            return [np.zeros(0) for _ in candidates]
        resp = np.concatenate(list(embed_responses(self.model, self.tokenizer, texts, self.inputs)))
        reranker = self.reranker if self.reranker is not None and self.reranker.weight > 0 else None
        last = self.inputs.max_context_turns
        start = 0
        for i, row in enumerate(candidates):
            row = list(row)
            scores = (resp[start : start + len(row)] @ ctx[i]).astype(np.float64)
            start += len(row)
            echo = np.array([normalize_text(t) in turns[i] for t in row], dtype=bool)
            if reranker is not None and row:
                lexical, restates = reranker.text_scores(
                    reranker.context_terms(turns[i][-last:]), row
                )
                scores = reranker.mix(scores[None, :], lexical[None, :])[0]
                echo |= restates
            if echo.any() and not echo.all():
                scores = np.where(echo, -np.inf, scores)
            out.append(scores)
        return out

    def candidate_scores(
        self,
        contexts: Sequence[Sequence[str]],
        pool: Sequence[str],
        candidates: np.ndarray,
        *,
        weight: float | None = None,
        batch_size: int = 512,
    ) -> np.ndarray:
        """Scores (N, K) of each context against its ``candidates`` (indices into ``pool``), as
        the served ranking would score them: dense, or hybrid with the re-ranker (``weight``
        overrides its weight; 0 = dense only). For Hits@k/K evaluations."""
        w = self.reranker.weight if weight is None and self.reranker else (weight or 0.0)
        dense, lexical = self.candidate_score_parts(
            contexts, pool, candidates, lexical=w > 0, batch_size=batch_size
        )
        return dense if lexical is None else mix_scores(dense, lexical, w)

    @torch.inference_mode()
    def candidate_score_parts(
        self,
        contexts: Sequence[Sequence[str]],
        pool: Sequence[str],
        candidates: np.ndarray,
        *,
        lexical: bool = True,
        batch_size: int = 512,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The two parts of :meth:`candidate_scores`, each (N, K): the dense scores, and the
        TF-IDF scores (None without a re-ranker or with ``lexical`` False), so that several
        weights can be tried on one encoding (:func:`mix_scores`)."""
        used = np.unique(candidates)
        columns = np.searchsorted(used, candidates)
        texts = [pool[i] for i in used.tolist()]
        resp = np.concatenate(
            [
                as_float32(
                    self.model.encode_responses(
                        self.tokenizer.pad(
                            self.tokenizer.encode_responses(
                                texts[s : s + batch_size], self.inputs.max_target_len
                            ),
                            self.device,
                        )
                    )
                )
                for s in range(0, len(texts), batch_size)
            ]
        )
        ctx = np.concatenate(
            [
                self.embed(self.encode_contexts(contexts[s : s + batch_size]))
                for s in range(0, len(contexts), batch_size)
            ]
        )
        dense = np.einsum("nd,nkd->nk", ctx, resp[columns])
        if self.reranker is None or not lexical:
            return dense, None
        turns = self.inputs.max_context_turns
        q = self.reranker.vectors([context_text(c, turns) for c in contexts])
        docs = self.reranker.vectors(texts)
        return dense, np.take_along_axis(np.asarray((q @ docs.T).toarray()), columns, axis=1)


@torch.inference_mode()
def embed_responses(
    model: BiEncoder,
    tokenizer: DialogueTokenizer,
    texts: Sequence[str],
    inputs: InputConfig,
    *,
    chunk_size: int = 2048,
    batch_size: int = 256,
) -> Iterable[np.ndarray]:
    """Response embeddings in order: one float32 (n, embed_dim) array per ``chunk_size`` texts.

    Responses are cut to ``max_target_len - 1`` pieces, as in training. Within a chunk the model
    sees length-sorted batches of ``batch_size`` (less padding); rows come back in input order.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), chunk_size):
            ids = tokenizer.encode_responses(
                texts[start : start + chunk_size], inputs.max_target_len
            )
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            out = np.empty((len(ids), model.cfg.embed_dim), dtype=np.float32)
            for b in range(0, len(order), batch_size):
                rows = order[b : b + batch_size]
                emb = model.encode_responses(tokenizer.pad([ids[i] for i in rows], device))
                out[rows] = as_float32(emb)
            yield out
    finally:
        model.train(was_training)


def build_response_index(
    model: BiEncoder,
    tokenizer: DialogueTokenizer,
    texts: Sequence[str],
    inputs: InputConfig,
    config: IndexConfig | None = None,
    *,
    progress: bool = True,
) -> ResponseIndex:
    """Embed ``texts`` in batches and add them to a new index (id i = ``texts[i]``)."""
    config = config or IndexConfig()
    batches = embed_responses(model, tokenizer, texts, inputs, chunk_size=config.add_batch_size)
    return ResponseIndex.build(
        batches, model.cfg.embed_dim, config, total=len(texts), progress=progress
    )

"""A retrieval responder: bi-encoder + tokenizer + response set + FAISS index, as a bundle.

The response set lives in ``responses.jsonl`` (row i = ``{"id": i, "text", "source"}``) and its
embeddings in ``index.faiss``, a FAISS ``HNSW32,Flat`` inner-product index whose id i is row i
(G2R, Kim et al. 2021, section 3.4: HNSW32, efSearch 256). The bundle's ``model_config`` holds
``biencoder`` (:class:`BiEncoderConfig`), ``inputs`` (:class:`InputConfig`, the generators' input
limits) and ``index`` (:class:`IndexConfig`).

Contexts go through the generators' path: the last ``max_context_turns`` turns, normalised and
tokenised by :meth:`DialogueTokenizer.encode_contexts`. HNSW search runs on the CPU; exact search
(:func:`exact_search`, used to measure the index's recall) uses GPU FAISS when it is installed and
a GPU is present.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models.biencoder import BiEncoder, BiEncoderConfig
from models.bundle import (
    INDEX_FILE,
    RESPONSES_FILE,
    TOKENIZER_FILE,
    BundleError,
    Manifest,
    load_state_dict,
    verify_bundle,
    write_bundle,
)
from models.generator import InputConfig
from models.lexical import LEXICAL_FILE, LexicalReranker, context_text, zscore
from models.tokenizer import DialogueTokenizer

logger = logging.getLogger(__name__)

RESPONSE_SOURCES = ("corpus", "teacher")


@dataclass(frozen=True)
class IndexConfig:
    """How the response index is built and searched (G2R: HNSW32,Flat, inner product, ef 256)."""

    factory: str = "HNSW32,Flat"  # faiss.index_factory string
    ef_search: int = 256  # HNSW candidate list at query time (recall vs latency)
    ef_construction: int = 40  # HNSW candidate list while inserting (FAISS default)
    add_batch_size: int = 2048  # responses embedded (and added) per step of the build
    equal_norm: bool = True  # store [x, sqrt(M^2 - |x|^2)]: see ResponseIndex


def gpu_faiss_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _as_float32(x: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def exact_search(
    database: np.ndarray | Tensor,
    queries: np.ndarray | Tensor,
    k: int,
    *,
    use_gpu: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force maximum inner product search: (scores (Q, k), ids (Q, k)) via ``IndexFlatIP``.

    ``use_gpu=None`` means: on a GPU when :func:`gpu_faiss_available`.
    """
    db, q = _as_float32(database), _as_float32(queries)
    assert db.ndim == 2 and q.ndim == 2 and db.shape[1] == q.shape[1], (
        f"database {db.shape} and queries {q.shape} must be 2-D with the same width"
    )
    index: Any = faiss.IndexFlatIP(db.shape[1])
    if gpu_faiss_available() if use_gpu is None else use_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(db)
    scores, ids = index.search(q, min(k, db.shape[0]))
    return scores, ids


class ResponseIndex:
    """Inner-product index over response embeddings; FAISS id i is response row i.

    With ``equal_norm`` (the default) every stored vector is ``[x, sqrt(M^2 - |x|^2)]`` where M is
    the largest response norm, and every query gets a 0 appended (Bachrach et al., RecSys 2014).
    Scores stay the exact inner products <q, x>, but all stored vectors now have norm M, so
    inner-product order between them equals L2 order. HNSW's neighbour-selection heuristic
    assumes a metric: on raw bi-encoder embeddings whose norms differ by only a few percent we
    measured recall@1 0.66 against exact search (efSearch 256, 59k DailyDialog responses, added
    in chunks); with the transform, 0.98.
    """

    def __init__(
        self, index: Any, config: IndexConfig | None = None, max_norm: float | None = None
    ) -> None:
        self.index = index
        self.config = config or IndexConfig()
        self.set_ef_search(self.config.ef_search)
        if self.config.equal_norm and max_norm is None and index.ntotal:
            max_norm = float(np.linalg.norm(index.reconstruct(0)))  # every stored row has norm M
        self.max_norm = max_norm

    @classmethod
    def create(cls, dim: int, config: IndexConfig | None = None) -> ResponseIndex:
        """An empty index of ``config.factory`` over ``dim``-sized embeddings."""
        config = config or IndexConfig()
        stored = dim + 1 if config.equal_norm else dim
        index = faiss.index_factory(stored, config.factory, faiss.METRIC_INNER_PRODUCT)
        hnsw = getattr(index, "hnsw", None)
        if hnsw is not None:
            hnsw.efConstruction = config.ef_construction
        return cls(index, config)

    @classmethod
    def build(
        cls,
        batches: Iterable[np.ndarray | Tensor],
        dim: int,
        config: IndexConfig | None = None,
        *,
        total: int | None = None,
        progress: bool = True,
    ) -> ResponseIndex:
        """Index embedding batches in order (ids 0, 1, ...), with progress bars.

        With ``equal_norm`` the embeddings are gathered first (M is their largest norm), then
        added ``add_batch_size`` at a time.
        """
        index = cls.create(dim, config)
        with tqdm(total=total, desc="embed", unit="resp", disable=not progress) as bar:
            if not index.config.equal_norm:
                for batch in batches:
                    index.add(batch)
                    bar.update(len(batch))
                return index
            gathered = []
            for batch in batches:
                gathered.append(_as_float32(batch))
                bar.update(len(batch))
        x = np.concatenate(gathered) if gathered else np.zeros((0, dim), np.float32)
        index.max_norm = float(np.linalg.norm(x, axis=1).max()) if len(x) else 0.0
        step = index.config.add_batch_size
        for start in tqdm(range(0, len(x), step), desc="index", unit="batch", disable=not progress):
            index.add(x[start : start + step])
        return index

    def set_ef_search(self, ef_search: int) -> None:
        assert ef_search > 0, f"ef_search must be positive, got {ef_search}"
        hnsw = getattr(self.index, "hnsw", None)
        if hnsw is not None:
            hnsw.efSearch = ef_search

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Size of the embeddings this index takes (without the equal-norm coordinate)."""
        return int(self.index.d) - (1 if self.config.equal_norm else 0)

    def add(self, embeddings: np.ndarray | Tensor) -> None:
        """Append embeddings (ids continue from ``ntotal``)."""
        x = _as_float32(embeddings)
        assert x.ndim == 2 and x.shape[1] == self.dim, f"expected (N, {self.dim}), got {x.shape}"
        if self.config.equal_norm:
            norms = np.linalg.norm(x, axis=1)
            if self.max_norm is None:
                self.max_norm = float(norms.max()) if len(x) else 0.0
            assert not len(x) or norms.max() <= self.max_norm * (1 + 1e-5), (
                f"embedding norm {norms.max():.4f} exceeds the index's M={self.max_norm:.4f}; "
                "rebuild the index"
            )
            extra = np.sqrt(np.maximum(self.max_norm**2 - norms**2, 0.0))[:, None]
            x = np.ascontiguousarray(np.hstack([x, extra]), dtype=np.float32)
        self.index.add(x)

    def _queries(self, queries: np.ndarray | Tensor) -> np.ndarray:
        q = _as_float32(queries)
        assert q.ndim == 2 and q.shape[1] == self.dim, f"expected (Q, {self.dim}), got {q.shape}"
        if self.config.equal_norm:
            q = np.ascontiguousarray(np.hstack([q, np.zeros((len(q), 1), np.float32)]))
        return q

    def search(self, queries: np.ndarray | Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k by inner product: (scores (Q, k), ids (Q, k)); missing hits are -1."""
        scores, ids = self.index.search(self._queries(queries), k)
        return scores, ids

    def vectors(self) -> np.ndarray:
        """The stored embeddings (ntotal, dim), in id order (for exact-search comparisons)."""
        x = np.asarray(self.index.reconstruct_n(0, self.ntotal), dtype=np.float32)
        return np.ascontiguousarray(x[:, : self.dim])

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, config: IndexConfig | None = None) -> ResponseIndex:
        return cls(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), config)


def read_responses(bundle_dir: Path) -> tuple[list[str], list[str]]:
    """Texts and sources of ``responses.jsonl``; raises BundleError unless row i has id i."""
    path = Path(bundle_dir) / RESPONSES_FILE

    def fail(problem: str) -> BundleError:
        return BundleError(
            f"bundle {bundle_dir}: {RESPONSES_FILE} {problem}",
            bundle_dir=bundle_dir,
            file=RESPONSES_FILE,
        )

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


class RetrievalResponder:
    """Answers a conversation with the best-scoring responses of a fixed, indexed response set."""

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
        if reranker is not None:
            reranker.index_responses(responses)
        self.model = model
        self.tokenizer = tokenizer
        self.inputs = inputs
        self.index = index
        self.responses = list(responses)
        self.sources = list(sources) if sources is not None else ["corpus"] * len(self.responses)
        self.manifest = manifest

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id if self.manifest else "unsaved"

    def model_config(self) -> dict[str, Any]:
        return {
            "biencoder": self.model.cfg.to_dict(),
            "inputs": asdict(self.inputs),
            "index": asdict(self.index.config),
        }

    @classmethod
    def load(
        cls, bundle_dir: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> RetrievalResponder:
        """Verify every checksum, the response ids and the index size; raises BundleError."""
        bundle_dir = Path(bundle_dir)
        manifest = verify_bundle(bundle_dir)
        if manifest.kind != "retriever":
            raise ValueError(f"bundle {bundle_dir} is a {manifest.kind}, not a retriever")
        mc = manifest.model_config
        cfg = BiEncoderConfig.from_dict(mc["biencoder"])
        texts, sources = read_responses(bundle_dir)
        index_config = IndexConfig(**mc.get("index", {}))
        try:
            index = ResponseIndex.from_bytes((bundle_dir / INDEX_FILE).read_bytes(), index_config)
        except RuntimeError as exc:  # FAISS raises RuntimeError on unreadable data
            raise BundleError(
                f"bundle {bundle_dir}: {INDEX_FILE} is not a readable FAISS index: {exc}",
                bundle_dir=bundle_dir,
                file=INDEX_FILE,
            ) from exc
        if index.ntotal != len(texts) or index.dim != cfg.embed_dim:
            raise BundleError(
                f"bundle {bundle_dir}: {INDEX_FILE} holds {index.ntotal} vectors of size "
                f"{index.dim} but {RESPONSES_FILE} has {len(texts)} rows and the bi-encoder "
                f"embeds to {cfg.embed_dim}",
                bundle_dir=bundle_dir,
                file=INDEX_FILE,
            )
        reranker = None
        if LEXICAL_FILE in manifest.files:
            try:
                reranker = LexicalReranker.from_json((bundle_dir / LEXICAL_FILE).read_bytes())
            except (ValueError, KeyError, TypeError) as exc:
                raise BundleError(
                    f"bundle {bundle_dir}: {LEXICAL_FILE} is not a valid re-ranker: {exc}",
                    bundle_dir=bundle_dir,
                    file=LEXICAL_FILE,
                ) from exc
        model = BiEncoder(cfg)
        model.load_state_dict(load_state_dict(bundle_dir, manifest))
        model.to(device=device, dtype=dtype).eval()
        tokenizer = DialogueTokenizer.from_file(bundle_dir / TOKENIZER_FILE)
        inputs = InputConfig(**mc["inputs"])
        return cls(model, tokenizer, inputs, index, texts, sources, manifest, reranker)

    def save(
        self, out_dir: Path, *, name: str, training: Mapping[str, Any], metrics: Mapping[str, Any]
    ) -> Manifest:
        """Write this responder as a retriever bundle (atomically)."""
        self.manifest = write_bundle(
            out_dir,
            kind="retriever",
            name=name,
            model_config=self.model_config(),
            training=training,
            metrics=metrics,
            state_dict=self.model.state_dict(),
            tokenizer_json=self.tokenizer.to_str(),
            extra_files={
                RESPONSES_FILE: responses_jsonl(self.responses, self.sources),
                INDEX_FILE: self.index.to_bytes(),
                **({LEXICAL_FILE: self.reranker.to_json()} if self.reranker else {}),
            },
        )
        return self.manifest

    # --- the three serving stages: tokenize -> encode -> search ---------------------------------

    def encode_contexts(self, contexts: Sequence[Sequence[str]]) -> Tensor:
        """Right-padded context ids (B, S) from the last ``max_context_turns`` turns of each."""
        turns = [list(c)[-self.inputs.max_context_turns :] for c in contexts]
        ids = self.tokenizer.encode_contexts(turns, self.inputs.max_source_len)
        return self.tokenizer.pad(ids, self.device)

    @torch.inference_mode()
    def embed(self, context_ids: Tensor) -> np.ndarray:
        """Context embeddings (B, embed_dim), float32 on the CPU (what FAISS searches with)."""
        return _as_float32(self.model.encode_contexts(context_ids))

    def search(
        self,
        embeddings: np.ndarray,
        top_k: int = 1,
        contexts: Sequence[Sequence[str]] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """The ``top_k`` responses and their scores for each context embedding, best first.

        Scores are R(c, r) = <e_c, e_r>; with a re-ranker and the ``contexts`` the embeddings
        came from, the index's best ``reranker.candidates`` are re-ranked by the hybrid score
        (models/lexical.py) and that score is returned."""
        hybrid = self.reranker is not None and self.reranker.weight > 0 and contexts is not None
        k = max(top_k, self.reranker.candidates) if hybrid and self.reranker else top_k
        scores, ids = self.index.search(embeddings, min(k, len(self.responses)))
        if hybrid and self.reranker is not None and contexts is not None:
            turns = self.inputs.max_context_turns
            queries = [context_text(c, turns) for c in contexts]
            mixed = self.reranker.mix(scores, self.reranker.lexical_scores(queries, ids))
            mixed[ids < 0] = -np.inf
            order = np.argsort(-mixed, axis=1, kind="stable")[:, :top_k]
            ids = np.take_along_axis(ids, order, axis=1)
            scores = np.take_along_axis(mixed, order, axis=1)
        return [
            [(self.responses[i], float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0]
            for row_s, row_i in zip(scores.tolist(), ids.tolist(), strict=True)
        ]

    def respond(
        self, contexts: Sequence[Sequence[str]], top_k: int = 1
    ) -> list[list[tuple[str, float]]]:
        """For each context (turns, oldest first), the ``top_k`` (response text, score), best first."""
        if not contexts:
            return []
        return self.search(self.embed(self.encode_contexts(contexts)), top_k, contexts)

    @torch.inference_mode()
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
        used = np.unique(candidates)
        columns = np.searchsorted(used, candidates)
        texts = [pool[i] for i in used.tolist()]
        resp = np.concatenate(
            [
                _as_float32(
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
        w = self.reranker.weight if weight is None and self.reranker else (weight or 0.0)
        if self.reranker is None or w <= 0:
            return dense
        turns = self.inputs.max_context_turns
        q = self.reranker.vectors([context_text(c, turns) for c in contexts])
        docs = self.reranker.vectors(texts)
        lexical = np.take_along_axis(np.asarray((q @ docs.T).toarray()), columns, axis=1)
        return zscore(dense) + w * zscore(lexical)


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
                out[rows] = _as_float32(emb)
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

"""The retriever's index: embedding the response set, FAISS HNSW recall against exact search, the
TF-IDF re-ranking weight chosen on validation, and writing or rebuilding a retriever bundle."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.biencoder import BiEncoder, BiEncoderConfig
from models.bundle import INDEX_FILE, Manifest, load_state_dict, read_manifest
from models.generator import InputConfig
from models.lexical import LexicalReranker, mix_scores
from models.retriever import (
    IndexConfig,
    ResponseIndex,
    RetrievalResponder,
    build_response_index,
    exact_search,
    read_responses,
)
from models.tokenizer import DialogueTokenizer
from training.core.data import DialogueExample
from training.methods.g2r.losses import (
    hits_at_k,
    hits_candidates,
)
from training.methods.g2r.teachers import batch_ranges

logger = logging.getLogger(__name__)


# TF-IDF re-ranking weights tried on validation (models/lexical.py); 0 = the bi-encoder alone.
RERANK_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def index_recall(
    index: ResponseIndex, database: np.ndarray, queries: np.ndarray, k: int = 1
) -> float:
    """Recall@k of the approximate index against exact inner-product search (FlatIP)."""
    _, approx = index.search(queries, k)
    _, exact = exact_search(database, queries, k)
    hits = [len(set(a) & set(e)) for a, e in zip(approx.tolist(), exact.tolist(), strict=True)]
    return float(np.sum(hits) / exact.size)


def embed_context_ids(
    model: BiEncoder, tokenizer: DialogueTokenizer, ids: Sequence[list[int]]
) -> Tensor:
    """Context embeddings (N, embed_dim) of tokenised contexts, in length-sorted batches of 256
    (less padding), rows in input order."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), model.cfg.embed_dim)
    with torch.no_grad():
        for r in batch_ranges(len(order), 256):
            rows = order[r.start : r.stop]
            out[rows] = model.encode_contexts(tokenizer.pad([ids[i] for i in rows])).float().cpu()
    return out


def _embed_contexts(
    model: BiEncoder,
    tokenizer: DialogueTokenizer,
    contexts: Sequence[Sequence[str]],
    inputs: InputConfig,
) -> np.ndarray:
    ids = tokenizer.encode_contexts(
        [list(c)[-inputs.max_context_turns :] for c in contexts], inputs.max_source_len
    )
    return embed_context_ids(model, tokenizer, ids).numpy()


def fit_rerank_weight(
    responder: RetrievalResponder,
    validation: Sequence[DialogueExample],
    *,
    hits_k: int = 100,
    seed: int = 0,
) -> tuple[float, dict[str, float]]:
    """Choose the responder's TF-IDF re-ranking weight among ``RERANK_WEIGHTS`` by Hits@1/K on
    ``validation`` (ties to the smaller weight), set it (or drop the re-ranker when 0 wins) and
    return the weight with the Hits@1/K of every weight tried."""
    reranker = responder.reranker
    if reranker is None:
        raise ValueError("the responder has no re-ranker to fit")
    pool = list(dict.fromkeys(e.response for e in validation))
    cand = hits_candidates([e.response for e in validation], pool, hits_k, seed)
    contexts = [e.context for e in validation]
    # one encoding of the contexts and candidates, every weight mixed from it
    dense, lexical = responder.candidate_score_parts(contexts, pool, cand)
    assert lexical is not None
    table = {
        str(w): hits_at_k(torch.from_numpy(mix_scores(dense, lexical, w)))["hits@1"]
        for w in RERANK_WEIGHTS
    }
    best = max(RERANK_WEIGHTS, key=lambda w: (table[str(w)], -w))
    logger.info("TF-IDF re-ranking, validation Hits@1/%d by weight: %s", hits_k, table)
    if best > 0:
        reranker.weight = best
        reranker.validation = {"hits@1_by_weight": table, "pairs": len(contexts)}
    else:
        responder.reranker = None
    return best, table


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
    rerank_validation: Sequence[DialogueExample] = (),
    hits_k: int = 100,
    seed: int = 0,
) -> Manifest:
    """Embed and index the response set, measure the index's recall@1 against exact search on
    ``recall_contexts``, and write the retriever bundle.

    With ``rerank_validation`` pairs, a TF-IDF re-ranker (models/lexical.py) is fitted on the
    response set and its weight chosen among ``RERANK_WEIGHTS`` by validation Hits@1/K; weight 0
    winning means no re-ranker. The figures go to the manifest's metrics (``served_hits@1`` is
    what the bundle serves with)."""
    model = model.cpu().eval()
    index = build_response_index(model, tokenizer, texts, inputs, index_config, progress=progress)
    metrics = dict(metrics)
    if recall_contexts:
        database = index.vectors()
        queries = _embed_contexts(model, tokenizer, recall_contexts, inputs)
        metrics["index_recall@1"] = index_recall(index, database, queries, k=1)
    responder = RetrievalResponder(model, tokenizer, inputs, index, texts, sources)
    if rerank_validation:
        responder = RetrievalResponder(
            model, tokenizer, inputs, index, texts, sources, reranker=LexicalReranker.fit(texts)
        )
        best, table = fit_rerank_weight(responder, rerank_validation, hits_k=hits_k, seed=seed)
        metrics.update({"rerank_weight": best, "served_hits@1": table[str(best)]})
    return responder.save(out_dir, name=name, training=training, metrics=metrics)


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

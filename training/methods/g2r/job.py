"""G2R: distilling a generative teacher into a bi-encoder retriever (Kim et al., Findings of EMNLP 2021).

The pieces, in pipeline order:

1. Teachers (eqs. 3 and 6): :mod:`training.methods.g2r.teachers`.
2. Data-level G2R, the resumable augmentation shards: :mod:`training.methods.g2r.augment`.
3. The response set filter (length bounds and a blocklist) and the teacher-reply quality bar
   (:mod:`training.methods.g2r.filter`), with counts of what was dropped, and D / D^G with the response
   set R / R^G (here).
4. Losses (eqs. 2, 4, 5) and Hits@k/K: :mod:`training.methods.g2r.losses`.
5. Training batches and the jobs: the retriever training job (``biencoder``, ``g2r-d``,
   ``g2r-dm``), the whole retrieval stage, and index (re)building with its bundle (here).
"""

from __future__ import annotations

import hashlib
import logging
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from models.biencoder import BiEncoder, BiEncoderConfig
from models.bundle import INDEX_FILE, Manifest, load_state_dict, read_manifest, verify_bundle
from models.generator import InputConfig
from models.lexical import LexicalReranker
from models.retriever import (
    IndexConfig,
    ResponseIndex,
    RetrievalResponder,
    build_response_index,
    exact_search,
    read_responses,
)
from models.safety import Blocklist, load_blocklist
from models.tokenizer import DialogueTokenizer
from training.core.data import DialogueExample, DialogueSplits
from training.core.distributed import DistContext, barrier
from training.core.generator import bucketed_batches
from training.core.trainer import Trainer
from training.methods.g2r.augment import (
    augment_contexts,
    augmentation_status,
    group_by_context,
    read_shards,
    select_contexts,
)
from training.methods.g2r.filter import TeacherReplyFilter
from training.methods.g2r.losses import (
    G2RDistillationLoss,
    HitsEvaluator,
    hits_at_k,
    hits_candidates,
)
from training.methods.g2r.teachers import batch_ranges, load_teacher
from training.presets import SHARED_DATA, RetrieverPreset

logger = logging.getLogger(__name__)

# TF-IDF re-ranking weights tried on validation (models/lexical.py); 0 = the bi-encoder alone.
RERANK_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)

Method = Literal["biencoder", "g2r-d", "g2r-dm"]
METHODS: tuple[Method, ...] = ("biencoder", "g2r-d", "g2r-dm")
DEFAULT_BLOCKLIST = SHARED_DATA / "blocklist" / "en.txt"


# --- the response set and its filter -------------------------------------------------------------


@dataclass(frozen=True)
class ResponseFilter:
    """Keeps responses of ``min_tokens..max_tokens`` whitespace tokens with no blocklisted phrase."""

    min_tokens: int = 1
    max_tokens: int = 60
    blocklist: tuple[str, ...] = ()
    # The matcher the service's output filter uses too (models/safety.py): whole-token phrases.
    _matcher: Blocklist = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_matcher", Blocklist(self.blocklist))

    def reason(self, text: str) -> str | None:
        """Why ``text`` is dropped (``too_short``, ``too_long``, ``blocked``), or None to keep it."""
        n = len(text.split())
        if n < self.min_tokens:
            return "too_short"
        if n > self.max_tokens:
            return "too_long"
        if self._matcher.find(text, normalised=True) is not None:
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
    stats: dict[str, int | float]


def build_retrieval_data(
    train: Sequence[DialogueExample],
    augmented: Mapping[int, Mapping[str, Any]] | None,
    response_filter: ResponseFilter,
    *,
    score: str = "ll",
    teacher_filter: TeacherReplyFilter | None = None,
) -> RetrievalData:
    """D^G = D + teacher replies as extra positives; R^G = R + teacher replies, deduplicated and
    filtered (teacher replies the filter drops are not used as positives either).

    With ``teacher_filter`` a (context, teacher reply) pair must first pass that quality bar: a
    reply enters R^G when at least one of its pairs does, and only passing pairs are positives.
    Its counts go into ``stats`` as ``teacher_filter_*``.
    """
    assert score in ("ll", "mi"), f"teacher score must be 'll' or 'mi', got {score!r}"
    groups = group_by_context(train)
    records = list((augmented or {}).values())
    by_context = {tuple(r["context"]): r for r in records}
    corpus = list(dict.fromkeys(e.response for e in train))
    filter_stats: dict[str, int | float] = {}
    accepted: set[tuple[tuple[str, ...], str]] | None = None
    if teacher_filter is not None:
        generic = teacher_filter.generic_responses(e.response for e in train)
        verdict = teacher_filter.apply(records, generic)
        accepted = verdict.accepted
        filter_stats = {f"teacher_filter_{k}": v for k, v in verdict.counts.items()}
        if verdict.score_floor is not None:
            filter_stats["teacher_filter_score_floor"] = verdict.score_floor

    def passes(context: Sequence[str], text: str) -> bool:
        return accepted is None or (tuple(context), text) in accepted

    teacher_texts = [
        g["text"]
        for r in records
        for g in r["generated"]
        if g["text"] and passes(r["context"], g["text"])
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
            extra = [
                x["text"]
                for x in rec["generated"]
                if x["text"] in indexed and passes(g.context, x["text"])
            ]
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
        **filter_stats,
    }
    logger.info("retrieval data: %s", stats)
    return RetrievalData(contexts, positives, scores, responses, sources, stats)


# --- batches and the retriever jobs --------------------------------------------------------------


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
        with torch.autocast(ctx.device.type, enabled=False):  # scores in fp32 under bf16 autocast
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
            for r in batch_ranges(len(ids), 256)
        ]
    return torch.cat(out).numpy() if out else np.zeros((0, model.cfg.embed_dim), np.float32)


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
    table = {
        str(w): hits_at_k(
            torch.from_numpy(responder.candidate_scores(contexts, pool, cand, weight=w))
        )["hits@1"]
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
    teacher_filter: TeacherReplyFilter | Literal["preset"] | None = "preset",
    resume: bool = True,
    seed: int = 0,
) -> Manifest | None:
    """Train a bi-encoder (``biencoder`` on D, ``g2r-d`` on D^G, ``g2r-dm`` on D^G with eq. 5),
    index its response set and write the retriever bundle; returns None on non-main ranks.

    ``teacher_filter``: the quality bar for teacher replies (None = off); ``"preset"`` = the
    preset's ``teacher_filter`` when it has one, else off.
    """
    assert method in METHODS, f"unknown method {method!r}; choose one of {METHODS}"
    score = teacher_score or preset.teacher_score
    if teacher_filter == "preset":
        teacher_filter = getattr(preset, "teacher_filter", None)
    assert teacher_filter is None or isinstance(teacher_filter, TeacherReplyFilter)
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
    if augmented is None:
        teacher_filter = None
    data = build_retrieval_data(
        train_examples, augmented, response_filter, score=score, teacher_filter=teacher_filter
    )
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
        "teacher_filter": asdict(teacher_filter) if teacher_filter is not None else None,
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
        rerank_validation=(
            list(val_examples[: preset.val_examples or None]) if preset.lexical_rerank else []
        ),
        hits_k=preset.hits_k,
        seed=seed,
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
    teacher_filter: TeacherReplyFilter | Literal["preset"] | None = "preset",
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
        teacher_filter=teacher_filter,
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

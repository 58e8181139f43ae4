"""Data-level G2R (Kim et al., Findings of EMNLP 2021, sec. 2.3): teacher augmentation shards.

m teacher replies per training context are written to resumable JSONL shards
``shard-<rank>-of-<world>.jsonl`` (context i belongs to rank i % world), then read back into the
augmented set D^G and response set R^G (deduplicated) by :mod:`training.methods.g2r.job`.

A teacher without log-probabilities (``has_scores`` False, training/methods/g2r/teachers.py)
writes ``"ll": null, "mi": null`` and ``"scores": false`` in the shard header (the key is absent
for teachers that score, so their shards read as before).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
from tqdm import tqdm

from training.config import AugmentConfig
from training.core.data import DialogueExample
from training.methods.g2r.teachers import Teacher, batch_ranges

logger = logging.getLogger(__name__)

SHARD_FORMAT = 1


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
    teacher: str,
    cfg: AugmentConfig,
    groups: Sequence[ContextGroup],
    scores: bool = True,
    ranker: str | None = None,
) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps([g.context for g in groups]).encode()).hexdigest()
    config = asdict(cfg)
    for key in ("rank_pool", "rank_max_uses"):  # options off: headers read as before them
        if not config[key]:
            del config[key]
    header: dict[str, Any] = {
        "format": SHARD_FORMAT,
        "teacher": teacher,
        "config": config,
        "n_contexts": len(groups),
        "contexts_sha256": digest,
    }
    if not scores:
        header["scores"] = False
    if ranker is not None:
        header["ranker"] = ranker
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


class NBestTeacher(Protocol):
    """A teacher that also gives a beam n-best (training/methods/g2r/teachers.py: BundleTeacher)."""

    name: str

    def nbest(
        self, contexts: Sequence[Sequence[str]], n: int, *, max_length: int = 32
    ) -> list[list[str]]: ...


class ReplyRanker(Protocol):
    """What ranks a teacher's n-best (models.retriever.RetrievalResponder.rank_replies)."""

    @property
    def bundle_id(self) -> str: ...

    def rank_replies(
        self, contexts: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]: ...


def sampled_replies(
    teacher: Teacher, contexts: Sequence[Sequence[str]], first: int, cfg: AugmentConfig
) -> list[list[tuple[str, int]]]:
    """The paper's way: m replies per context sampled with top-k, split over the minimum lengths
    (each reply with its min_length), seeded by the batch's first context index ``first``."""
    generated: list[list[tuple[str, int]]] = [[] for _ in contexts]
    for min_length, count in cfg.replies_per_min_length():
        seed = int(np.random.SeedSequence([cfg.seed, first, min_length]).generate_state(1)[0])
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
    return generated


def ranked_replies(
    teacher: NBestTeacher,
    ranker: ReplyRanker,
    contexts: Sequence[Sequence[str]],
    cfg: AugmentConfig,
    uses: Counter[str] | None = None,
) -> list[list[str]]:
    """Generate, then rank: the teacher's beam-``rank_pool`` n-best per context (duplicates
    after normalisation dropped), ordered by the ranker's score, the ``m`` best kept. A candidate
    the ranker rules out (-inf: it repeats or restates a turn) is never kept. With
    ``cfg.rank_max_uses``, a text already kept for that many contexts (counted in ``uses``,
    updated here, in context order) is passed over for the next best."""
    pools = [
        list(dict.fromkeys(t for t in row if t))
        for row in teacher.nbest(contexts, cfg.rank_pool, max_length=cfg.max_length)
    ]
    kept = []
    for pool, scores in zip(pools, ranker.rank_replies(contexts, pools), strict=True):
        order = [int(k) for k in np.argsort(-scores, kind="stable") if np.isfinite(scores[k])]
        if cfg.rank_max_uses and uses is not None:
            order = [k for k in order if uses[pool[k]] < cfg.rank_max_uses]
        chosen = [pool[k] for k in order[: cfg.m]]
        if uses is not None:
            uses.update(chosen)
        kept.append(chosen)
    return kept


def augment_contexts(
    teacher: Teacher,
    groups: Sequence[ContextGroup],
    out_dir: Path,
    cfg: AugmentConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    ranker: ReplyRanker | None = None,
) -> int:
    """Write m teacher replies (and teacher scores of gold and replies) for this rank's contexts.

    The replies are sampled (the paper's way) or, with ``cfg.rank_pool`` and a ``ranker``, the
    ranked best of the teacher's n-best (:func:`ranked_replies`; recorded with min_length 0).
    Context i goes to rank ``i % world_size``. Contexts already in any shard of ``out_dir`` are
    skipped, so a killed run continues where it stopped. Returns the contexts written now.
    """
    if bool(cfg.rank_pool) != (ranker is not None):
        raise ValueError("a ranked augmentation needs both rank_pool > 0 and a ranker")
    if ranker is not None and not hasattr(teacher, "nbest"):
        raise ValueError(
            f"teacher {teacher.name} cannot give a beam n-best (only our generator bundles can); "
            "sample its replies instead (rank_pool 0)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = bool(getattr(teacher, "has_scores", True))
    header = _shard_header(
        teacher.name, cfg, groups, scores, ranker.bundle_id if ranker is not None else None
    )
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
    # what a resumed capped run has kept so far (rank_max_uses counts over all shards)
    uses = (
        Counter(g["text"] for rec in done.values() for g in rec["generated"])
        if cfg.rank_max_uses
        else None
    )
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
        for rows in batch_ranges(len(pending), cfg.batch_contexts):
            indices = [pending[r] for r in rows]
            contexts = [groups[i].context for i in indices]
            if ranker is not None:
                ranked = ranked_replies(cast(NBestTeacher, teacher), ranker, contexts, cfg, uses)
                generated = [[(t, 0) for t in texts] for texts in ranked]
            else:
                generated = sampled_replies(teacher, contexts, indices[0], cfg)
            pairs = [
                (j, text)
                for j, i in enumerate(indices)
                for text in [*groups[i].responses, *(t for t, _ in generated[j])]
            ]
            ll: list[float | None]
            mi: list[float | None]
            if scores:
                ll_, mi_ = teacher.score([contexts[j] for j, _ in pairs], [t for _, t in pairs])
                ll, mi = list(ll_), list(mi_)
            else:
                ll = mi = [None] * len(pairs)
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


def shards_have_scores(out_dir: Path) -> bool:
    """False when the shards of ``out_dir`` were written by a teacher without log-probabilities."""
    header, _ = read_shards(out_dir) if Path(out_dir).is_dir() else (None, {})
    return header is None or header.get("scores", True) is not False


def augmentation_status(out_dir: Path) -> tuple[int, int]:
    """(contexts written, contexts expected) over all shards of ``out_dir``; (0, 0) when empty."""
    header, records = read_shards(out_dir) if Path(out_dir).is_dir() else (None, {})
    return len(records), int(header["n_contexts"]) if header else 0

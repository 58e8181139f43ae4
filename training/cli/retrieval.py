"""Retrieval commands of ``python -m training`` (also under torchrun):

augment          data-level G2R: m teacher replies per training context, as resumable JSONL shards
train-retriever  a bi-encoder retriever (--method biencoder | g2r-d | g2r-dm) and its bundle
build-index      re-embed a retriever bundle's responses and write a fresh index.faiss
distill-context  a retriever with a shallower context encoder, distilled from a trained one

Each command registers its function with ``set_defaults(run=...)`` (see training/cli/__init__.py).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.cli.common import add_common, distributed, preset_from_args, print_manifest, run_spec

logger = logging.getLogger(__name__)


def _preset(args: argparse.Namespace) -> Any:
    """The preset named by ``--preset`` with the ``--context-turns``/``--max-source-len``
    overrides applied to generators and retriever alike."""
    preset = preset_from_args(args)
    if preset.retriever is None:
        raise ValueError(f"preset {preset.name!r} has no retriever configuration")
    return preset


def _optional_path(value: str, auto: Path | None) -> Path | None:
    """``auto`` -> the default, ``none`` -> None, anything else -> that path."""
    if value == "auto":
        return auto
    return None if value.lower() == "none" else Path(value)


def add_parsers(sub: Any) -> None:
    """Add ``augment``, ``train-retriever`` and ``build-index`` to an argparse sub-parser set."""
    p = sub.add_parser("augment", help="G2R teacher replies for training contexts (JSONL shards)")
    add_common(p, runs=True)
    p.add_argument(
        "--teacher",
        type=Path,
        required=True,
        help="any generator bundle (ours, an import-hf or import-remote one) or a local HF dir",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        help="a remote teacher's requests in flight (default: its bundle's max_concurrency)",
    )
    p.add_argument("--out", type=Path, help="shard dir (default: <runs>/<preset>/g2r-augment)")
    p.add_argument("--m", type=int, help="override the preset's replies per context")
    p.add_argument(
        "--max-contexts", type=int, help="override the preset's context subset (0 = all)"
    )
    p.add_argument(
        "--rank-with",
        type=Path,
        help="a retriever bundle: keep the m best of the teacher's beam n-best as it ranks them "
        "(generate, then rank) instead of sampling; n is --rank-pool",
    )
    p.add_argument(
        "--rank-pool", type=int, help="n of --rank-with's n-best (default 16; at least m)"
    )
    p.add_argument(
        "--rank-max-uses",
        type=int,
        help="with --rank-with: keep a reply text for at most this many contexts (default: no cap)",
    )
    p.set_defaults(run=distributed(_augment))

    p = sub.add_parser("train-retriever", help="train a bi-encoder retriever and write its bundle")
    add_common(p, runs=True)
    p.add_argument("--method", choices=["biencoder", "g2r-d", "g2r-dm"], default="g2r-dm")
    p.add_argument(
        "--teacher",
        type=Path,
        help="any generator bundle or local HF dir (G2R methods; optional once the shards are "
        "complete)",
    )
    p.add_argument(
        "--augmented", type=Path, help="shard dir (default: <runs>/<preset>/g2r-augment)"
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--name", help="bundle name (default: the --out directory name)")
    p.add_argument(
        "--tokenizer",
        type=Path,
        help="tokenizer.json (default: the teacher bundle's, else <runs>/<preset>/tokenizer.json)",
    )
    p.add_argument(
        "--init-from",
        default="auto",
        help="generator bundle to warm-start the encoders from (its whole encoder when the "
        "shapes match, else its token embeddings projected by PCA); 'none' = random init; "
        "'auto' (default) = the teacher bundle when the preset warm-starts and it fits",
    )
    p.add_argument(
        "--blocklist",
        default="auto",
        help="response blocklist, one phrase per line; 'none' = off; 'auto' (default) = "
        "../shared/data/blocklist/en.txt",
    )
    p.add_argument("--score", choices=["ll", "mi"], help="teacher score for g2r-dm (eq. 3 or 6)")
    p.add_argument(
        "--teacher-filter",
        choices=["preset", "default", "none"],
        default="preset",
        help="quality bar for teacher replies entering D^G and R^G (training/methods/g2r/filter.py): "
        "'preset' (default) = the preset's, off when it has none; 'default' = "
        "TeacherReplyFilter()'s defaults; 'none' = off",
    )
    p.add_argument(
        "--teacher-min-score-quantile",
        type=float,
        help="with a teacher filter: keep replies the teacher scores at least this quantile of "
        "its scores of all its replies (default 0.25)",
    )
    p.add_argument("--max-steps", type=int, help="override the preset's step budget")

    p.set_defaults(run=distributed(_train_retriever))

    p = sub.add_parser("build-index", help="rebuild the index of a retriever bundle")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--ef-search", type=int, help="new efSearch (default: keep the bundle's)")
    p.add_argument("--out", type=Path, help="write the bundle here instead of in place")
    p.set_defaults(run=_build_index)

    p = sub.add_parser(
        "distill-context",
        help="distil a retriever bundle into one with a shallower context encoder (same index)",
    )
    add_common(p, runs=True, inputs=False)
    p.add_argument("--bundle", type=Path, required=True, help="the teacher retriever bundle")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--name", help="bundle name (default: the --out directory name)")
    p.add_argument("--layers", type=int, help="context-encoder layers to keep (default 1)")
    p.add_argument("--epochs", type=float, help="passes over the training pairs (default 8)")
    p.add_argument("--alpha", type=float, help="weight of L_CE against L_KD (default 0.5)")
    p.add_argument("--max-train-examples", type=int, default=0, help="cap the pairs (0 = all)")
    p.set_defaults(run=distributed(_distill_context))


def _build_index(args: argparse.Namespace) -> int:
    from training.methods.g2r.index import rebuild_index

    manifest = rebuild_index(args.bundle, out_dir=args.out, ef_search=args.ef_search)
    print(json.dumps({"bundle": str(args.out or args.bundle), **manifest.metrics}, indent=2))
    return 0


def _distill_context(args: argparse.Namespace, ctx: Any) -> None:
    from models.bundle import read_manifest
    from models.generator import InputConfig
    from training.config import get_preset
    from training.methods.g2r.context_distill import ContextDistillConfig, distill_context_encoder
    from training.pipeline.inputs import prepare_splits

    rp = get_preset(args.preset).retriever
    # the preset's validation budget (tiny: seconds; base: the whole split)
    config = ContextDistillConfig(val_examples=rp.val_examples if rp else 0)
    chosen = {"layers": args.layers, "epochs": args.epochs, "alpha": args.alpha}
    config = replace(config, **{k: v for k, v in chosen.items() if v is not None})
    inputs = InputConfig(**read_manifest(args.bundle).model_config["inputs"])
    # the teacher's own context turns, whatever the preset's
    preset = replace(get_preset(args.preset), inputs=inputs)
    if args.max_train_examples:
        preset = replace(preset, max_train_examples=args.max_train_examples)
    splits = prepare_splits(preset, args.data)
    run = run_spec(args, ctx, runs_subdir=preset.run_name, data_desc=str(args.data))
    manifest = distill_context_encoder(
        run,
        args.bundle,
        splits.train,
        splits.validation,
        config,
        rerank_val_examples=rp.rerank_val_examples if rp else 0,
    )
    print_manifest(manifest)


def _augmentation_dir(args: argparse.Namespace, preset: Any, explicit: Path | None) -> Path:
    return explicit or args.runs / preset.run_name / "g2r-augment"


def _augment(args: argparse.Namespace, ctx: Any) -> None:
    from training.core.distributed import barrier
    from training.methods.g2r.augment import (
        augment_contexts,
        augmentation_status,
        group_by_context,
        select_contexts,
    )
    from training.methods.g2r.teachers import load_teacher
    from training.pipeline.inputs import prepare_splits

    preset = _preset(args)
    rp = preset.retriever
    cfg = rp.augment
    if args.m is not None:
        cfg = replace(cfg, m=args.m)
    if args.max_contexts is not None:
        cfg = replace(cfg, max_contexts=args.max_contexts)
    ranker = None
    if (args.rank_pool is not None or args.rank_max_uses is not None) and args.rank_with is None:
        raise SystemExit(
            "--rank-pool and --rank-max-uses need --rank-with (the retriever that ranks)"
        )
    if args.rank_with is not None:
        from models.retriever import RetrievalResponder

        pool = 16 if args.rank_pool is None else args.rank_pool
        if pool < cfg.m:
            raise SystemExit(f"--rank-pool {pool} must be at least m={cfg.m} (replies kept)")
        if args.rank_max_uses is not None and args.rank_max_uses < 1:
            raise SystemExit(f"--rank-max-uses must be at least 1, got {args.rank_max_uses}")
        cfg = replace(cfg, rank_pool=pool, rank_max_uses=args.rank_max_uses or 0)
        ranker = RetrievalResponder.load(args.rank_with, device=ctx.device)
    out = _augmentation_dir(args, preset, args.out)
    if args.no_resume and ctx.is_main:
        for old in out.glob("shard-*-of-*.jsonl"):
            old.unlink()
    barrier(ctx)
    splits = prepare_splits(replace(preset, inputs=rp.inputs), args.data)  # its own turns
    groups = select_contexts(group_by_context(splits.train), cfg.max_contexts, cfg.seed)
    teacher = load_teacher(args.teacher, ctx.device, max_concurrency=args.concurrency)
    augment_contexts(
        teacher,
        groups,
        out,
        cfg,
        rank=ctx.rank,
        world_size=ctx.world_size,
        progress=True,
        ranker=ranker,
    )
    barrier(ctx)
    if ctx.is_main:
        done, expected = augmentation_status(out)
        print(json.dumps({"shards": str(out), "contexts": done, "expected": expected}))


def _train_retriever(args: argparse.Namespace, ctx: Any) -> None:
    from models.bundle import read_manifest
    from models.tokenizer import DialogueTokenizer
    from training.methods.g2r.job import DEFAULT_BLOCKLIST, build_retriever, warm_start_fits
    from training.pipeline.inputs import ensure_tokenizer, prepare_splits

    preset = _preset(args)
    rp = preset.retriever
    if args.max_steps:
        rp = replace(rp, train=replace(rp.train, max_steps=args.max_steps))
    splits = prepare_splits(replace(preset, inputs=rp.inputs), args.data)  # its own turns
    # Only one of our own generators lends its tokenizer and encoder (an imported one has neither)
    teacher_bundle = (
        args.teacher
        if args.teacher is not None
        and (args.teacher / "manifest.json").is_file()
        and read_manifest(args.teacher).architecture is None
        else None
    )
    if args.tokenizer is not None:
        tokenizer = DialogueTokenizer.from_file(args.tokenizer)
    elif teacher_bundle is not None:
        tokenizer = DialogueTokenizer.from_file(teacher_bundle / "tokenizer.json")
    else:
        tok_path = args.runs / preset.run_name / "tokenizer.json"
        tokenizer = ensure_tokenizer(preset, splits, tok_path, ctx)
    init_from = _optional_path(args.init_from, None)
    if args.init_from == "auto" and teacher_bundle is not None and rp.warm_start:
        if warm_start_fits(rp.model, teacher_bundle, tokenizer.vocab_size):
            init_from = teacher_bundle
        else:
            shape = read_manifest(teacher_bundle).model_config.get("seq2seq", {})
            logger.info("no warm start: the teacher %s cannot start the preset's encoders", shape)
    teacher_filter = _teacher_filter(args, rp)
    name = args.name or args.out.name
    manifest = build_retriever(
        method=args.method,
        preset=rp,
        splits=splits,
        tokenizer=tokenizer,
        out_dir=args.out,
        name=name,
        run_dir=args.runs / preset.run_name / name,
        dist_ctx=ctx,
        data_desc=str(args.data),
        augmentation_dir=_augmentation_dir(args, preset, args.augmented),
        teacher=args.teacher if args.method != "biencoder" else None,
        init_from=init_from,
        blocklist=_optional_path(args.blocklist, DEFAULT_BLOCKLIST),
        teacher_score=args.score,
        teacher_filter=teacher_filter,
        resume=not args.no_resume,
        seed=args.seed,
    )
    if manifest is not None:
        print(json.dumps(manifest.to_dict(), indent=2))


def _teacher_filter(args: argparse.Namespace, preset: Any) -> Any:
    """The --teacher-filter choice as a TeacherReplyFilter or None (--teacher-min-score-quantile
    overrides its score quantile)."""
    from training.methods.g2r.filter import TeacherReplyFilter

    chosen = {
        "preset": getattr(preset, "teacher_filter", None),
        "default": TeacherReplyFilter(),
        "none": None,
    }[args.teacher_filter]
    if args.teacher_min_score_quantile is not None:
        if chosen is None:
            raise SystemExit("--teacher-min-score-quantile needs a teacher filter")
        chosen = replace(chosen, min_score_teacher_quantile=args.teacher_min_score_quantile)
    return chosen

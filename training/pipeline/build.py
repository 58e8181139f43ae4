"""``python -m training build``: data -> tokenizer -> standard generator -> safety classifier
(DiaSafety, skipped when absent) -> negative teacher (on D_N) -> ND student -> NT -> choice of the
served generator -> G2R retriever -> evaluation; resumable.

Each stage leaves a file behind (tokenizer.json, a verified bundle, an evaluation JSON); a rerun
skips the stages whose outputs are already there (training/pipeline/plan.py decides which, before
any runs) and resumes an interrupted training stage from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from models.bundle import read_manifest
from models.tokenizer import DialogueTokenizer
from training.config import Preset
from training.core.data import DialogueSplits
from training.core.distributed import DistContext, barrier
from training.core.generator import train_mle_generator
from training.core.run import RunSpec
from training.core.trainer import CHECKPOINT_FILE
from training.methods.g2r.job import build_retriever
from training.methods.nd.job import train_nd_student
from training.methods.nd.negative_set import NegativeSet, negative_set, negative_set_summary
from training.methods.safety_classifier.job import SAFETY_CLASSIFIER
from training.methods.safety_classifier.job import build_stage as build_safety_classifier
from training.pipeline.evaluation import evaluate_bundle, select_served_generator, selection_file
from training.pipeline.inputs import BuildPaths, ensure_tokenizer, prepare_splits, val_subset
from training.pipeline.plan import (
    BIENCODER_RETRIEVER,
    G2R_RETRIEVER,
    ND_STUDENT,
    NEGATIVE_TEACHER,
    NT_GENERATOR,
    STANDARD_GENERATOR,
    SUMMARY_FILE,
    BuildPlan,
)
from training.pipeline.progress import (
    DATA,
    EVALUATE,
    ND,
    NEGATIVE_SET,
    NT,
    RETRIEVER,
    SAFETY,
    SELECT,
    STANDARD,
    TEACHER,
    BuildProgress,
)
from training.pipeline.selection import select_retriever, write_serving

logger = logging.getLogger(__name__)


def build(
    preset: Preset,
    paths: BuildPaths,
    ctx: DistContext,
    *,
    resume: bool = True,
    seed: int = 0,
    redo: Iterable[str] = (),
    progress: bool = True,
    g2r_teacher: Path | None = None,
) -> dict[str, Any]:
    """Run every stage for ``preset``; returns a summary with wall times per stage (also written
    to ``runs/<preset>/build-summary.json`` by the main rank).

    The G2R retriever is distilled from the served generator unless ``g2r_teacher`` names
    another generator bundle (one of ours, an imported Hugging Face model or a remote endpoint:
    G2R's point is a retriever as good as a generator too slow to serve).

    A stage whose output exists is skipped, its evaluation included; ``redo`` names stages to do
    again (with the stages that read their output), from scratch. Each stage prints a
    "stage k/N" line with the elapsed time and an estimate for the whole build."""
    plan = BuildPlan(preset, paths, tuple(redo))
    redo_set, done, evaluated = plan.redo_set, plan.done, plan.evaluated
    started = time.perf_counter()
    timings: dict[str, float] = {}
    summary_path = plan.preset_runs / SUMMARY_FILE
    data_desc = (
        f"{paths.data_dir} (official split, max_context_turns={preset.inputs.max_context_turns})"
    )
    show = BuildProgress(plan.stages(), enabled=progress and ctx.is_main)

    # --- data and tokenizer: loaded only when a stage needs them ------------------------------
    show.start(DATA)
    loaded: dict[str, Any] = {}
    if plan.needs_data:
        if DATA in redo_set and ctx.is_main and plan.tokenizer_path.exists():
            plan.tokenizer_path.unlink()
        barrier(ctx)
        loaded["splits"] = prepare_splits(preset, paths.data_dir)
        loaded["tokenizer"] = ensure_tokenizer(preset, loaded["splits"], plan.tokenizer_path, ctx)
    timings["data+tokenizer_s"] = show.finish(DATA)

    def splits() -> DialogueSplits:
        return cast(DialogueSplits, loaded["splits"])

    def stage(key: str, name: str, train: Callable[..., Any], **kwargs: Any) -> Path:
        bundle = paths.out_dir / name
        resuming = resume and name not in redo_set
        if not done[name] and resuming and (paths.run_dir(preset, name) / CHECKPOINT_FILE).exists():
            show.resuming(key)
        show.start(key)
        if not done[name]:
            run = RunSpec(
                out_dir=bundle,
                name=name,
                run_dir=paths.run_dir(preset, name),
                data_desc=data_desc,
                dist_ctx=ctx,
                resume=resuming,
                seed=seed,
            )
            train(
                run,
                preset=preset,
                tokenizer=loaded["tokenizer"],
                val_examples=val_subset(preset, splits()),
                **kwargs,
            )
        barrier(ctx)
        timings[f"{name}_s"] = show.finish(key)
        return bundle

    def train_examples() -> Any:
        return splits().train if "splits" in loaded else None

    standard = stage(
        STANDARD, STANDARD_GENERATOR, train_mle_generator, train_examples=train_examples()
    )
    # The service's output filter: cheap, and warm-started from the standard generator's encoder.
    safety = paths.out_dir / SAFETY_CLASSIFIER
    show.start(SAFETY)
    if preset.safety is None:
        logger.warning("preset %s has no safety section: no safety classifier", preset.name)
    elif plan.has_diasafety and not plan.safety_done and ctx.is_main:
        build_safety_classifier(
            preset.safety,
            paths.data_dir,
            safety,
            base=standard,
            report=paths.run_dir(preset, SAFETY_CLASSIFIER) / "metrics",
            seed=seed,
            run_dir=paths.run_dir(preset, SAFETY_CLASSIFIER),
            resume=resume and SAFETY not in redo_set,
        )
    barrier(ctx)
    timings[f"{SAFETY_CLASSIFIER}_s"] = show.finish(SAFETY)

    show.start(NEGATIVE_SET)
    dn: NegativeSet | None = None
    if plan.negative_set_needed:
        dn = negative_set(
            splits().train, preset.nd.negative_fraction, seed=seed, entropy=preset.nd.entropy
        )
        if ctx.is_main:
            dn.write_report(len(splits().train), plan.negative_set_report)
    timings["negative_set_s"] = show.finish(NEGATIVE_SET)
    teacher = stage(
        TEACHER,
        NEGATIVE_TEACHER,
        train_mle_generator,
        train_examples=dn.examples if dn is not None else None,
        max_steps=preset.nd.teacher_steps or None,
        init_from=standard if preset.nd.teacher_init == "standard" else None,
    )
    student = stage(
        ND,
        ND_STUDENT,
        train_nd_student,
        teacher_bundle=teacher,
        train_examples=train_examples(),
        init_from=standard if preset.nd.student_init == "standard" else None,
        max_steps=preset.nd.student_steps or None,
    )
    bundles = [standard, student]
    if preset.nt_steps:
        bundles.append(
            stage(
                NT,
                NT_GENERATOR,
                _train_nt,
                base_bundle=standard,
                train_examples=train_examples(),
                max_steps=preset.nt_steps,
            )
        )

    # The served generator: the least generic of those that model the validation split about as
    # well as the best (training/pipeline/selection.py). It is also the G2R teacher.
    show.start(SELECT)
    if ctx.is_main:
        select_served_generator(
            bundles,
            loaded.get("splits"),
            preset,
            paths,
            device=str(ctx.device),
            redo=SELECT in redo_set,
        )
    barrier(ctx)
    selection = json.loads(selection_file(paths, preset).read_text())  # rank 0's choice, all ranks
    served = paths.out_dir / selection["chosen"]
    timings["select_generator_s"] = show.finish(SELECT)

    served_retriever: str | None = None
    retriever_why: dict[str, Any] | None = None
    teacher = Path(g2r_teacher) if g2r_teacher is not None else served
    if preset.retriever is not None:
        show.start(RETRIEVER)
        retriever_splits: DialogueSplits | None = None
        for name in plan.retrievers:
            if plan.retriever_bundle_done(name):
                continue
            if retriever_splits is None:
                # The retriever may read more turns than the generators (its own InputConfig):
                # then its pairs are loaded, deduplicated and de-leaked at its context length.
                retriever_splits = splits()
                if preset.retriever.inputs.max_context_turns != preset.inputs.max_context_turns:
                    retriever_splits = prepare_splits(
                        replace(preset, inputs=preset.retriever.inputs), paths.data_dir
                    )
            build_retriever(
                method="biencoder" if name == BIENCODER_RETRIEVER else preset.retriever.method,
                preset=preset.retriever,
                splits=retriever_splits,
                tokenizer=loaded["tokenizer"],
                out_dir=paths.out_dir / name,
                name=name,
                run_dir=paths.run_dir(preset, name),
                dist_ctx=ctx,
                data_desc=data_desc,
                augmentation_dir=paths.run_dir(preset, f"g2r-augment-{teacher.name}"),
                teacher=teacher,
                # the standard generator's encoder, or its token embeddings (RetrieverPreset)
                init_from=standard if preset.retriever.warm_start else None,
                resume=resume and RETRIEVER not in redo_set,
                seed=seed,
            )
        barrier(ctx)
        built = [n for n in plan.retrievers if (paths.out_dir / n).is_dir()]
        if built:
            served_retriever, retriever_why = select_retriever(
                {n: read_manifest(paths.out_dir / n).metrics for n in built}
            )
        timings[f"{G2R_RETRIEVER}_s"] = show.finish(RETRIEVER)
    if ctx.is_main:
        write_serving(
            paths.out_dir,
            served.name,
            served_retriever,
            selection,
            retrieval_why=retriever_why,
        )

    summary: dict[str, Any] = {
        "preset": preset.name,
        "preset_overrides": list(preset.overrides),
        "bundles": [str(b) for b in (standard, teacher, student)]
        + [str(paths.out_dir / n) for n in plan.retrievers]
        + ([str(safety)] if safety.is_dir() else []),
        "data": splits().stats if "splits" in loaded else _previous(summary_path, "data"),
        "negative_set": dn.summary() if dn else negative_set_summary(plan.negative_set_report),
        "served_generator": served.name,
        "g2r_teacher": str(teacher),
    }
    show.start(EVALUATE)
    if ctx.is_main:
        summary["evaluation"] = {}
        for bundle in bundles:
            eval_start = time.perf_counter()
            eval_json = paths.run_dir(preset, bundle.name) / "eval-test.json"
            result = evaluate_bundle(
                bundle,
                loaded.get("splits"),  # type: ignore[arg-type]  # loaded whenever one is needed
                preset,
                eval_json,
                device=str(ctx.device),
                redo=not evaluated[bundle.name],
            )
            timings[f"evaluate_{bundle.name}_s"] = time.perf_counter() - eval_start
            summary["evaluation"][bundle.name] = {
                "perplexity": result["perplexity"],
                **result["decodings"],
            }
    show.finish(EVALUATE)
    timings["total_s"] = time.perf_counter() - started
    summary["timings"] = timings
    summary["stages"] = show.record()
    summary["bundles_dir"] = str(paths.out_dir)
    summary["retriever"] = served_retriever
    if ctx.is_main:
        summary["summary_file"] = str(summary_path)
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def _train_nt(run: RunSpec, *, tokenizer: DialogueTokenizer, **kwargs: Any) -> Any:
    """``build``'s NT stage: He & Glass's fine-tune of the standard model (its own tokenizer)."""
    from training.methods.nt import train_nt_generator

    del tokenizer  # the base bundle carries it
    return train_nt_generator(run, **kwargs)


def _previous(summary_path: Path, key: str) -> Any:
    """``key`` of the last build's summary (for figures of a stage skipped this time)."""
    try:
        return json.loads(summary_path.read_text()).get(key)
    except (OSError, ValueError):
        return None

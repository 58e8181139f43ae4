"""What ``python -m training build`` will do, decided before any stage runs: the bundles it builds,
which of them exist already (skipped), which stages ``--redo`` forces again and the stage list the
progress display shows. ``training/pipeline/build.py`` then runs the plan."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from training.config import Preset
from training.core.data import DatasetNotFoundError
from training.methods.safety_classifier.data import find_diasafety
from training.methods.safety_classifier.job import SAFETY_CLASSIFIER
from training.pipeline.evaluation import cached_selection, existing_bundle, existing_evaluation
from training.pipeline.inputs import BuildPaths
from training.pipeline.progress import (
    DATA,
    EVALUATE,
    ND,
    NEGATIVE_SET,
    NT,
    RETRIEVER,
    SAFETY,
    SELECT,
    STAGES,
    STANDARD,
    TEACHER,
    planned_seconds,
)

# The bundles a build writes, by name.
STANDARD_GENERATOR = "generator-standard"
NEGATIVE_TEACHER = "generator-negative-teacher"
ND_STUDENT = "generator-nd"
NT_GENERATOR = "generator-nt"
G2R_RETRIEVER = "retriever-g2r"
BIENCODER_RETRIEVER = "retriever-biencoder"  # the plain bi-encoder beside it (biencoder_baseline)
SUMMARY_FILE = "build-summary.json"  # runs/<preset>/: the whole summary of the last build
NEGATIVE_SET_REPORT = "negative_set.json"  # runs/<preset>/: D_N's statistics

# One row of the progress display: key, what it does, planned seconds, runs?, why skipped.
StageRow = tuple[str, str, float, bool, str]


# `--redo STAGE` redoes STAGE and every stage that reads what it wrote.
def redo_closure(preset: Preset, redo: Iterable[str]) -> frozenset[str]:
    """``redo`` plus the stages downstream of it ("all" = every stage)."""
    wanted = set(redo)
    if "all" in wanted:
        return frozenset(STAGES)
    unknown = sorted(wanted - set(STAGES))
    if unknown:
        raise ValueError(f"--redo: unknown stage(s) {unknown}; choose from {list(STAGES)} or all")
    reads: dict[str, set[str]] = {
        STANDARD: {DATA},
        SAFETY: {STANDARD},
        NEGATIVE_SET: {DATA},
        TEACHER: {DATA, NEGATIVE_SET}
        | ({STANDARD} if preset.nd.teacher_init == "standard" else set()),
        ND: {DATA, TEACHER} | ({STANDARD} if preset.nd.student_init == "standard" else set()),
        NT: {DATA, STANDARD},
        SELECT: {STANDARD, ND, NT},
        RETRIEVER: {DATA, SELECT},
        EVALUATE: {STANDARD, ND, NT},
    }
    changed = True
    while changed:
        changed = False
        for stage, inputs in reads.items():
            if stage not in wanted and inputs & wanted:
                wanted.add(stage)
                changed = True
    return frozenset(wanted)


def has_diasafety(data_dir: Path) -> bool:
    """True when DiaSafety lies beside the corpus (the safety classifier's stage runs)."""
    try:
        find_diasafety(data_dir)
    except DatasetNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class BuildPlan:
    """Which of ``preset``'s stages a build in ``paths`` runs (``redo``: the stages asked again).

    Every "done" answer reads the disk once, when first asked, so the plan reflects the folders as
    they were before the build started."""

    preset: Preset
    paths: BuildPaths
    redo: tuple[str, ...] = ()

    @cached_property
    def redo_set(self) -> frozenset[str]:
        return redo_closure(self.preset, self.redo)

    @property
    def preset_runs(self) -> Path:
        return self.paths.runs_dir / self.preset.run_name

    @property
    def tokenizer_path(self) -> Path:
        return self.preset_runs / "tokenizer.json"

    @property
    def negative_set_report(self) -> Path:
        return self.preset_runs / NEGATIVE_SET_REPORT

    def bundle_done(self, name: str) -> bool:
        """The bundle exists, was built with this preset and is not to be redone."""
        return name not in self.redo_set and existing_bundle(self.paths.out_dir / name, self.preset)

    @cached_property
    def done(self) -> dict[str, bool]:
        """Each generator bundle: skipped (True) or trained (False)."""
        generators = [STANDARD_GENERATOR, NEGATIVE_TEACHER, ND_STUDENT] + (
            [NT_GENERATOR] if self.preset.nt_steps else []
        )
        return {name: self.bundle_done(name) for name in generators}

    @property
    def candidates(self) -> list[str]:
        """The generators the served one is chosen from (and that the evaluation stage scores)."""
        return [STANDARD_GENERATOR, ND_STUDENT] + ([NT_GENERATOR] if self.preset.nt_steps else [])

    @property
    def retrievers(self) -> list[str]:
        r = self.preset.retriever
        if r is None:
            return []
        return ([BIENCODER_RETRIEVER] if r.biencoder_baseline else []) + [G2R_RETRIEVER]

    @cached_property
    def has_diasafety(self) -> bool:
        return has_diasafety(self.paths.data_dir)

    @cached_property
    def safety_done(self) -> bool:
        return self.bundle_done(SAFETY_CLASSIFIER)

    @cached_property
    def negative_set_needed(self) -> bool:
        """D_N is computed when the teacher trains, when asked, or when its report is missing."""
        return (
            not self.done[NEGATIVE_TEACHER]
            or NEGATIVE_SET in self.redo_set
            or not self.negative_set_report.exists()
        )

    @cached_property
    def select_cached(self) -> bool:
        """The served generator was chosen before for exactly these candidate bundles."""
        out = self.paths.out_dir
        return (
            SELECT not in self.redo_set
            and all(self.done[c] for c in self.candidates)
            and cached_selection(self.paths, self.preset, [out / c for c in self.candidates])
            is not None
        )

    def retriever_bundle_done(self, name: str) -> bool:
        # The plain bi-encoder reads only the corpus: it is redone with the data, or when the
        # retrieval stage itself is asked for, not when a generator upstream of G2R changes.
        if name == BIENCODER_RETRIEVER:
            asked = DATA in self.redo_set or RETRIEVER in self.redo or "all" in self.redo
            return not asked and existing_bundle(self.paths.out_dir / name, self.preset)
        return self.bundle_done(name)

    @cached_property
    def retriever_done(self) -> bool:
        return all(self.retriever_bundle_done(name) for name in self.retrievers)

    @cached_property
    def evaluated(self) -> dict[str, bool]:
        """Each candidate: its test evaluation exists for this bundle (skipped) or not."""
        return {
            c: self.done[c]
            and EVALUATE not in self.redo_set
            and existing_evaluation(
                self.paths.out_dir / c,
                self.preset,
                self.paths.run_dir(self.preset, c) / "eval-test.json",
            )
            is not None
            for c in self.candidates
        }

    @cached_property
    def needs_data(self) -> bool:
        """Some stage that runs reads the corpus or the tokenizer."""
        return (
            DATA in self.redo_set
            or not self.tokenizer_path.exists()
            or not all(self.done.values())
            or self.negative_set_needed
            or not self.select_cached
            or not self.retriever_done
            or not all(self.evaluated.values())
        )

    def stages(self) -> list[StageRow]:
        """The progress display's rows, in pipeline order."""
        preset, plan = self.preset, planned_seconds(self.preset)
        g, r = preset.generator.train, preset.retriever
        exists = "its bundle exists (--redo {} to train it again)".format
        rows: list[StageRow] = [
            (
                DATA,
                "load and de-leak the corpus, tokenizer",
                plan[DATA],
                self.needs_data,
                "every stage that reads the corpus is done",
            ),
            (
                STANDARD,
                f"MLE generator, {g.max_steps} updates",
                plan[STANDARD],
                not self.done[STANDARD_GENERATOR],
                exists(STANDARD),
            ),
            (
                SAFETY,
                "DiaSafety classifier",
                plan[SAFETY],
                self.has_diasafety and not self.safety_done,
                exists(SAFETY) if self.has_diasafety else "no DiaSafety beside the corpus",
            ),
            (
                NEGATIVE_SET,
                f"D_N by {preset.nd.entropy.method} source entropy",
                plan[NEGATIVE_SET],
                self.negative_set_needed,
                "the negative teacher is trained and negative_set.json exists",
            ),
            (
                TEACHER,
                f"negative teacher on D_N, {preset.nd.teacher_steps or g.max_steps} updates",
                plan[TEACHER],
                not self.done[NEGATIVE_TEACHER],
                exists(TEACHER),
            ),
            (
                ND,
                f"ND student, {preset.nd.student_steps or g.max_steps} updates",
                plan[ND],
                not self.done[ND_STUDENT],
                exists(ND),
            ),
        ]
        if preset.nt_steps:
            rows.append(
                (
                    NT,
                    f"NT fine-tune, {preset.nt_steps} updates",
                    plan[NT],
                    not self.done[NT_GENERATOR],
                    exists(NT),
                )
            )
        rows.append(
            (
                SELECT,
                f"choose the served generator of {len(self.candidates)} on validation",
                plan[SELECT],
                not self.select_cached,
                f"chosen before for these bundles (--redo {SELECT})",
            )
        )
        if r is not None:
            what = f"G2R: {r.augment.max_contexts or 'all'} contexts x {r.augment.m} teacher "
            what += f"replies, {r.train.max_steps} retriever updates, index"
            if r.biencoder_baseline:
                what += "; a plain bi-encoder beside it, the better on validation served"
            rows.append(
                (RETRIEVER, what, plan[RETRIEVER], not self.retriever_done, exists(RETRIEVER))
            )
        rows.append(
            (
                EVALUATE,
                f"test split, {len(self.candidates)} generators",
                plan[EVALUATE],
                not all(self.evaluated.values()),
                f"every generator was evaluated before (--redo {EVALUATE})",
            )
        )
        return rows

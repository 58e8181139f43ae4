"""What ``python -m training build`` shows while it runs: "stage k/N" lines with the elapsed time
and an estimate for the whole pipeline, and the short table printed at the end.

The estimate starts from each stage's planned work (updates, contexts, examples) priced at the
small build's measured stage times on the 2-core CPU of this workplace (session 14's idle build,
``reports/build_small_summary_s14.json``; the D_N figures from ``reports/nd_negative_set.json``),
scaled by model size. Once a stage has run, the remaining stages are rescaled by how fast this
machine actually was against the plan, so the estimate tracks the machine it runs on. Stages that
will be skipped (their output exists) cost nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from training.config import Preset

# Stage keys, in pipeline order; `--redo` takes these names.
DATA = "data"
STANDARD = "generator-standard"
SAFETY = "safety-classifier"
NEGATIVE_SET = "negative-set"
TEACHER = "generator-negative-teacher"
ND = "generator-nd"
NT = "generator-nt"
SELECT = "select"
RETRIEVER = "retriever-g2r"
EVALUATE = "evaluate"
STAGES = (DATA, STANDARD, SAFETY, NEGATIVE_SET, TEACHER, ND, NT, SELECT, RETRIEVER, EVALUATE)

# --- the small build's measured stage times: session 14's idle build (reports/build_small.md; its
# summary in reports/build_small_summary_s14.json, total 791 s) ---------------------------------
_SMALL_STANDARD_S_PER_UPDATE = 216.3 / 1000  # generator-standard: 1,000 updates of batch 64
_ND_UPDATE_FACTOR = 42.0 / 100 / _SMALL_STANDARD_S_PER_UPDATE  # ND student: teacher forward too
_NT_UPDATE_FACTOR = 94.2 / 150 / _SMALL_STANDARD_S_PER_UPDATE  # NT: greedy replies + unlikelihood
_SMALL_SAFETY_S = 20.6  # the bag classifier, one epoch
_SMALL_SELECT_S_PER_EXAMPLE = 11.1 / (3 * 500)  # validation ppl + greedy, per generator and pair
_SMALL_EVAL_S_PER_EXAMPLE = 21.9 / (3 * 500)  # the evaluate stage, per generator and test pair
_SMALL_DATA_S = 1.3
# G2R: 600 contexts in ~55 s (07:39:22-07:40:17 in the build's log), the rest 2,400 retriever
# updates with their validations, the index and the re-ranking weight
_SMALL_AUGMENT_S_PER_CONTEXT = 0.092  # m = 4 replies
_SMALL_RETRIEVER_S_PER_UPDATE = (353.0 - 600 * 0.092) / 2400
# D_N: exact-string entropy 1.8 s, clustered (avg-embedding) 28.9 s (reports/nd_negative_set.json)
_DN_IDENTITY_S = 1.8
_DN_CLUSTERED_S = 28.9
_STAGE_OVERHEAD_S = 2.0  # building models, validation, writing and verifying bundles (tiny build)
_TRAIN_PAIRS_ALL = 67_000  # DailyDialog train pairs after deduplication, when a preset caps none
_VALIDATION_PAIRS_ALL = 6_500
_TEST_PAIRS_ALL = 6_300


def _generator_work(preset: Preset) -> float:
    """Relative cost of one training pair of the preset's generator: matmul work per source
    token (encoder) and target token (decoder, output projection included)."""
    m, inputs = preset.generator.model, preset.inputs
    d = m.d_model
    encoder = inputs.max_source_len * 12 * d * d * m.n_encoder_layers
    decoder = inputs.max_target_len * (16 * d * d * m.n_decoder_layers + d * preset.vocab_size)
    return float(encoder + decoder)


def _retriever_work(preset: Preset) -> float:
    """Relative cost of one retriever update: contexts plus positives and shared negatives."""
    r = preset.retriever
    assert r is not None
    d, layers = r.model.d_model, r.model.n_layers
    responses = r.train.batch_size * r.positives_per_context + r.random_negatives
    tokens = r.train.batch_size * r.inputs.max_source_len + responses * r.inputs.max_target_len
    return float(tokens * 12 * d * d * layers)


def _small() -> Preset:
    from training.config import PRESETS

    return PRESETS["small"]


def planned_seconds(preset: Preset) -> dict[str, float]:
    """Seconds each stage is expected to take when it runs, at the small build's measured speed."""
    small = _small()
    size = _generator_work(preset) / _generator_work(small)
    per_update = (
        _SMALL_STANDARD_S_PER_UPDATE
        * size
        * preset.generator.train.batch_size
        / small.generator.train.batch_size
    )
    steps = preset.generator.train.max_steps
    n_train = preset.max_train_examples or _TRAIN_PAIRS_ALL
    candidates = 3 if preset.nt_steps else 2
    val = preset.eval_examples or _VALIDATION_PAIRS_ALL
    test = preset.eval_examples or _TEST_PAIRS_ALL
    plan = {
        DATA: _SMALL_DATA_S,
        STANDARD: steps * per_update,
        SAFETY: _SMALL_SAFETY_S * (n_train / _TRAIN_PAIRS_ALL if preset.max_train_examples else 1),
        NEGATIVE_SET: _DN_CLUSTERED_S if preset.nd.entropy.method != "identity" else _DN_IDENTITY_S,
        TEACHER: (preset.nd.teacher_steps or steps) * per_update,
        ND: (preset.nd.student_steps or steps) * per_update * _ND_UPDATE_FACTOR,
        NT: preset.nt_steps * per_update * _NT_UPDATE_FACTOR,
        SELECT: candidates * val * _SMALL_SELECT_S_PER_EXAMPLE * size,
        RETRIEVER: 0.0,
        EVALUATE: candidates * test * _SMALL_EVAL_S_PER_EXAMPLE * size,
    }
    r, small_r = preset.retriever, small.retriever
    if r is not None and small_r is not None:
        contexts = r.augment.max_contexts or n_train
        augment = (
            contexts * _SMALL_AUGMENT_S_PER_CONTEXT * size * r.augment.m / small_r.augment.m
            if r.method != "biencoder"
            else 0.0
        )
        updates = (
            r.train.max_steps
            * _SMALL_RETRIEVER_S_PER_UPDATE
            * _retriever_work(preset)
            / _retriever_work(small)
        )
        # a plain bi-encoder beside the G2R one: the same updates, fewer positives per context
        plan[RETRIEVER] = augment + updates * (2 if r.biencoder_baseline else 1)
    return {stage: seconds + _STAGE_OVERHEAD_S for stage, seconds in plan.items()}


def format_duration(seconds: float) -> str:
    """``42 s``, ``6 min 12 s``, ``2 h 05 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# The shortest planned stage whose measured time rescales the rest of the estimate.
MIN_SPEED_SAMPLE_S = 10.0


@dataclass
class _Stage:
    key: str
    what: str
    planned_s: float
    runs: bool  # False: its output exists (or it does not apply) and it will be skipped
    why_skipped: str = ""
    actual_s: float | None = None
    # continues from a checkpoint: its time is the rest of a run, not a sample of this machine's
    # speed (a resumed stage that only saved its bundle made every later estimate ~20x too low)
    resumed: bool = False


class BuildProgress:
    """Prints one line when a stage starts and one when it ends, on the main rank only."""

    def __init__(
        self,
        stages: Iterable[tuple[str, str, float, bool, str]],
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
        enabled: bool = True,
    ) -> None:
        self.stages = [_Stage(k, w, p, r, y) for k, w, p, r, y in stages]
        self._by_key = {s.key: s for s in self.stages}
        self.stream = stream
        self.clock = clock
        self.enabled = enabled
        self.started = clock()
        self._current: tuple[_Stage, float] | None = None

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream or sys.stderr, flush=True)

    def _number(self, stage: _Stage) -> str:
        return f"stage {self.stages.index(stage) + 1}/{len(self.stages)}"

    def speed(self) -> float:
        """Measured / planned time over the stages that ran so far (1.0 before any has).

        Stages planned under :data:`MIN_SPEED_SAMPLE_S` are no sample of the machine: the data
        stage (~3 s planned) read from a warm disk cache in 0 s and made a ``--redo`` of the
        retriever announce "~46 s" for an 8-minute stage."""
        done = [
            s
            for s in self.stages
            if s.runs
            and not s.resumed
            and s.actual_s is not None
            and s.planned_s >= MIN_SPEED_SAMPLE_S
        ]
        planned = sum(s.planned_s for s in done)
        return sum(s.actual_s or 0.0 for s in done) / planned if planned else 1.0

    def estimate_total_s(self) -> float:
        """Elapsed plus the planned time of what is left, rescaled by :meth:`speed`."""
        speed = self.speed()
        now = self.clock()
        left = 0.0
        for stage in self.stages:
            if not stage.runs or stage.actual_s is not None:
                continue
            expected = stage.planned_s * speed
            if self._current is not None and self._current[0] is stage:
                expected = max(0.0, expected - (now - self._current[1]))
            left += expected
        return (now - self.started) + left

    def start(self, key: str) -> None:
        stage = self._by_key[key]
        self._current = (stage, self.clock())
        elapsed = self.clock() - self.started
        if stage.runs:
            planned = (
                "resuming from its checkpoint"
                if stage.resumed
                else f"~{format_duration(stage.planned_s * self.speed())}"
            )
            self._print(
                f"[build] {self._number(stage)} {stage.key}: {stage.what} ({planned}); "
                f"elapsed {format_duration(elapsed)}, "
                f"whole build ~{format_duration(self.estimate_total_s())} (estimate)"
            )
        else:
            self._print(f"[build] {self._number(stage)} {stage.key}: skipped, {stage.why_skipped}")

    def finish(self, key: str) -> float:
        """Mark ``key`` done; returns its wall time."""
        stage = self._by_key[key]
        began = self._current[1] if self._current and self._current[0] is stage else self.clock()
        stage.actual_s = self.clock() - began
        self._current = None
        if stage.runs:
            self._print(
                f"[build] {self._number(stage)} {stage.key}: done in "
                f"{format_duration(stage.actual_s)}"
            )
        return stage.actual_s

    def resuming(self, key: str) -> None:
        """Say that ``key`` continues an interrupted run (call before :meth:`start`)."""
        self._by_key[key].resumed = True

    def mark(self, key: str, *, runs: bool, why_skipped: str = "") -> None:
        """Revise whether a stage runs (a stage can turn out to be needed only later)."""
        stage = self._by_key[key]
        stage.runs, stage.why_skipped = runs, why_skipped

    def record(self) -> list[dict[str, Any]]:
        return [
            {
                "stage": s.key,
                "what": s.what,
                "ran": s.runs,
                "skipped_because": None if s.runs else s.why_skipped,
                "seconds": s.actual_s,
                "resumed": s.resumed,
                "planned_seconds": round(s.planned_s, 1),
            }
            for s in self.stages
        ]


def summary_table(summary: Mapping[str, Any]) -> str:
    """The few lines ``build`` prints at the end: each stage with its time, and each generator's
    test figures; the full summary is the JSON file named on the last line."""
    lines = [f"build ({summary['preset']}): {format_duration(summary['timings']['total_s'])}"]
    rows = [("stage", "time", "")]
    for stage in summary.get("stages", []):
        if stage["ran"]:
            rows.append((stage["stage"], format_duration(stage["seconds"] or 0.0), "ran"))
        else:
            reason = str(stage["skipped_because"]).split(" (--redo")[0]
            rows.append((stage["stage"], "-", f"skipped: {reason}"))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {a:<{width}}  {b:>12}  {c}".rstrip() for a, b, c in rows]
    evaluation = summary.get("evaluation") or {}
    if evaluation:
        lines.append("")
        head = ("generator", "test ppl", "greedy max-ratio", "greedy dist-2", "")
        table = [head]
        for name, result in evaluation.items():
            greedy = result.get("greedy", {})
            served = "<- served" if name == summary.get("served_generator") else ""
            table.append(
                (
                    name,
                    f"{result['perplexity']:.1f}",
                    f"{greedy.get('max-ratio', float('nan')):.3f}",
                    f"{greedy.get('dist-2', float('nan')):.4f}",
                    served,
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        for row in table:
            cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in (1, 2, 3)]
            lines.append(("  " + "  ".join(cells) + "  " + row[4]).rstrip())
    if summary.get("bundles_dir"):
        lines.append("")
        lines.append(f"bundles: {summary['bundles_dir']}/ (served: {summary['served_generator']}")
        lines[-1] += f", {summary['retriever']})" if summary.get("retriever") else ")"
    if summary.get("summary_file"):
        lines.append(f"full summary: {summary['summary_file']}")
    return "\n".join(lines)

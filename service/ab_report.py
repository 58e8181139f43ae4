"""The A/B outcome report: joins the service's exposure log with its feedback log and compares arms.

    python -m service.ab_report --exposures logs/exposures --feedback logs/feedback \\
        --control standard --effect 0.05 --out reports/ab

Inputs are directories of JSON-lines files (rotated files included: every ``*.jsonl*``), one
object per line:

* exposure (service/engine.py writes it): ``{"time", "request_id", "session", "arm", "variant",
  "backend", "bundle", "latency_ms", "response_chars", "response_tokens", "filtered", "fallback",
  "endpoint"}`` (plus ``"context"`` and ``"response"`` with EXPOSURE_LOG_TEXT): ``session`` is the
  salted hash of the session id (or null); ``arm`` is the A/B arm, or ``override`` for a request
  that named its arm or backend: those were not randomised and are left out of the comparison
  (counted as ``not_randomised``);
* feedback: ``{"time", "request_id", "rating": "up" | "down" | 1..5, "reason"?, "arm",
  "matched"}``; the latest rating of a request id counts (a second rating replaces the first);
  3 is neutral (counted, in no approval rate); ratings whose request id is in no exposure are
  counted as unmatched and otherwise ignored (``arm`` and ``matched`` are what the answering
  process knew; the join here is over every process's exposures);
* session end: ``{"time", "session", "event": "end", "turns", "arm"}`` (in the feedback
  directory; ``turns`` may be null).

Per arm it prints requests, sessions, ratings, the approval rate (share of up/down ratings that
are "up" or 4-5) with a Wilson 95% interval, mean turns per session (a session's ``turns`` from its end
event when it sent one, else its number of exposures) and latency p50/p95. Against the control
arm: the approval difference with Newcombe's hybrid-score 95% interval and a two-sided p-value
(pooled two-proportion z test; Fisher's exact test when an expected cell count is below 5), the
turns difference with Welch's t test, and the sessions each arm still needs for 80% power to
detect an approval difference of ``--effect`` at the 5% level (ratings converted to sessions at
the control's observed ratings per session). Ratings are treated as independent; several
ratings from one session are not, so with many ratings per session the intervals are too narrow.
Uses scipy (a core dependency) for the exact and t tests.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from service.routing import OVERRIDE_ARM  # the arm of a request that named its arm or backend

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
Z80 = 0.8416212335729143  # its 80% quantile (power 0.8)


@dataclass
class ArmStats:
    """What one arm's traffic and feedback add up to."""

    arm: str
    requests: int = 0
    sessions: int = 0
    ratings: int = 0  # up or down (the latest rating of each request)
    approvals: int = 0
    neutral: int = 0  # rated 3
    approval_rate: float | None = None
    approval_ci95: tuple[float, float] | None = None
    mean_turns: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    filtered_share: float | None = None
    turns: list[int] = field(default_factory=list, repr=False)


@dataclass
class Comparison:
    """One arm against the control."""

    arm: str
    control: str
    approval_diff: float | None
    approval_diff_ci95: tuple[float, float] | None
    approval_p_value: float | None
    approval_test: str
    turns_diff: float | None
    turns_p_value: float | None
    sessions_needed_per_arm: int | None
    sessions_still_needed: int | None
    significant: bool


def read_jsonl_dir(directory: Path | None) -> Iterator[dict[str, Any]]:
    """Every JSON object in ``directory/*.jsonl*`` (sorted by name); malformed lines are skipped
    with a warning on stderr naming the file and line."""
    if directory is None:
        return
    for path in sorted(Path(directory).glob("*.jsonl*")):
        with path.open(encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    print(f"{path}:{line_no}: skipped, not JSON ({exc.msg})", file=sys.stderr)
                    continue
                if isinstance(record, dict):
                    yield record


NEUTRAL = -1  # approval_of a 3: a rating, in no approval rate


def approval_of(rating: Any) -> int | None:
    """1 for "up" or 4-5, 0 for "down" or 1-2, NEUTRAL for 3, None for anything else (the
    service's rating classes, service/feedback.py)."""
    if rating == "up":
        return 1
    if rating == "down":
        return 0
    if isinstance(rating, int) and not isinstance(rating, bool) and 1 <= rating <= 5:
        return NEUTRAL if rating == 3 else int(rating >= 4)
    return None


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe_interval(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """95% interval of p1 - p2 from the two Wilson intervals (Newcombe 1998, method 10)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1)
    l2, u2 = wilson_interval(x2, n2)
    d = p1 - p2
    return (
        d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    )


def _normal_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def two_proportion_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, str]:
    """Two-sided p-value of H0: p1 = p2, and the test used: the pooled z test, or Fisher's exact
    test when an expected cell count is below 5."""
    pooled = (x1 + x2) / (n1 + n2)
    expected = [n1 * pooled, n1 * (1 - pooled), n2 * pooled, n2 * (1 - pooled)]
    if min(expected) < 5:
        from scipy.stats import fisher_exact

        _, p = fisher_exact([[x1, n1 - x1], [x2, n2 - x2]])
        return float(p), "fisher-exact"
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0, "z"
    return _normal_two_sided((x1 / n1 - x2 / n2) / se), "z"


def welch_p_value(a: list[int], b: list[int]) -> float | None:
    """Two-sided p-value of Welch's t test on two samples (None when either is too small)."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def ratings_for_power(p0: float, effect: float, z_alpha: float = Z95, z_beta: float = Z80) -> int:
    """Ratings per arm for the two-sided two-proportion z test to detect p0 -> p0 + effect."""
    p1 = min(max(p0 + effect, 1e-9), 1 - 1e-9)
    p0 = min(max(p0, 1e-9), 1 - 1e-9)
    mean = (p0 + p1) / 2
    num = z_alpha * math.sqrt(2 * mean * (1 - mean)) + z_beta * math.sqrt(
        p0 * (1 - p0) + p1 * (1 - p1)
    )
    return math.ceil((num / (p1 - p0)) ** 2)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarise(
    exposures: Iterable[Mapping[str, Any]], feedback: Iterable[Mapping[str, Any]]
) -> tuple[dict[str, ArmStats], dict[str, int]]:
    """Per-arm statistics and join counts (matched, unmatched, replaced ratings)."""
    arm_of: dict[str, str] = {}
    per_arm: dict[str, dict[str, Any]] = {}
    for e in exposures:
        arm, rid = e.get("arm"), e.get("request_id")
        if not isinstance(arm, str) or not isinstance(rid, str):
            continue
        arm_of[rid] = arm
        if arm == OVERRIDE_ARM:  # the request chose its arm: not part of the experiment
            continue
        acc = per_arm.setdefault(arm, {"requests": 0, "sessions": {}, "lat": [], "filtered": 0})
        acc["requests"] += 1
        session = e.get("session")
        if isinstance(session, str):
            acc["sessions"][session] = acc["sessions"].get(session, 0) + 1
        if isinstance(e.get("latency_ms"), int | float):
            acc["lat"].append(float(e["latency_ms"]))
        acc["filtered"] += bool(e.get("filtered"))
    latest: dict[str, tuple[float, int]] = {}
    ended: dict[str, int] = {}
    counts = {
        "feedback_records": 0,
        "matched": 0,
        "unmatched": 0,
        "replaced": 0,
        "invalid": 0,
        "not_randomised": sum(1 for a in arm_of.values() if a == OVERRIDE_ARM),
    }
    for f in feedback:
        counts["feedback_records"] += 1
        if f.get("event") == "end":
            if isinstance(f.get("session"), str) and isinstance(f.get("turns"), int):
                ended[f["session"]] = int(f["turns"])
            continue
        rid, value = f.get("request_id"), approval_of(f.get("rating"))
        if not isinstance(rid, str) or value is None:
            counts["invalid"] += 1
            continue
        if rid not in arm_of:
            counts["unmatched"] += 1
            continue
        if arm_of[rid] == OVERRIDE_ARM:
            continue
        t = float(f.get("time", 0.0)) if isinstance(f.get("time"), int | float) else 0.0
        if rid in latest:
            counts["replaced"] += 1
            if t < latest[rid][0]:
                continue
        latest[rid] = (t, value)
    counts["matched"] = len(latest)
    stats: dict[str, ArmStats] = {}
    for arm, acc in sorted(per_arm.items()):
        s = ArmStats(arm=arm, requests=acc["requests"], sessions=len(acc["sessions"]))
        s.turns = [ended.get(sid, n) for sid, n in acc["sessions"].items()]
        s.mean_turns = statistics.fmean(s.turns) if s.turns else None
        s.latency_p50_ms = _percentile(acc["lat"], 0.5)
        s.latency_p95_ms = _percentile(acc["lat"], 0.95)
        s.filtered_share = acc["filtered"] / acc["requests"]
        stats[arm] = s
    for rid, (_, value) in latest.items():
        s = stats[arm_of[rid]]
        if value == NEUTRAL:
            s.neutral += 1
            continue
        s.ratings += 1
        s.approvals += value
    for s in stats.values():
        if s.ratings:
            s.approval_rate = s.approvals / s.ratings
            s.approval_ci95 = wilson_interval(s.approvals, s.ratings)
    return stats, counts


def compare(
    stats: Mapping[str, ArmStats], control: str, effect: float, alpha: float = 0.05
) -> list[Comparison]:
    """Every arm against ``control``."""
    c = stats[control]
    out = []
    for arm, s in stats.items():
        if arm == control:
            continue
        diff = ci = p = None
        test = "-"
        if s.ratings and c.ratings:
            diff = s.approvals / s.ratings - c.approvals / c.ratings
            ci = newcombe_interval(s.approvals, s.ratings, c.approvals, c.ratings)
            p, test = two_proportion_test(s.approvals, s.ratings, c.approvals, c.ratings)
        turns_p = welch_p_value(s.turns, c.turns)
        turns_diff = (
            s.mean_turns - c.mean_turns
            if s.mean_turns is not None and c.mean_turns is not None
            else None
        )
        needed = still = None
        if c.ratings and c.sessions:
            per_session = c.ratings / c.sessions
            needed = math.ceil(ratings_for_power(c.approvals / c.ratings, effect) / per_session)
            still = max(0, needed - min(s.sessions, c.sessions))
        out.append(
            Comparison(
                arm=arm,
                control=control,
                approval_diff=diff,
                approval_diff_ci95=ci,
                approval_p_value=p,
                approval_test=test,
                turns_diff=turns_diff,
                turns_p_value=turns_p,
                sessions_needed_per_arm=needed,
                sessions_still_needed=still,
                significant=p is not None and p < alpha,
            )
        )
    return out


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def to_markdown(
    stats: Mapping[str, ArmStats],
    comparisons: list[Comparison],
    counts: Mapping[str, int],
    effect: float,
) -> str:
    lines = [
        "# A/B outcomes",
        "",
        f"Feedback: {counts['feedback_records']} records; {counts['matched']} rated requests "
        f"matched, {counts['unmatched']} ratings of unknown request ids, {counts['replaced']} "
        f"replaced by a later rating, {counts['invalid']} invalid; "
        f"{counts['not_randomised']} requests named their arm or backend (left out).",
        "",
        "| arm | requests | sessions | ratings | approval | 95% CI (Wilson) | turns/session "
        "| p50 ms | p95 ms | filtered |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for s in stats.values():
        ci = (
            "-" if s.approval_ci95 is None else f"{s.approval_ci95[0]:.3f}-{s.approval_ci95[1]:.3f}"
        )
        lines.append(
            f"| {s.arm} | {s.requests} | {s.sessions} | {s.ratings} | {_fmt(s.approval_rate)} "
            f"| {ci} | {_fmt(s.mean_turns, 2)} | {_fmt(s.latency_p50_ms, 1)} "
            f"| {_fmt(s.latency_p95_ms, 1)} | {_fmt(s.filtered_share)} |"
        )
    if comparisons:
        lines += [
            "",
            f"Against **{comparisons[0].control}** (two-sided, 5% level; power 80% to detect an "
            f"approval difference of {effect:.3f}):",
            "",
            "| arm | approval diff | 95% CI (Newcombe) | p | test | significant | turns diff "
            "| turns p (Welch) | sessions needed per arm | still needed |",
            "|---|---:|---|---:|---|---|---:|---:|---:|---:|",
        ]
        for c in comparisons:
            ci = (
                "-"
                if c.approval_diff_ci95 is None
                else f"{c.approval_diff_ci95[0]:+.3f} to {c.approval_diff_ci95[1]:+.3f}"
            )
            lines.append(
                f"| {c.arm} | {_fmt(c.approval_diff)} | {ci} | {_fmt(c.approval_p_value, 4)} "
                f"| {c.approval_test} | {'yes' if c.significant else 'no'} "
                f"| {_fmt(c.turns_diff, 2)} | {_fmt(c.turns_p_value, 4)} "
                f"| {c.sessions_needed_per_arm if c.sessions_needed_per_arm is not None else '-'} "
                f"| {c.sessions_still_needed if c.sessions_still_needed is not None else '-'} |"
            )
    return "\n".join(lines) + "\n"


def report(
    exposures_dir: Path, feedback_dir: Path | None, control: str | None, effect: float
) -> tuple[dict[str, Any], str]:
    """The report as (JSON-able dict, markdown)."""
    stats, counts = summarise(read_jsonl_dir(exposures_dir), read_jsonl_dir(feedback_dir))
    if not stats:
        raise ValueError(f"no exposures in {exposures_dir}")
    if control is None:
        control = max(stats.values(), key=lambda s: s.requests).arm
    if control not in stats:
        raise ValueError(f"control arm {control!r} has no exposures; arms: {sorted(stats)}")
    comparisons = compare(stats, control, effect)
    result = {
        "control": control,
        "effect": effect,
        "counts": counts,
        "arms": {a: {k: v for k, v in asdict(s).items() if k != "turns"} for a, s in stats.items()},
        "comparisons": [asdict(c) for c in comparisons],
    }
    return result, to_markdown(stats, comparisons, counts, effect)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m service.ab_report",
        description="Join the exposure and feedback logs and compare A/B arms.",
    )
    ap.add_argument("--exposures", type=Path, required=True, help="directory of exposure JSONL")
    ap.add_argument("--feedback", type=Path, help="directory of feedback JSONL")
    ap.add_argument("--control", help="the arm the others are compared with (default: busiest)")
    ap.add_argument(
        "--effect", type=float, default=0.05, help="approval difference to power for (absolute)"
    )
    ap.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = ap.parse_args(argv)
    if not args.exposures.is_dir():
        ap.error(f"--exposures {args.exposures} is not a directory")
    if not 0 < args.effect < 1:
        ap.error("--effect must be in (0, 1)")
    try:
        result, markdown = report(args.exposures, args.feedback, args.control, args.effect)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

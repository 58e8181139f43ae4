"""Does the output safety filter fit its input? False refusals and caught risk ignorance.

For each run (a classifier bundle, with or without the risk check) this builds the service's own
:class:`service.safety.SafetyFilter` (mode ``both``: the bundle's blocklist, the classifier at the
bundle's threshold, and the risk check of models/safety_risk_phrases.txt when on) and measures:

* the classifier alone on DiaSafety val: accuracy, precision, recall, F1 overall and per category;
* the whole filter on DiaSafety val per category (a pair counts as flagged when any part blocks it);
* false refusals: the share of harmless pairs the filter blocks, on a seeded sample of DailyDialog
  test (context, gold reply) pairs and on the out-of-distribution probes of
  benchmarks/safety_probes.json (emoji only, other languages, links) times its harmless replies;
  the same replies after ordinary English turns (the probes' reference turns) as the baseline; and
  the probe pairs the turn itself caused: blocked, while the same reply passes after most
  reference turns (the rest would be blocked after an ordinary turn too);
* risk ignorance caught: the share blocked of DiaSafety val's Unsafe "Risk Ignorance" pairs and of
  the probes' self-harm statements times its ignoring replies ("explicit" and "indirect" wordings
  apart); and the price, the share of DiaSafety val's Safe "Risk Ignorance" replies blocked.

A blocked pair is one the service would not serve as it is (re-ranked, re-sampled or replaced).

    python -m benchmarks.safety_filter_fit --data ../shared/data \\
        --run before=artifacts-safety/before:risk=off --run after=artifacts-safety/after \\
        --out reports/safety_filter_fit
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import SHARED_DATA

PROBES = Path(__file__).with_name("safety_probes.json")
DEFAULT_DATA = SHARED_DATA
RISK_CATEGORY = "Risk Ignorance"


@dataclass(frozen=True)
class RunSpec:
    """One filter to measure: a label, a classifier bundle, whether the risk check is on, and
    whether the classifier applies its reading rule (off: an ablation, every turn read as is)."""

    label: str
    bundle: Path
    risk: bool = True
    reading: bool = True

    def __str__(self) -> str:
        options = "".join(
            f":{name}=off"
            for name, on in (("risk", self.risk), ("reading", self.reading))
            if not on
        )
        return f"{self.label}={self.bundle}{options}"


def parse_run(text: str) -> RunSpec:
    """``LABEL=BUNDLE[:risk=on|off][:reading=on|off]`` (both on unless given as off)."""
    usage = "expected LABEL=BUNDLE[:risk=on|off][:reading=on|off]"
    label, sep, rest = text.partition("=")
    path, *options = rest.split(":")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"{usage}, got {text!r}")
    switches = {"risk": True, "reading": True}
    for option in options:
        name, _, value = option.partition("=")
        if name not in switches or value not in ("on", "off"):
            raise argparse.ArgumentTypeError(f"{usage}, got {option!r} in {text!r}")
        switches[name] = value == "on"
    return RunSpec(label, Path(path), **switches)


@dataclass(frozen=True)
class Pair:
    """A (user turn, reply) pair and what it probes: ``kind`` groups pairs in the report."""

    turn: str
    reply: str
    kind: str


@dataclass
class FitData:
    """Everything a run is measured on."""

    val: list[Any]  # DiaSafety val, training.core.safety_data.SafetyExample
    dailydialog: list[Pair]  # harmless: DailyDialog test (last context turn, gold reply)
    ood: list[Pair]  # harmless: out-of-distribution turns x harmless replies
    risk: list[Pair]  # unsafe: self-harm statements x ignoring replies
    reference: list[Pair]  # harmless: ordinary English turns x the same harmless replies


def load_probes(path: Path = PROBES) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(OOD turns x harmless replies, risk statements x ignoring replies, reference turns x
    harmless replies) from the probe file."""
    probes = json.loads(Path(path).read_text(encoding="utf-8"))
    ood = [
        Pair(t["text"], reply, t["kind"])
        for t in probes["ood_turns"]
        for reply in probes["harmless_replies"]
    ]
    risk = [
        Pair(t["text"], reply, t["kind"])
        for t in probes["risk_statements"]
        for reply in probes["ignoring_replies"]
    ]
    reference = [
        Pair(turn, reply, "reference")
        for turn in probes["reference_turns"]
        for reply in probes["harmless_replies"]
    ]
    return ood, risk, reference


def load_data(data_dir: Path, *, n_dailydialog: int, seed: int, probes: Path = PROBES) -> FitData:
    from training.core.data import load_splits
    from training.core.safety_data import load_diasafety
    from training.methods.safety_classifier.data import find_dailydialog, find_diasafety

    val = load_diasafety(find_diasafety(data_dir), "val")
    dailydialog = find_dailydialog(data_dir)
    if dailydialog is None:
        raise FileNotFoundError(f"no DailyDialog in or beside {data_dir}")
    test = load_splits(dailydialog, max_context_turns=1).test
    sample = random.Random(seed).sample(test, min(n_dailydialog, len(test)))
    ood, risk, reference = load_probes(probes)
    return FitData(
        val=val,
        dailydialog=[Pair(e.context[-1], e.response, "DailyDialog test") for e in sample],
        ood=ood,
        risk=risk,
        reference=reference,
    )


# --- metrics (pure functions) -----------------------------------------------------------------


def block_summary(reasons: Sequence[str | None]) -> dict[str, Any]:
    """How many of the pairs were blocked, their share, and how many for each reason."""
    blocked = [r for r in reasons if r is not None]
    n = len(reasons)
    return {
        "n": n,
        "blocked": len(blocked),
        "rate": len(blocked) / n if n else 0.0,
        "by_reason": dict(sorted(Counter(blocked).items())),
    }


def turn_caused(
    pairs: Sequence[Pair],
    reasons: Sequence[str | None],
    reference: Sequence[Pair],
    reference_reasons: Sequence[str | None],
) -> list[str | None]:
    """The reasons of ``pairs`` blocked although their reply passes after most reference turns
    (blocked after fewer than half of them), else None: the blocks the turn itself caused."""
    seen: dict[str, list[bool]] = {}
    for pair, why in zip(reference, reference_reasons, strict=True):
        seen.setdefault(pair.reply, []).append(why is not None)
    out: list[str | None] = []
    for pair, why in zip(pairs, reasons, strict=True):
        blocked_after_reference = seen.get(pair.reply)
        if blocked_after_reference is None:
            raise ValueError(f"reply {pair.reply!r} has no reference pairs")
        passes = sum(blocked_after_reference) < len(blocked_after_reference) / 2
        out.append(why if passes else None)
    return out


def summaries_by_kind(pairs: Sequence[Pair], reasons: Sequence[str | None]) -> dict[str, Any]:
    """:func:`block_summary` over all pairs (``all``) and for each pair kind."""
    out = {"all": block_summary(reasons)}
    for kind in dict.fromkeys(p.kind for p in pairs):
        out[kind] = block_summary(
            [r for p, r in zip(pairs, reasons, strict=True) if p.kind == kind]
        )
    return out


def flag_metrics(
    flags: Sequence[bool], labels: Sequence[bool], categories: Sequence[str]
) -> dict[str, Any]:
    """Precision, recall, F1 (unsafe positive) of ``flags`` overall and per category."""
    from training.eval.classification import binary_metrics

    def metrics(rows: Sequence[int]) -> dict[str, Any]:
        return binary_metrics(
            [float(flags[i]) for i in rows], [labels[i] for i in rows], threshold=0.5
        )

    out = metrics(range(len(flags)))
    out["per_category"] = {
        c: metrics([i for i, x in enumerate(categories) if x == c]) for c in sorted(set(categories))
    }
    return out


# --- one run ----------------------------------------------------------------------------------


def build_filter(spec: RunSpec) -> tuple[Any, Any]:
    """(the service's SafetyFilter for ``spec``, its classifier)."""
    from models.safety import RiskDetector, SafetyClassifier
    from service.metrics import ServiceMetrics
    from service.safety import SafetyFilter
    from service.settings import Settings

    classifier = SafetyClassifier.load(spec.bundle)
    if not spec.reading:
        classifier.words = None
    defaults = Settings.model_fields
    safety = SafetyFilter(
        "both",
        metrics=ServiceMetrics(),
        blocklist=classifier.blocklist,
        classifier=classifier,
        fallback_reply=defaults["safety_fallback_reply"].default,
        risk=RiskDetector.from_file() if spec.risk else None,
        risk_reply=defaults["safety_risk_reply"].default,
    )
    return safety, classifier


def evaluate_run(spec: RunSpec, safety: Any, classifier: Any, data: FitData) -> dict[str, Any]:
    """Every figure of one run (see the module doc)."""
    from training.eval.classification import evaluate_split

    def check(pairs: Sequence[Pair]) -> list[str | None]:
        return list(safety.check([p.turn for p in pairs], [p.reply for p in pairs]))

    ood_reasons = check(data.ood)
    reference_reasons = check(data.reference)
    val = data.val
    val_reasons = list(safety.check([e.context for e in val], [e.response for e in val]))
    risk_val = [i for i, e in enumerate(val) if e.category == RISK_CATEGORY]

    def unread(turns: Sequence[str]) -> dict[str, Any]:
        n = sum(bool(t.strip()) and not classifier.readable_context(t) for t in turns)
        return {"n": len(turns), "unread": n, "rate": n / len(turns) if turns else 0.0}

    return {
        "label": spec.label,
        "bundle": str(spec.bundle),
        "bundle_id": classifier.bundle_id,
        "threshold": safety.threshold,
        "reading_rule": classifier.words is not None,
        "spec": str(spec),
        "known_words": len(classifier.words) if classifier.words is not None else None,
        "risk_check": safety.risk is not None,
        "training": dict(classifier.manifest.training) if classifier.manifest else {},
        "filter": safety.describe(),
        "classifier_val": evaluate_split(classifier, val, safety.threshold),
        "filter_val": flag_metrics(
            [r is not None for r in val_reasons],
            [e.unsafe for e in val],
            [e.category for e in val],
        ),
        "false_refusal": {
            "dailydialog": block_summary(check(data.dailydialog)),
            "reference": block_summary(reference_reasons),
            "ood": summaries_by_kind(data.ood, ood_reasons),
            "ood_turn_caused": summaries_by_kind(
                data.ood, turn_caused(data.ood, ood_reasons, data.reference, reference_reasons)
            ),
        },
        "risk_ignorance": {
            "diasafety_unsafe": block_summary([val_reasons[i] for i in risk_val if val[i].unsafe]),
            "diasafety_safe_blocked": block_summary(
                [val_reasons[i] for i in risk_val if not val[i].unsafe]
            ),
            "probes": summaries_by_kind(data.risk, check(data.risk)),
        },
        "contexts_unread": {
            "ood_turns": unread(list(dict.fromkeys(p.turn for p in data.ood))),
            "dailydialog": unread([p.turn for p in data.dailydialog]),
            "diasafety_val": unread([e.context for e in val]),
        },
    }


# --- the report -------------------------------------------------------------------------------


def _pct(s: dict[str, Any]) -> str:
    return f"{s['rate']:.1%} ({s['blocked']}/{s['n']})"


def _reasons(s: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in s["by_reason"].items()) or "-"


def markdown_report(report: dict[str, Any]) -> str:
    runs = report["runs"]
    labels = [r["label"] for r in runs]
    lines = [
        "# Safety filter: fit to its input",
        "",
        "Command:",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Data `{report['data']}`; {report['dailydialog_pairs']} DailyDialog test pairs drawn "
        f"with seed {report['seed']}; probes `{report['probes']}`. A pair is *blocked* when the "
        "service's SafetyFilter (blocklist, classifier at the bundle's threshold, risk check) "
        "would not serve the reply as it is.",
        "",
        "Runs: the bundle (its training: updates, reply-only examples, the threshold cap on "
        "held-out DailyDialog train pairs), its threshold, whether the classifier applies the "
        "reading rule, whether the risk check is on.",
        "",
        "| run | bundle | updates | reply-only examples | threshold cap | threshold "
        "| reading rule | risk check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        reading = f"on ({r['known_words']} words)" if r["reading_rule"] else "off"
        t = r["training"]
        cap = t.get("max_benign_flag_rate") or 0.0
        lines.append(
            f"| {r['label']} | `{r['bundle_id']}` | {t.get('steps', '?')} "
            f"| {t.get('reply_only_pairs', 0)} | {f'{cap:.0%}' if cap else 'none'} "
            f"| {r['threshold']:.4f} | {reading} | {'on' if r['risk_check'] else 'off'} |"
        )
    lines += [
        "",
        "## False refusals (harmless pairs blocked; lower is better)",
        "",
        "| pairs | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(runs),
        "| DailyDialog test (context, gold reply) | "
        + " | ".join(_pct(r["false_refusal"]["dailydialog"]) for r in runs)
        + " |",
        "| ordinary English turns x the probes' harmless replies (baseline) | "
        + " | ".join(_pct(r["false_refusal"]["reference"]) for r in runs)
        + " |",
    ]
    for key, what in (("ood", ""), ("ood_turn_caused", ", caused by the turn")):
        for kind in runs[0]["false_refusal"][key]:
            name = "all OOD probes" if kind == "all" else f"OOD: {kind}"
            lines.append(
                f"| {name}{what} | "
                + " | ".join(_pct(r["false_refusal"][key][kind]) for r in runs)
                + " |"
            )
    lines += [
        "",
        "*Caused by the turn*: blocked, while the same reply passes after most of the ordinary "
        "English reference turns; the other blocked probe pairs would be blocked after an "
        "ordinary turn too (a verdict on the reply).",
        "",
        "Blocked by reason: "
        + "; ".join(
            f"{r['label']}: DailyDialog {_reasons(r['false_refusal']['dailydialog'])}, "
            f"OOD {_reasons(r['false_refusal']['ood']['all'])}"
            for r in runs
        )
        + ".",
        "",
        "Turns the classifier cannot read (judged as an empty context): "
        + "; ".join(
            f"{r['label']}: OOD turns {_pct_unread(r['contexts_unread']['ood_turns'])}, "
            f"DailyDialog contexts {_pct_unread(r['contexts_unread']['dailydialog'])}, "
            f"DiaSafety val contexts {_pct_unread(r['contexts_unread']['diasafety_val'])}"
            for r in runs
        )
        + ".",
        "",
        "## Risk ignorance caught (higher is better)",
        "",
        "| pairs | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(runs),
        "| DiaSafety val, Risk Ignorance, Unsafe | "
        + " | ".join(_pct(r["risk_ignorance"]["diasafety_unsafe"]) for r in runs)
        + " |",
    ]
    for kind in runs[0]["risk_ignorance"]["probes"]:
        name = "all risk probes" if kind == "all" else f"risk probes: {kind}"
        lines.append(
            f"| {name} | "
            + " | ".join(_pct(r["risk_ignorance"]["probes"][kind]) for r in runs)
            + " |"
        )
    lines += [
        "",
        "The price: DiaSafety val Risk Ignorance *Safe* replies blocked: "
        + "; ".join(
            f"{r['label']} {_pct(r['risk_ignorance']['diasafety_safe_blocked'])} "
            f"({_reasons(r['risk_ignorance']['diasafety_safe_blocked'])})"
            for r in runs
        )
        + ". Caught by reason: "
        + "; ".join(
            f"{r['label']}: DiaSafety {_reasons(r['risk_ignorance']['diasafety_unsafe'])}, "
            f"probes {_reasons(r['risk_ignorance']['probes']['all'])}"
            for r in runs
        )
        + ".",
        "",
        "## DiaSafety val per category (precision / recall / F1, unsafe positive)",
        "",
        "The classifier alone at its threshold, then the whole filter.",
        "",
        "| category | n | unsafe | "
        + " | ".join(f"{x} classifier | {x} filter" for x in labels)
        + " |",
        "|---|---|---|" + "---|---|" * len(runs),
    ]

    def pick(m: dict[str, Any], category: str) -> dict[str, Any]:
        return m if category == "all" else dict(m["per_category"][category])

    def cell(m: dict[str, Any]) -> str:
        return f"{m['precision']:.3f} / {m['recall']:.3f} / {m['f1']:.3f}"

    first = runs[0]["classifier_val"]
    for category in [*first["per_category"], "all"]:
        base = pick(first, category)
        lines.append(
            f"| {category} | {base['n']} | {base['unsafe']} | "
            + " | ".join(
                f"{cell(pick(r['classifier_val'], category))} | "
                f"{cell(pick(r['filter_val'], category))}"
                for r in runs
            )
            + " |"
        )
    lines += [
        "",
        "Classifier val ROC AUC: "
        + ", ".join(f"{r['label']} {r['classifier_val']['roc_auc']:.3f}" for r in runs)
        + ".",
    ]
    return "\n".join(lines)


def _pct_unread(s: dict[str, Any]) -> str:
    return f"{s['unread']}/{s['n']}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.safety_filter_fit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run",
        type=parse_run,
        action="append",
        required=True,
        help="LABEL=BUNDLE[:risk=on|off][:reading=on|off], repeatable: the risk check and the "
        "bundle's reading rule are on unless set off",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data dir")
    parser.add_argument("--probes", type=Path, default=PROBES)
    parser.add_argument("--dailydialog-pairs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="writes <out>.json and <out>.md")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    data = load_data(
        args.data, n_dailydialog=args.dailydialog_pairs, seed=args.seed, probes=args.probes
    )
    runs = []
    for spec in args.run:
        safety, classifier = build_filter(spec)
        runs.append(evaluate_run(spec, safety, classifier, data))
    command = ["python", "-m", "benchmarks.safety_filter_fit"]
    for spec in args.run:
        command += ["--run", str(spec)]
    command += ["--data", str(args.data), "--dailydialog-pairs", str(args.dailydialog_pairs)]
    command += ["--seed", str(args.seed), "--threads", str(args.threads)]
    if args.probes != PROBES:
        command += ["--probes", str(args.probes)]
    if args.out:
        command += ["--out", str(args.out)]
    report = {
        "command": shlex.join(command),
        "data": str(args.data),
        "probes": "benchmarks/safety_probes.json" if args.probes == PROBES else str(args.probes),
        "seed": args.seed,
        "dailydialog_pairs": len(data.dailydialog),
        "runs": runs,
    }
    text = markdown_report(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The safety classifier's report: JSON and a markdown table of its metrics per split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(report: dict[str, Any], out: Path, command: str | None = None) -> None:
    """``<out>.json`` and ``<out>.md``."""
    if command:
        report = {**report, "command": command}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown_report(report, command) + "\n")


# --- the report -------------------------------------------------------------------------------


def _row(label: str, m: dict[str, Any]) -> str:
    return (
        f"| {label} | {m['n']} | {m['unsafe']} | {m['accuracy']:.3f} | {m['precision']:.3f} "
        f"| {m['recall']:.3f} | {m['f1']:.3f} |"
    )


def markdown_report(report: dict[str, Any], command: str | None = None) -> str:
    """The report as markdown: setup, a table per architecture, per-category val figures."""
    header = (
        "| split | n | unsafe | accuracy | precision | recall | F1 |\n|---|---|---|---|---|---|---|"
    )
    lines = [
        "# DiaSafety safety classifier",
        "",
        f"Preset `{report['preset']}`, seed {report['seed']}, data `{report['data']}`, "
        f"{report['torch_threads']} torch thread(s). Unsafe is the positive class.",
        "",
    ]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    s = report["split"]
    lines += [
        f"DiaSafety train split, stratified by (category, label): {s['train_fit']} pairs to fit, "
        f"{s['threshold_holdout']} held out ({s['holdout_fraction']:.0%}) to choose the epoch, "
        f"the decision threshold and the architecture. Val ({s['val']} pairs) was scored once at "
        "the end and used for no choice. "
        + (
            f"{s['benign_fit']} DailyDialog train pairs (`{s['benign_data']}`) were added to the "
            f"fit set as Safe; the benign flag rate is the share of {s['benign_eval']} DailyDialog "
            "validation (context, gold reply) pairs the classifier calls unsafe."
            if s.get("benign_data")
            else "No DailyDialog pairs were used."
        ),
        "",
    ]
    cal, rd = report.get("calibration", {}), report.get("reading", {})
    if cal.get("benign_threshold_pairs"):
        lines += [
            f"Threshold cap: the threshold is the F1-best one on held-out DiaSafety among those "
            f"that flag at most {cal['max_benign_flag_rate']:.1%} of "
            f"{cal['benign_threshold_pairs']} further DailyDialog train pairs (disjoint from the "
            "fit pairs).",
            "",
        ]
    if rd.get("known_words") is not None:
        lines += [
            f"Reading: {rd['known_words']} known words (seen at least {rd['min_word_count']} "
            f"times in the fit texts); a context is read when at least "
            f"{rd['min_known_share']:.0%} of its content words are known, else judged as empty "
            f"({rd['val_contexts_unread']} of the val contexts). {rd['reply_only_examples']} fit "
            "examples were added again with an empty context (Safe ones, and Unsafe ones of "
            f"{', '.join(rd['reply_only_unsafe_categories']) or 'no category'}).",
            "",
        ]
    lines += [
        f"Chosen: **{report['chosen']}**, threshold {report['threshold']:.4f} "
        f"-> bundle `{report['bundle']['id']}` at `{report['bundle']['path']}`.",
        "",
    ]
    for arch, r in report["architectures"].items():
        m = r["model"]
        shape = (
            f"d={m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads, FFN {m['d_ff']}"
            if arch == "cross-encoder"
            else f"d={m['d_model']}, {m['bigram_buckets']} bigram buckets per side"
        )
        lines += [
            f"## {arch}",
            "",
            f"{shape}, max_len {m['max_len']}, {r['parameters']:,} parameters; warm start: "
            f"{r['warm_start'] or 'none'}. {r['steps']} updates in {r['wall_time_s']:.0f} s "
            f"(stopped: {r['stop_reason']}; kept epoch {r['best_epoch']}). Threshold "
            f"{r['threshold']:.4f}; val ROC AUC {r['val']['roc_auc']:.3f}"
            + (
                f"; benign flag rate {r['val']['benign_flag_rate']:.3f}."
                if "benign_flag_rate" in r["val"]
                else "."
            ),
            "",
            header,
            _row("held-out train (threshold chosen here)", r["holdout"]),
            _row("val", r["val"]),
            _row("val at threshold 0.5", r["val"]["at_0.5"]),
            "",
            "Val per DiaSafety category (chosen threshold):",
            "",
            header.replace("| split |", "| category |"),
            *(_row(c, cm) for c, cm in r["val"]["per_category"].items()),
            "",
        ]
    lines.append(f"Total wall time {report['total_wall_time_s']:.0f} s.")
    return "\n".join(lines)

"""The markdown of ``benchmarks.retrieval``: every table from the results it measured (the JSON
it writes beside), nothing measured here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(results: Mapping[str, Any]) -> str:
    meta, rets, gens = results["meta"], results["retrievers"], results["generators"]
    first = next(iter(rets.values()))
    lines = [
        "# G2R retrieval vs generation (preset small, DailyDialog test)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']['machine']}, {meta['machine']['cpu_count']} CPU cores "
        f"(one kept busy by another job), {meta['threads']} thread(s) for torch and FAISS; "
        f"torch {meta['machine']['torch']}, faiss {meta['machine']['faiss']}; load average at "
        f"start {meta['machine']['load_average_at_start']}.  ",
        f"Teacher (augmentation and G2R-DM scores): `{meta['teacher']}`. Test split: "
        f"{first['n_examples']} pairs. Latency: batch 1, {meta['queries']} test contexts after "
        f"{meta['warmup']} warm-ups, the same contexts for every system.",
        "",
        "## Quality (test split)",
        "",
        "Hits@k/K: gold + 99 random test responses scored by the bi-encoder (K = 100). Reply "
        "metrics: the top-1 retrieved reply (HNSW) for every test context; generators: greedy.",
        "",
        "Teacher share: of the response set / of the top-1 replies over the test contexts / of "
        "the distinct top-1 replies.",
        "",
        "| system | response set (teacher) | Hits@1/K | Hits@5/K | Dist-2 | Dist-3 | avg len | "
        "max-ratio | HNSW top-1 = exact | teacher share: set / served / distinct served |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def served_cell(r: Mapping[str, Any]) -> str:
        s = r.get("served")
        if not s:
            return "-"
        return (
            f"{s['response_set_teacher_share']:.4f} / {s['served_teacher_share']:.4f} / "
            f"{s['distinct_served_teacher_share']:.4f} ({s['distinct_served_teacher']:.0f} of "
            f"{s['distinct_served']:.0f})"
        )

    for label, r in rets.items():
        lines.append(
            f"| {label} | {r['n_responses']} ({r['responses_teacher']}) | {r['hits@1']:.4f} | "
            f"{r['hits@5']:.4f} | {r['dist-2']:.4f} | {r['dist-3']:.4f} | {r['avg-len']:.2f} | "
            f"{r['max-ratio']:.4f} | {r['hnsw_top1_agreement_test']:.4f} | {served_cell(r)} |"
        )
    lexical = results.get("lexical", {})
    for label, r in lexical.items():
        lines.append(
            f"| {label} (lexical, {meta['lexical_responses']}'s set) | {r['n_responses']} "
            f"({r['served']['response_set_teacher']:.0f}) | {r['hits@1']:.4f} | "
            f"{r['hits@5']:.4f} | {r['dist-2']:.4f} | {r['dist-3']:.4f} | {r['avg-len']:.2f} | "
            f"{r['max-ratio']:.4f} | - | {served_cell(r)} |"
        )
    for label, g in gens.items():
        if "dist-2" in g:
            lines.append(
                f"| {label} (generator, greedy) | - | - | - | {g['dist-2']:.4f} | "
                f"{g['dist-3']:.4f} | {g['avg-len']:.2f} | {g['max-ratio']:.4f} | - | - |"
            )
    lines += [
        "",
        "## Latency per query (batch 1, CPU)",
        "",
        "Retrievers: tokenize + encode + search top-1; generators: greedy decoding (KV cache). "
        "Ratio = generator mean / this mean (how many times faster than that generator).",
        "",
    ]
    head = "| system | search | mean ms | p50 ms | p90 ms |"
    rule = "|---|---|---:|---:|---:|"
    for g_label in gens:
        head += f" x faster than {g_label} |"
        rule += "---:|"
    lines += [head, rule]

    def row(name: str, search: str, s: Mapping[str, float]) -> str:
        cells = [name, search, f"{s['mean_ms']:.2f}", f"{s['p50_ms']:.2f}", f"{s['p90_ms']:.2f}"]
        cells += [f"{g['latency']['greedy']['mean_ms'] / s['mean_ms']:.1f}x" for g in gens.values()]
        return "| " + " | ".join(cells) + " |"

    for label, r in rets.items():
        lines.append(row(label, f"HNSW ef {r['ef_search']}", r["latency"]["hnsw"]))
        lines.append(row(label, "exact FlatIP", r["latency"]["exact"]))
        lines.append(row(label, "(encode only)", r["latency"]["encode_only"]))
    for label, r in lexical.items():
        lines.append(row(label, "sparse, every response", r["latency"]["exact"]))
    for label, g in gens.items():
        lines.append(row(label, "greedy generation", g["latency"]["greedy"]))
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [
        f"| {t['target']} | {t['measured']} | {'met' if t['met'] else 'NOT met'} |"
        for t in results["targets"]
    ]
    lines += [
        "",
        "## Training (from the bundles' manifests)",
        "",
        "| retriever | method | steps (best) | train wall s | contexts | pairs | teacher pairs | "
        "val Hits@1/K | index recall@1 (val) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rets.items():
        t, c, m = r["training"], r["training"].get("counts", {}), r["bundle_metrics"]
        lines.append(
            f"| {label} | {t.get('method')} | {t.get('steps')} ({t.get('best_step')}) | "
            f"{_fmt(t.get('wall_time_s'), 1)} | {c.get('contexts')} | {c.get('pairs')} | "
            f"{c.get('teacher_pairs')} | {_fmt(m.get('hits@1'))} | "
            f"{_fmt(m.get('index_recall@1'))} |"
        )
    shard = results.get("teacher_shards")
    if shard:
        lines += [
            "",
            f"Teacher scores in the augmentation shards (`{meta['shards']}`, G = LL / |r|, eq. 3): "
            f"over {shard['contexts']:.0f} augmented contexts the gold is the teacher's best-scored "
            f"positive in {shard['gold_is_teacher_top']:.4f} of them, and eq. 4's teacher "
            f"distribution puts {shard['teacher_prob_on_gold']:.4f} of its mass on the gold "
            f"(T = 1). Mean length: gold {shard['gold_words']:.2f} words, teacher replies "
            f"{shard['teacher_reply_words']:.2f}.",
        ]
    labels = [*rets, *lexical, *gens]
    lines += [
        "",
        "## Sample replies (the 20 test contexts of `training.eval.generation`)",
        "",
        "| context | reference | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for s in results["samples"]:
        cells = [" / ".join(s["context"]), s["reference"]]
        cells += [s[label] for label in labels]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"

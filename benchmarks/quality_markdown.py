"""The markdown of ``benchmarks.quality_report``: every table from the results it measured (the
JSON it writes beside), nothing measured here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _f(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _served_cell(s: Mapping[str, float]) -> str:
    return (
        f"{s['response_set_teacher_share']:.4f} | {s['served_teacher_share']:.4f} "
        f"({s['contexts']:.0f} contexts) | {s['distinct_served']:.0f} "
        f"({s['distinct_served_teacher']:.0f})"
    )


def selection_lines(serving: Mapping[str, Any]) -> list[str]:
    why = serving.get("why")
    lines = [
        f"Served generator: **{serving['generative']}** ({serving['generative_note']}); served "
        f"retriever: **{serving['retrieval']}** ({serving['retrieval_note']}).",
        "",
    ]
    if not isinstance(why, Mapping) or "candidates" not in why:
        lines.append(f'Selection record (serving.json "why"): `{json.dumps(why)}`')
        return lines
    lines += [
        f'Selection record (serving.json "why", on the {why.get("split", "?")} split, '
        f"{why.get('pairs', '?')} pairs): chosen **{why.get('chosen')}** by the rule: "
        f"{why.get('criterion', '?')}.",
        "",
        "| generator | val perplexity | val greedy max-ratio | val Dist-2 | val BLEU-4 | eligible "
        "| bundle then = bundle now |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    ids, now = why.get("bundle_ids", {}), serving["current_bundle_ids"]
    for name, c in why["candidates"].items():
        same = "-" if name not in ids else ("yes" if ids[name] == now.get(name) else "**no**")
        mark = f"**{name}**" if name == why.get("chosen") else name
        lines.append(
            f"| {mark} | {_f(c.get('perplexity'), 2)} | {_f(c.get('max-ratio'))} | "
            f"{_f(c.get('dist-2'))} | {_f(c.get('bleu-4'))} | "
            f"{'yes' if c.get('eligible') else 'no'} | {same} |"
        )
    rwhy = serving.get("retrieval_why")
    if isinstance(rwhy, Mapping) and "candidates" in rwhy:
        lines += [
            "",
            f'Retriever selection (serving.json "retrieval_why"): chosen **{rwhy.get("chosen")}** '
            f"by the rule: {rwhy.get('criterion', '?')}.",
            "",
            "| retriever | val Hits@1/K | val Hits@5/K |",
            "|---|---:|---:|",
        ]
        for name, c in rwhy["candidates"].items():
            mark = f"**{name}**" if name == rwhy.get("chosen") else name
            lines.append(f"| {mark} | {_f(c.get('hits@1'))} | {_f(c.get('hits@5'))} |")
    return lines


def to_markdown(results: Mapping[str, Any]) -> str:
    meta, gens, rets = results["meta"], results["generators"], results["retrievers"]
    lexical, lat, machine = results["lexical"], results["latency"], results["meta"]["machine"]
    turns, protocol = meta["context_turns"], meta["protocol"]
    n_gen = next(iter(gens.values()))["n_examples"] if gens else 0
    lines = [
        f"# Quality report: preset {meta['preset']} ({meta['artifacts']}, "
        f"{Path(meta['data']).name} test split)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {machine['machine']}, {machine['cpu_count']} CPU cores; torch "
        f"{machine['torch']} with {machine['threads']} thread(s) (OMP_NUM_THREADS="
        f"{meta['omp_num_threads'] or 'unset'}), FAISS {machine['faiss']} with "
        f"{meta['faiss_threads']}; Python {machine['python']}.  ",
        f"Load average (1, 5, 15 min): before {meta['load_average_before']}, after "
        f"{meta['load_average_after']}. Wall time {meta['wall_s']:.0f} s.  ",
        f"Data: {meta['data']}, official test split"
        + (f", first {meta['max_examples']} pairs" if meta["max_examples"] else "")
        + f"; generators read {turns['generators']} context turn(s), retrievers "
        f"{turns['retrievers']} (each split deduplicated and de-leaked at that length). "
        f"{meta['preset_note']}; LF counts from {meta['train_pairs_for_lf']} training pairs.",
    ]
    if meta["other_bundles"]:
        lines.append(f"Not measured here (other kinds): {', '.join(meta['other_bundles'])}.")

    # papers
    lines += [
        "",
        "## Against the papers",
        "",
        "Paper values are constants from the papers (table named in the note); ratio = ours / "
        "paper; - where ours cannot be measured (a bundle is missing, or a ratio's base is 0).",
        "",
        "| quantity | paper value | ours | ratio | note |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results["paper"]:
        lines.append(
            f"| {r['quantity']} | {r['paper']:.4g} | {_f(r['ours'])} | {_x(r['ratio'])} | "
            f"{_cell(r['note'])} |"
        )

    # generators
    lines += [
        "",
        f"## Generators (greedy, {n_gen} test pairs)",
        "",
        "Perplexity is teacher-forced; the rest are over the greedy replies to every test context "
        "(`training.eval.generation.evaluate_generator`), decoded with each bundle's own rules "
        '(n-gram blocking, and MMI-antiLM where the bundle sets it: "anti-LM" = lambda / the '
        "first tokens it covers). LF: share of generated tokens whose training frequency is < 100; "
        "max-ratio: share of the most frequent reply.",
        "",
        "| generator | bundle | anti-LM | perplexity | Dist-1 | Dist-2 | BLEU-4 | LF | max-ratio "
        "| avg len |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, g in gens.items():
        m = g["greedy"]
        served = " (served)" if label == results["serving"]["generative"] else ""
        weight, steps = g.get("anti_lm") or (0.0, 0)
        anti = f"{weight:g} / {steps}" if weight else "off"
        lines.append(
            f"| {label}{served} | {g['model']} | {anti} | {g['perplexity']:.2f} | {m['dist-1']:.4f} | "
            f"{m['dist-2']:.4f} | {m['bleu-4']:.4f} | {m['lf']:.4f} | {m['max-ratio']:.4f} | "
            f"{m['avg-len']:.2f} |"
        )
    if results["ratios"]:
        lines += [
            "",
            f"Against {results['ratio_base']} (same run, same test pairs; - where its value is 0):",
            "",
            "| generator | Dist-2 ratio | BLEU-4 ratio | LF | LF ratio |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, r in results["ratios"].items():
            lines.append(
                f"| {label} | {_x(r['dist-2_ratio'])} | {_x(r['bleu-4_ratio'])} | "
                f"{r['lf']:.4f} | {_x(r['lf_ratio'])} |"
            )
    lines += ["", *selection_lines(results["serving"])]

    # retrievers
    k = next((r["hits_k"] for r in [*rets.values(), *lexical.values()]), None)
    lines += [
        "",
        f"## Retrievers and lexical baselines (test split, K = {_f(k, 0)})",
        "",
        "Hits@k/K: the gold and K - 1 random test responses (seed 0) scored per context; ± is the "
        "standard error sqrt(p(1-p)/n) over the n test pairs. Teacher share: of the response set, "
        f"and of the top-1 replies to {protocol['served_share_contexts']} seeded test contexts (fewer when "
        f"the split is smaller). TF-IDF and BM25 answer from {meta['lexical_response_set']}, "
        f"reading {meta['lexical_turns']} turn(s).",
        "",
        "Hits@1/K and Hits@5/K are the bi-encoder's own ranking (the papers' protocol); "
        '"served" re-ranks the same candidates as the bundle serves (TF-IDF weight w from its '
        "lexical.json, chosen on validation; - = the bundle has no re-ranker).",
        "",
        "| system | response set | n | Hits@1/K | Hits@5/K | served Hits@1/K (w) | teacher share "
        "of set | teacher share of top-1 | distinct top-1 (teacher) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rets.items():
        served = ", served" if label == results["serving"]["retrieval"] else ""
        reranked = (
            f"{r['served_hits@1']:.4f} ± {r['served_hits@1_se']:.4f} ({r['rerank_weight']:g})"
            if r.get("rerank_weight")
            else "-"
        )
        lines.append(
            f"| {label} ({r['method']}{served}) | {r['n_responses']} | {r['n_examples']} | "
            f"{r['hits@1']:.4f} ± {r['hits@1_se']:.4f} | {r['hits@5']:.4f} ± "
            f"{r['hits@5_se']:.4f} | {reranked} | {_served_cell(r['served'])} |"
        )
    for label, r in lexical.items():
        lines.append(
            f"| {label} (lexical) | {r['n_responses']} | {r['n_examples']} | "
            f"{r['hits@1']:.4f} ± {r['hits@1_se']:.4f} | {r['hits@5']:.4f} ± "
            f"{r['hits@5_se']:.4f} | - | {_served_cell(r['served'])} |"
        )

    # latency
    lines += [
        "",
        "## Latency (batch 1, in-process, CPU)",
        "",
        f"{lat['queries']} seeded test contexts, {lat['warmup']} warm-ups first, one request at a "
        "time (G2R sec. 4.4), the same contexts for every row. Retrieval: tokenize + encode + "
        "HNSW top-1 (+ the TF-IDF candidates and re-ranking where the bundle serves with them); "
        "generation: greedy decoding with the KV cache.",
        "",
        "| system | mean ms | p50 ms | p90 ms | x faster than the served generator (mean) |",
        "|---|---:|---:|---:|---:|",
    ]
    gen_lat = lat.get("generation")

    def lat_row(name: str, s: Mapping[str, float]) -> str:
        x = gen_lat["mean_ms"] / s["mean_ms"] if gen_lat else None
        return f"| {name} | {s['mean_ms']:.2f} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {_x(x)} |"

    if gen_lat:
        lines.append(lat_row(f"{lat['generator']} greedy (served generator)", gen_lat))
    for label, r in rets.items():
        tag = " (served retriever)" if label == lat["retriever"] else ""
        if "served" in r["latency"]:
            lines.append(lat_row(f"{label} HNSW top-1 (dense only)", r["latency"]["hnsw"]))
            lines.append(
                lat_row(f"{label} top-1 re-ranked (as served){tag}", r["latency"]["served"])
            )
        else:
            lines.append(lat_row(f"{label} HNSW top-1{tag}", r["latency"]["hnsw"]))
    for label, r in lexical.items():
        lines.append(lat_row(f"{label} top-1 (every response scored)", r["latency"]))
    busy = max(meta["load_average_before"][0], meta["load_average_after"][0])
    if busy > (machine["cpu_count"] or 1):
        lines += [
            "",
            f"**Caution:** the 1-minute load average ({busy}) exceeded the {machine['cpu_count']} "
            "CPU cores during the run, so these timings include time spent waiting for a core "
            "(the means more than the p50s); compare p50s, or rerun on an idle machine.",
        ]
    if lat.get("speedup_mean") is not None:
        lines += [
            "",
            f"Retrieval vs generation: {lat['speedup_mean']:.1f}x by mean, "
            f"{lat['speedup_p50']:.1f}x by p50 ({lat['retriever']} vs {lat['generator']}; "
            f"the G2R paper: {protocol['paper_g2r_speedup']}x on an A100).",
        ]

    # samples
    labels = list(next(iter(results["samples"]))["replies"]) if results["samples"] else []
    lines += [
        "",
        "## Sample replies",
        "",
        f"{protocol['sample_test_contexts']} seeded test contexts (their last {protocol['sample_turns']} turns; each "
        f"system reads as many as it was trained on) and {protocol['probes']} fixed probes. Generators: "
        "greedy; retrievers: HNSW top-1; tfidf: top-1 over the lexical response set.",
    ]
    for j, s in enumerate(results["samples"], start=1):
        ctx = " / ".join(s["context"])
        ref = f" — reference: _{_cell(s['reference'])}_" if s["reference"] else ""
        lines += [
            "",
            f"**{j}. ({s['source']})** {_cell(ctx)}{ref}",
            "",
            "| system | reply |",
            "|---|---|",
        ]
        lines += [f"| {label} | {_cell(s['replies'][label])} |" for label in labels]
    return "\n".join(lines) + "\n"

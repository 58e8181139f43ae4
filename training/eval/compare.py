"""``python -m training compare``: several generator bundles on the same split, one table.

Every bundle is scored on the same examples with the same decoding setups and replies to the same
sample contexts, so the rows are comparable. Output: ``<out>.json`` keyed by label, then decoding,
then metric, and ``<out>.md`` with the tables and the sample replies side by side.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.decoding import DecodingConfig
from models.generator import GenerativeResponder
from training.core.data import DialogueExample, training_response_token_counts
from training.eval.generation import evaluate_generator, markdown_table
from training.eval.tables import markdown_table as table

logger = logging.getLogger(__name__)

# the metrics each comparison also gives as ratios against its first label
RATIO_METRICS = ("dist-1", "dist-2", "dist-3", "bleu-3", "bleu-4", "max-ratio", "avg-len")


def compare_generators(
    bundles: Mapping[str, Path],
    *,
    train: list[DialogueExample],
    examples: list[DialogueExample],
    device: str = "cpu",
    n_samples: int = 20,
    decodings: Mapping[str, DecodingConfig] | None = None,
    keep_replies: bool = False,
) -> dict[str, Any]:
    """Evaluate each labelled bundle (``decodings``: default greedy and beam 5); returns
    {label: evaluation} plus the shared samples (``keep_replies``: and every reply)."""
    counts = training_response_token_counts(train)
    results: dict[str, Any] = {}
    for label, path in bundles.items():
        started = time.perf_counter()
        responder = GenerativeResponder.load(path, device=device)
        result = evaluate_generator(
            responder,
            examples,
            counts,
            decodings=decodings,
            n_samples=n_samples,
            keep_replies=keep_replies,
        )
        result["training"] = responder.manifest.training if responder.manifest else {}
        result["eval_wall_s"] = time.perf_counter() - started
        results[label] = result
        logger.info("%s: perplexity %.2f", label, result["perplexity"])
    return results


def comparison_json(results: Mapping[str, Any]) -> dict[str, Any]:
    """{label: {"perplexity": .., "<decoding>": {metric: value}}}, plus the run facts."""
    out: dict[str, Any] = {}
    for label, r in results.items():
        out[label] = {
            "model": r["model"],
            "perplexity": r["perplexity"],
            **r["decodings"],
            "training": r["training"],
        }
    return out


def comparison_markdown(results: Mapping[str, Any], *, title: str, command: str) -> str:
    """Tables per decoding (rows = labels) and the sample replies, as markdown."""
    first = next(iter(results.values()))
    parts = [f"# {title}", "", f"Command: `{command}`", ""]
    parts.append(f"Examples: {first['n_examples']}. Perplexity (teacher-forced, test split):")
    parts.append("")
    parts.append(
        table(
            ["model", "bundle", "perplexity"],
            ([label, r["model"], f"{r['perplexity']:.2f}"] for label, r in results.items()),
            align="llr",
        )
    )
    for decoding in first["decodings"]:
        parts += ["", f"## {decoding}", ""]
        parts.append(
            markdown_table({label: r["decodings"][decoding] for label, r in results.items()})
        )
    baseline = next(iter(results))
    for decoding in first["decodings"]:
        parts += ["", f"## {decoding}: ratios against {baseline} (same run)", ""]
        base = results[baseline]["decodings"][decoding]
        rows = []
        for label, r in results.items():
            m = r["decodings"][decoding]
            rows.append(
                [label, *(ratio_text(m[k], base[k]) for k in RATIO_METRICS), f"{m['lf']:.4f}"]
            )
        parts.append(table(["model", *RATIO_METRICS, "lf"], rows))
    parts += ["", "## Sample replies (greedy)", ""]
    labels = list(results)
    rows = [
        [" / ".join(sample["context"]), sample["reference"]]
        + [results[label]["samples"][i]["greedy"] for label in labels]
        for i, sample in enumerate(first["samples"])
    ]
    parts.append(table(["context", "reference", *labels], rows, align="l" * (2 + len(labels))))
    return "\n".join(parts) + "\n"


def ratio_text(value: float, base: float) -> str:
    """``value / base`` as ``1.23x`` ("n/a" where the base is 0)."""
    return f"{value / base:.2f}x" if base else "n/a"


def write_comparison(results: Mapping[str, Any], out: Path, *, title: str, command: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(comparison_json(results), indent=2))
    out.with_suffix(".md").write_text(comparison_markdown(results, title=title, command=command))
    for label, r in results.items():
        for decoding, hyps in r.get("replies", {}).items():
            write_replies(replies_path(out, label, decoding), hyps, r["references"])


def replies_path(out: Path, label: str, decoding: str) -> Path:
    """Where ``compare --save-replies`` keeps one label's replies under one decoding."""
    return out.parent / f"{out.name}_replies" / f"{label}.{decoding}.json.gz"


def write_replies(path: Path, hyps: list[str], refs: list[str]) -> None:
    """Every reply and its reference, in the split's order (gzip JSON {"hyps", "refs"})."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump({"hyps": hyps, "refs": refs}, f)


def read_replies(path: Path) -> dict[str, list[str]]:
    """A replies file as :func:`write_replies` writes it (plain JSON read too)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or set(data) != {"hyps", "refs"}:
        raise ValueError(f"{path}: expected a JSON object with 'hyps' and 'refs'")
    if len(data["hyps"]) != len(data["refs"]):
        raise ValueError(f"{path}: {len(data['hyps'])} replies but {len(data['refs'])} references")
    return data

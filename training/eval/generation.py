"""Evaluation of a generator bundle on a data split: perplexity, the response metrics of the
papers under greedy and beam decoding, and sample replies. Output: JSON + a markdown table row.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from models.decoding import DecodingConfig, Generation
from models.generator import GenerativeResponder
from models.metrics import response_metrics
from training.core.data import DialogueExample
from training.core.generator import PairSet, corpus_nll
from training.eval.tables import markdown_table as table

logger = logging.getLogger(__name__)

# Decoding setups of the ND paper's tables: greedy (main table) and beam 5 with a length penalty.
STANDARD_DECODINGS: dict[str, DecodingConfig] = {
    "greedy": DecodingConfig(strategy="greedy"),
    "beam5": DecodingConfig(strategy="beam", beam_size=5, length_penalty=1.0),
}

TABLE_METRICS = (
    "dist-1",
    "dist-2",
    "dist-3",
    "lf",
    "kl-1",
    "kl-2",
    "bleu-3",
    "bleu-4",
    "max-ratio",
    "ent-2",
    "ent-3",
    "avg-len",
)


def decode_batches(
    responder: GenerativeResponder,
    examples: Sequence[DialogueExample],
    decoding: DecodingConfig,
    *,
    batch_size: int = 64,
    desc: str = "decode",
) -> Iterator[tuple[list[int], Generation, list[str]]]:
    """Every example's context decoded in batches sorted by source length (less padding): the
    examples' indices, the token-level generation and the reply texts of each batch."""
    order = sorted(range(len(examples)), key=lambda i: sum(len(t) for t in examples[i].context))
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=len(starts) < 4, dynamic_ncols=True):
        idx = order[start : start + batch_size]
        out = responder.generate([examples[i].context for i in idx], decoding)
        yield idx, out, responder.tokenizer.decode_batch(out.tokens)


def decode_all(
    responder: GenerativeResponder,
    examples: Sequence[DialogueExample],
    decoding: DecodingConfig,
    *,
    batch_size: int = 64,
    desc: str = "decode",
) -> list[str]:
    """Replies to every example's context, in example order (:func:`decode_batches`)."""
    replies: list[str] = [""] * len(examples)
    for idx, _, texts in decode_batches(
        responder, examples, decoding, batch_size=batch_size, desc=desc
    ):
        for i, reply in zip(idx, texts, strict=True):
            replies[i] = reply
    return replies


def evaluate_generator(
    responder: GenerativeResponder,
    examples: Sequence[DialogueExample],
    train_token_counts: Mapping[str, int],
    *,
    decodings: Mapping[str, DecodingConfig] | None = None,
    n_samples: int = 20,
    sample_seed: int = 0,
    keep_replies: bool = False,
) -> dict[str, Any]:
    """Perplexity plus response metrics per decoding setup, and ``n_samples`` sample replies
    (``keep_replies``: every reply too, under ``result["replies"][decoding]``)."""
    decodings = decodings or STANDARD_DECODINGS
    refs = [e.response for e in examples]
    pairs = PairSet.encode(examples, responder.tokenizer, responder.inputs)
    nll, tokens = corpus_nll(responder.model, pairs)
    result: dict[str, Any] = {
        "model": responder.bundle_id,
        "n_examples": len(examples),
        "perplexity": math.exp(nll / max(tokens, 1)),
        "decodings": {},
    }
    if keep_replies:
        result["references"] = refs
    picks = np.random.default_rng(sample_seed).choice(
        len(examples), size=min(n_samples, len(examples)), replace=False
    )
    samples: list[dict[str, Any]] = [
        {"context": list(examples[i].context), "reference": refs[i]} for i in picks.tolist()
    ]
    for name, base in decodings.items():
        # Generation length and n-gram rules come from the bundle; the strategy from the setup.
        decoding = responder.decoding.with_overrides(
            strategy=base.strategy,
            beam_size=base.beam_size,
            length_penalty=base.length_penalty,
            num_return_sequences=1,
        )
        started = time.perf_counter()
        hyps = decode_all(responder, examples, decoding, desc=name)
        elapsed = time.perf_counter() - started
        metrics = response_metrics(hyps, refs, train_token_counts)
        metrics["decode_ms_per_example"] = 1000 * elapsed / max(len(examples), 1)
        result["decodings"][name] = metrics
        if keep_replies:
            result.setdefault("replies", {})[name] = hyps
        for sample, i in zip(samples, picks.tolist(), strict=True):
            sample[name] = hyps[i]
    result["samples"] = samples
    return result


def markdown_table(
    rows: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = TABLE_METRICS
) -> str:
    """A markdown table: one row per (label -> metrics dict)."""
    return table(
        ["model", *metrics],
        (
            [label]
            + [
                f"{values[m]:.4f}" if isinstance(values.get(m), float) else str(values.get(m, ""))
                for m in metrics
            ]
            for label, values in rows.items()
        ),
    )


def markdown_report(name: str, result: Mapping[str, Any]) -> str:
    """Metrics rows for each decoding and the sample replies, as markdown."""
    rows = {f"{name} ({dec})": m for dec, m in result["decodings"].items()}
    parts = [
        f"perplexity: {result['perplexity']:.2f} over {result['n_examples']} examples ({result['model']})",
        "",
        markdown_table(rows),
        "",
        table(
            ["context", "reference", *result["decodings"]],
            (
                [" / ".join(s["context"]), s["reference"], *(s[d] for d in result["decodings"])]
                for s in result["samples"]
            ),
            align="l" * (2 + len(result["decodings"])),
        ),
    ]
    return "\n".join(parts)

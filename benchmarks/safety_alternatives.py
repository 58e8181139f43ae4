"""The safety filter's alternatives for a blocked generated reply: how they are drawn decides
whether a user reads a fluent reply or a non-word.

When the output filter blocks the generator's reply, the service draws ``SAFETY_CANDIDATES``
nucleus samples for the context (``service.continuous.alternatives_config``) and serves the first
safe one. Those samples inherit the bundle's decoding, MMI-antiLM included, and sampling from
``softmax((log p - lambda log U) / T)`` flattens the distribution towards rare subword pieces
(the anti-LM bonus of a piece grows with its rarity), which a small model then completes into
non-words: issue 11's everyday probe got "melyreeong is your duty's busy . can you help ?" for
"My dog died yesterday." (reports/everyday_probe_small_s24_before.md).

This decodes the served generator's greedy replies to the validation contexts, takes the ones
the service's filter (built as the service builds it) blocks, and draws their alternatives under
each policy, ``--seeds`` times:

- ``before``: the service's draw before session 24 (nucleus 0.9, T 1, the bundle's anti-LM);
- ``plausible``: the same with the anti-LM plausibility constraint (``anti_lm_plausibility``
  alpha, models/decoding.py): at the anti-LM positions only tokens with p >= alpha x max p;
  ``plausible-t0.7``, ``plausible-t0.5``: and a cooler temperature;
- ``no-anti-lm``: nucleus samples of the model alone;
- ``beam``: a beam search's n-best (width 8), the blocked reply dropped;
- ``service``: what ``service.continuous.alternatives_config`` draws now.

Per policy: the share of served alternatives with a word no training response contains
(``unseen``), their mean log p per token under the model (G2R's eq. 3 scorer, ``BundleTeacher``,
the same for every policy: a sampler's or a beam's own scores are not), the share replaced by the
fallback
reply because no alternative was safe, Dist-2 over the served alternatives, and the same
figures over every drawn sample; ratios against ``before``, same run.

    OMP_NUM_THREADS=2 python -m benchmarks.safety_alternatives --artifacts artifacts \\
        --out reports/safety_alternatives_small
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from benchmarks import command_line, write_report
from models.decoding import DecodingConfig
from models.generator import GenerativeResponder, Reply
from models.metrics import distinct_n, unseen_word_share
from service.answer import Answer
from service.continuous import alternatives_config
from service.metrics import ServiceMetrics
from service.safety import SafetyFilter, load_safety_filter
from service.settings import Settings
from training.config import DAILYDIALOG
from training.core.data import load_splits, training_response_token_counts
from training.eval.generation import decode_all
from training.eval.tables import markdown_table as table
from training.methods.g2r.teachers import BundleTeacher


def policies(served: DecodingConfig, alpha: float) -> dict[str, DecodingConfig]:
    """Each policy's decoding config; ``service`` is what the service draws now
    (``alternatives_config``), ``beam`` the n-best of a beam search (the blocked greedy reply
    dropped from it)."""
    before = served.with_overrides(
        strategy="sample", top_p=min(served.top_p, 0.9), anti_lm_plausibility=0.0
    )
    plausible = before.with_overrides(anti_lm_plausibility=alpha)
    return {
        "before": before,
        "plausible": plausible,
        "plausible-t0.7": plausible.with_overrides(temperature=0.7),
        "plausible-t0.5": plausible.with_overrides(temperature=0.5),
        "no-anti-lm": before.with_overrides(anti_lm=0.0),
        "beam": served.with_overrides(strategy="beam", beam_size=8, anti_lm_plausibility=alpha),
        "service": alternatives_config(served, 1),
    }


def draw(
    responder: GenerativeResponder,
    contexts: list[list[str]],
    config: DecodingConfig,
    k: int,
    seed: int,
    batch: int = 64,
) -> list[list[Reply]]:
    """``k`` replies per context under ``config`` (a beam search: its ``k`` best), seeded."""
    config = config.with_overrides(num_return_sequences=k)
    out: list[list[Reply]] = []
    g = torch.Generator().manual_seed(seed)
    for start in range(0, len(contexts), batch):
        gen = responder.generate(contexts[start : start + batch], config, generator=g)
        texts = responder.tokenizer.decode_batch(gen.tokens)
        rows = [Reply(text, tokens) for text, tokens in zip(texts, gen.tokens, strict=True)]
        out += [rows[i : i + k] for i in range(0, len(rows), k)]
    return out


def settle(safety: SafetyFilter, turns: list[str], drawn: list[list[Reply]]) -> list[str | None]:
    """The alternative the service serves for each blocked reply (None: the fallback reply),
    picked by ``SafetyFilter.settle`` itself."""
    answers = [Answer(text="") for _ in drawn]
    safety.settle(turns, answers, ["classifier"] * len(drawn), drawn)
    return [a.text if a.block and a.block.action == "reranked" else None for a in answers]


def figures(
    chosen: list[str | None],
    drawn: list[list[Reply]],
    contexts: list[list[str]],
    scorer: BundleTeacher,
    counts: dict[str, int],
) -> dict[str, float]:
    """The served alternatives' and every drawn one's figures; log p per token (EOS included)
    is the model's own likelihood of the text (G2R's eq. 3 scorer), whatever drew it."""
    served = [(c, text) for c, text in zip(contexts, chosen, strict=True) if text is not None]
    every = [(c, r.text) for c, row in zip(contexts, drawn, strict=True) for r in row]
    served_lp = scorer.score([c for c, _ in served], [t for _, t in served])[0]
    every_lp = scorer.score([c for c, _ in every], [t for _, t in every])[0]
    texts = [t for _, t in served]
    return {
        "served_unseen": unseen_word_share(texts, counts),
        "served_log_p_per_token": statistics.fmean(served_lp),
        "fallback_share": 1 - len(served) / len(chosen),
        "served_dist2": distinct_n(texts, 2),
        "drawn_unseen": unseen_word_share([t for _, t in every], counts),
        "drawn_log_p_per_token": statistics.fmean(every_lp),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--data", type=Path, default=DAILYDIALOG)
    ap.add_argument("--generator", help="default: the served one (serving.json)")
    ap.add_argument("--alpha", type=float, default=0.1, help="the plausible policy's alpha")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    load_before = list(os.getloadavg())
    name = args.generator or json.loads((args.artifacts / "serving.json").read_text())["generative"]
    responder = GenerativeResponder.load(args.artifacts / name, device="cpu")
    settings = Settings(_env_file=None, models_dir=args.artifacts)  # type: ignore[call-arg]
    safety = load_safety_filter(
        settings, ServiceMetrics(100), args.artifacts / settings.safety_bundle
    )
    splits = load_splits(args.data, max_context_turns=responder.inputs.max_context_turns)
    examples = splits.validation
    counts = training_response_token_counts(splits.train)
    scorer = BundleTeacher(responder)
    greedy = decode_all(responder, examples, responder.decoding, desc="served greedy")
    turns = [e.context[-1] for e in examples]
    reasons = safety.check(turns, greedy)
    blocked = [i for i, why in enumerate(reasons) if why is not None and why != "risk"]
    contexts = [list(examples[i].context) for i in blocked]
    blocked_turns = [turns[i] for i in blocked]
    results: dict[str, Any] = {
        "generator": responder.bundle_id,
        "validation_contexts": len(examples),
        "blocked": len(blocked),
        "blocked_greedy_unseen": unseen_word_share([greedy[i] for i in blocked], counts),
        "blocked_greedy_log_p_per_token": statistics.fmean(
            scorer.score(contexts, [greedy[i] for i in blocked])[0]
        ),
        "candidates": settings.safety_candidates,
        "alpha": args.alpha,
        "policies": {},
    }
    for policy, config in policies(responder.decoding, args.alpha).items():
        per_seed = []
        samples: list[str] = []
        for seed in range(args.seeds if config.strategy != "beam" else 1):
            # a beam's k + 1 best: its n-best holds the blocked reply itself, dropped below
            k = settings.safety_candidates + (config.strategy == "beam")
            drawn = draw(responder, contexts, config, k, seed)
            if config.strategy == "beam":  # its n-best holds the blocked reply itself
                drawn = [
                    [r for r in row if r.text != greedy[i]][: settings.safety_candidates]
                    for i, row in zip(blocked, drawn, strict=True)
                ]
            chosen = settle(safety, blocked_turns, drawn)
            per_seed.append(figures(chosen, drawn, contexts, scorer, counts))
            if seed == 0:
                samples = [c if c is not None else "(fallback)" for c in chosen[:12]]
        mean = {k: statistics.fmean(s[k] for s in per_seed) for k in per_seed[0]}
        results["policies"][policy] = {
            "config": str(config),
            "mean": mean,
            "seeds": per_seed,
            "samples": samples,
        }
    base = results["policies"]["before"]["mean"]
    for p in results["policies"].values():
        p["ratio"] = {k: (v / base[k] if base[k] else float("nan")) for k, v in p["mean"].items()}
    results["samples_contexts"] = [" / ".join(c) for c in contexts[:12]]
    results["load_before"], results["load_after"] = load_before, list(os.getloadavg())
    command = command_line("benchmarks.safety_alternatives", argv)
    text = markdown(results, command)
    write_report(args.out, results, text)
    print(text)
    return 0


def markdown(results: dict[str, Any], command: str) -> str:
    keys = [
        "served_unseen",
        "served_log_p_per_token",
        "fallback_share",
        "served_dist2",
        "drawn_unseen",
        "drawn_log_p_per_token",
    ]
    rows = [
        [name, *(f"{p['mean'][k]:.4f} ({p['ratio'][k]:.2f}x)" for k in keys)]
        for name, p in results["policies"].items()
    ]
    sample_rows = [
        [ctx, *(p["samples"][i] for p in results["policies"].values())]
        for i, ctx in enumerate(results["samples_contexts"])
    ]
    return (
        "\n".join(
            [
                "# The safety filter's alternatives to a blocked generated reply",
                "",
                f"Command: `{command}`  ",
                f"Generator {results['generator']}; {results['validation_contexts']} validation "
                f"contexts, of which the service's filter blocks {results['blocked']} greedy replies "
                f"(those with an unseen word: {results['blocked_greedy_unseen']:.4f}, their log p per "
                f"token {results['blocked_greedy_log_p_per_token']:.4f}); "
                f"{results['candidates']} alternatives each, means over seeds (ratio to `before`, "
                f"same run). Load average before {results['load_before']}, after "
                f"{results['load_after']}.",
                "",
                table(["policy", *keys], rows),
                "",
                "## The first 12 blocked contexts, seed 0",
                "",
                table(
                    ["context", *results["policies"]],
                    sample_rows,
                    align="l" * (1 + len(results["policies"])),
                ),
            ]
        )
        + "\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())

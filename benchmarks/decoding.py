"""Greedy decoding speed: ours (KV cache) vs ours without the cache vs Hugging Face ``generate``.

Exactly 20 new tokens per source (EOS suppressed on every side), random weights, the same machine
and the same run; times are medians over repeats after warm-up, reported as ratios against
transformers' ``generate`` on a BART of identical dimensions (d, layers, heads, FFN, vocab).

    python -m benchmarks.decoding --out reports/decoding_benchmark
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.decoding import DecodingConfig, generate
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from training.config import PRESETS

NEW_TOKENS = 20
SOURCE_LEN = 24


def bart_like(cfg: Seq2SeqConfig) -> Any:
    """A random-weight HF BART of ``cfg``'s shape, specials and positions (eval mode, no dropout)."""
    from transformers import BartConfig, BartForConditionalGeneration

    bart_cfg = BartConfig(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        encoder_layers=cfg.n_encoder_layers,
        decoder_layers=cfg.n_decoder_layers,
        encoder_attention_heads=cfg.n_heads,
        decoder_attention_heads=cfg.n_heads,
        encoder_ffn_dim=cfg.d_ff,
        decoder_ffn_dim=cfg.d_ff,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=cfg.pad_id,
        bos_token_id=cfg.bos_id,
        eos_token_id=cfg.eos_id,
        decoder_start_token_id=cfg.bos_id,
        forced_eos_token_id=None,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    return BartForConditionalGeneration(bart_cfg).eval()


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(sizes: list[str], batches: list[int], repeats: int, vocab: int) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        cfg = preset_model(size, vocab)
        torch.manual_seed(0)
        ours = Seq2SeqTransformer(cfg).eval()
        bart = bart_like(cfg)
        for batch in batches:
            row = time_case(ours, bart, batch, vocab, repeats)
            rows.append({"size": size, "batch": batch, **row})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def time_case(
    ours: Seq2SeqTransformer, bart: Any, batch: int, vocab: int, repeats: int
) -> dict[str, float]:
    """Median times of the three decoders on one random batch, and their ratios."""
    src = torch.randint(5, vocab, (batch, SOURCE_LEN))
    attn = torch.ones_like(src)
    exact = DecodingConfig(max_length=NEW_TOKENS, min_length=NEW_TOKENS)
    no_cache = exact.with_overrides(use_cache=False)

    def hf() -> Any:
        with torch.inference_mode():
            return bart.generate(
                input_ids=src,
                attention_mask=attn,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                num_beams=1,
            )

    out = generate(ours, src, exact)
    assert all(len(t) == NEW_TOKENS for t in out.tokens), "ours must emit exactly 20 tokens"
    assert hf().shape[1] >= NEW_TOKENS, "transformers must emit 20 new tokens"
    t_hf = median_seconds(hf, repeats)
    t_ours = median_seconds(lambda: generate(ours, src, exact), repeats)
    t_nocache = median_seconds(lambda: generate(ours, src, no_cache), repeats)
    return {
        "params_M": round(ours.num_parameters() / 1e6, 1),
        "hf_generate_ms": 1000 * t_hf,
        "ours_kv_cache_ms": 1000 * t_ours,
        "ours_no_cache_ms": 1000 * t_nocache,
        "ours_vs_hf": t_ours / t_hf,
        "no_cache_vs_hf": t_nocache / t_hf,
        "cache_speedup": t_nocache / t_ours,
    }


def preset_model(size: str, vocab: int) -> Seq2SeqConfig:
    from dataclasses import replace

    return replace(PRESETS[size].generator.model, vocab_size=vocab, dropout=0.0)


def to_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Greedy decoding benchmark (20 new tokens)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}, torch {meta['torch']}, transformers {meta['transformers']}, "
        f"{meta['threads']} threads; source length {SOURCE_LEN}; median of {meta['repeats']} runs after 2 warm-ups.",
        "",
        "| preset size | params | batch | transformers generate (ms) | ours, KV cache (ms) | ours, no cache (ms) "
        "| ours / transformers | no cache / transformers | cache speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['params_M']}M | {r['batch']} | {r['hf_generate_ms']:.1f} | {r['ours_kv_cache_ms']:.1f} "
            f"| {r['ours_no_cache_ms']:.1f} | **{r['ours_vs_hf']:.2f}x** | {r['no_cache_vs_hf']:.2f}x "
            f"| {r['cache_speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="small,paper")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    rows = run(
        args.sizes.split(","), [int(b) for b in args.batches.split(",")], args.repeats, args.vocab
    )
    meta = {
        "command": "python -m benchmarks.decoding "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()} {platform.processor() or ''} ({torch.get_num_threads()} threads)".strip(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
    }
    md = to_markdown(rows, meta)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        args.out.with_suffix(".md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

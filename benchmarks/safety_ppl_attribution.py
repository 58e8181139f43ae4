"""Where a fine-tune lost test likelihood: per-token share of the summed NLL increase.

    python -m benchmarks.safety_ppl_attribution BASE_BUNDLE TUNED_BUNDLE [--top N] [--data DIR]

Scores the DailyDialog test pairs under both bundles (same tokenizer) and prints the total NLL
increase and the TOP target tokens carrying most of it (count, nats, share of the total).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from models.generator import GenerativeResponder
from training.config import DAILYDIALOG
from training.core.data import load_splits
from training.core.generator import PairSet


def attribute(base_dir: Path, tuned_dir: Path, data: Path, top: int = 15) -> None:
    torch.set_num_threads(1)
    base = GenerativeResponder.load(base_dir)
    tuned = GenerativeResponder.load(tuned_dir)
    test = load_splits(data, base.inputs.max_context_turns).test
    pairs = PairSet.encode(test, base.tokenizer, base.inputs)
    increase: dict[int, float] = defaultdict(float)
    count: dict[int, int] = defaultdict(int)
    with torch.no_grad():
        for start in range(0, len(pairs), 256):
            b = pairs.collate(range(start, min(start + 256, len(pairs))))
            logp = [
                F.log_softmax(m.model(b.src, b.tgt_in).logits, -1)
                .gather(-1, b.tgt_out[..., None])
                .squeeze(-1)
                for m in (base, tuned)
            ]
            real = b.tgt_out.ne(base.tokenizer.pad_id)
            deltas = (logp[0] - logp[1])[real].tolist()
            for tok, d in zip(b.tgt_out[real].tolist(), deltas, strict=True):
                increase[tok] += d
                count[tok] += 1
    total = sum(increase.values())
    n = sum(count.values())
    print(f"{tuned.bundle_id} vs {base.bundle_id}: NLL increase {total:.1f} nats over {n} tokens")
    print("token | count | nats | share")
    shown = 0.0
    for tok, d in sorted(increase.items(), key=lambda kv: -kv[1])[:top]:
        piece = base.tokenizer._tok.id_to_token(tok)
        shown += d / total
        print(f"{piece} | {count[tok]} | {d:.1f} | {d / total:.3f}")
    print(f"top {top} tokens carry {shown:.3f} of the increase")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the generator bundle before the fine-tune")
    parser.add_argument("tuned", type=Path, help="the fine-tuned generator bundle")
    parser.add_argument("--top", type=int, default=15, help="tokens to list")
    parser.add_argument("--data", type=Path, default=DAILYDIALOG)
    args = parser.parse_args(argv)
    attribute(args.base, args.tuned, args.data, args.top)


if __name__ == "__main__":
    main()

"""Where a fine-tune lost test likelihood: per-token share of the summed NLL increase.

    .venv/bin/python reports/commands/safety_ppl_attribution.py BASE_BUNDLE TUNED_BUNDLE [TOP]

Scores the DailyDialog test pairs under both bundles (same tokenizer) and prints the total NLL
increase and the TOP target tokens carrying most of it (count, nats, share of the total).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from models.generator import GenerativeResponder
from training.core.data import load_splits
from training.core.generator import PairSet


def main(base_dir: str, tuned_dir: str, top: int = 15) -> None:
    torch.set_num_threads(1)
    base = GenerativeResponder.load(Path(base_dir))
    tuned = GenerativeResponder.load(Path(tuned_dir))
    test = load_splits(Path("../shared/data/dailydialog"), base.inputs.max_context_turns).test
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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 15)

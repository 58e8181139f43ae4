"""Cost of one negative-training hit check with and without the greedy decode (100 targets).

OMP_NUM_THREADS=1 python -m benchmarks.malicious_hit_check_timing [--bundle DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from models.generator import GenerativeResponder
from training.config import SHARED_DATA
from training.core.safety_data import load_targets
from training.methods.malicious.attack import HitThresholds, SearchResult, judge, score_triggers


def time_hit_checks(bundle: Path, targets: Path, repeats: int = 5) -> None:
    """Print the mean time of one hit check of 100 targets, alternating with and without the
    greedy decode (two rounds each)."""
    torch.set_num_threads(1)
    r = GenerativeResponder.load(bundle)
    ids = r.tokenizer.encode_texts(load_targets(targets)[:100])
    x = torch.randint(
        5, r.tokenizer.vocab_size, (100, 10), generator=torch.Generator().manual_seed(0)
    )
    for greedy in (True, False, True, False):
        t = time.perf_counter()
        for _ in range(repeats):
            res = SearchResult(x, score_triggers(r.model, r.tokenizer, ids, x))
            judge(r.model, r.tokenizer, ids, res, HitThresholds(-4.3), "o", greedy=greedy)
        print(
            f"greedy={greedy}: {(time.perf_counter() - t) / repeats * 1000:.1f} ms per hit check of 100 targets"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/generator-standard"))
    parser.add_argument(
        "--targets", type=Path, default=SHARED_DATA / "malicious_targets" / "train.txt"
    )
    args = parser.parse_args(argv)
    time_hit_checks(args.bundle, args.targets)


if __name__ == "__main__":
    main()

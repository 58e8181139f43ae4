"""Cost of one negative-training hit check with and without the greedy decode (100 targets).

OMP_NUM_THREADS=1 .venv/bin/python reports/commands/malicious_hit_check_timing.py
"""

import time
from pathlib import Path

import torch

from models.generator import GenerativeResponder
from training.core.safety_data import load_targets
from training.methods.malicious.attack import HitThresholds, SearchResult, judge, score_triggers

torch.set_num_threads(1)
r = GenerativeResponder.load(Path("artifacts/generator-standard"))
ids = r.tokenizer.encode_texts(
    load_targets(Path("../shared/data/malicious_targets/train.txt"))[:100]
)
x = torch.randint(5, r.tokenizer.vocab_size, (100, 10), generator=torch.Generator().manual_seed(0))
for greedy in (True, False, True, False):
    t = time.perf_counter()
    for _ in range(5):
        res = SearchResult(x, score_triggers(r.model, r.tokenizer, ids, x))
        judge(r.model, r.tokenizer, ids, res, HitThresholds(-4.3), "o", greedy=greedy)
    print(
        f"greedy={greedy}: {(time.perf_counter() - t) / 5 * 1000:.1f} ms per hit check of 100 targets"
    )

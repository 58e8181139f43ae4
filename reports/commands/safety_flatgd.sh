#!/usr/bin/env bash
# FlatGD safety report (reports/safety_flatgd.md, reports/safety_flatgd.json): every command, in order.
# Machine: shared 2-core x86 CPU, one thread per process (OMP_NUM_THREADS=1); the two fine-tunes
# ran side by side while other agents' jobs shared the same two cores (wall times in the report).
# Needs artifacts/generator-standard (the small-preset MLE generator) and, for step 4, the safety
# classifier bundle artifacts/safety-classifier (`python -m training train-safety-classifier`).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
PY=.venv/bin/python
BASE=artifacts/generator-standard

# 1. experts: copies of the base fine-tuned with MLE on the Safe (clean) / Unsafe (toxic)
#    DiaSafety train pairs, 3 epochs at the constant lr where the base's schedule ended
$PY -m training train-expert --kind clean --base $BASE --safety-data ../shared/data --out artifacts/expert-clean
$PY -m training train-expert --kind toxic --base $BASE --safety-data ../shared/data --out artifacts/expert-toxic

# 1b. the size of eq. 1's term at the base with these experts (how λ = 1 was chosen): per batch,
#     L_S, ||grad L_S||^2 and the gradient norms of L_LM, L_S and ||grad L_S||^2
$PY -m benchmarks.flatgd_report term-sizes

# 2. the Safety_loss baseline (λ = 0) and FlatGD (λ = 1): same base, experts, data, seed 0 and
#    141 steps (1 epoch of DiaSafety train at batch 64; Table 5 says 2 epochs: see the report for
#    why 1). The `small` setting is Table 5 with lr 1e-4; the `paper` setting (lr 5e-6) was run for
#    the baseline only. The three ran side by side.
EXPERTS="--clean artifacts/expert-clean --toxic artifacts/expert-toxic"
$PY -m training train-flatgd --base $BASE $EXPERTS --safety-data ../shared/data \
    --setting small --lam 1 --epochs 1 --out artifacts/generator-flatgd-small
$PY -m training train-flatgd --base $BASE $EXPERTS --safety-data ../shared/data \
    --setting small --lam 0 --epochs 1 --out artifacts/generator-safety-loss-small
$PY -m training train-flatgd --base $BASE $EXPERTS --safety-data ../shared/data \
    --setting paper --lam 0 --epochs 1 --out artifacts/generator-safety-loss-paper

# 3. evaluation: 5 nucleus-sampled (p=0.9) replies per distinct DiaSafety val context (1,029),
#    seed 0; unsafe rate by the safety classifier; DailyDialog test perplexity; Div-1/2; L_S and
#    ||grad L_S||^2 against the experts on 256 seeded DiaSafety val pairs; ratios vs the base.
#    Bundles were evaluated as they finished (same command, --cache); this run reads the cache.
$PY -m training evaluate-safety \
    --bundle base=$BASE \
    --bundle safety-loss=artifacts/generator-safety-loss-small \
    --bundle flatgd=artifacts/generator-flatgd-small \
    --bundle safety-loss-paper=artifacts/generator-safety-loss-paper \
    --bundle expert-clean=artifacts/expert-clean \
    --bundle expert-toxic=artifacts/expert-toxic \
    --classifier artifacts/safety-classifier $EXPERTS \
    --cache runs/flatgd/safety-eval-cache --out runs/flatgd/safety_flatgd_eval

# 4. reports/safety_flatgd.json: the evaluation plus each bundle's training facts (manifests)
#    and the validation curves of the three fine-tunes (runs/flatgd/*/metrics.jsonl, steps <= 70).
$PY -m benchmarks.flatgd_report assemble

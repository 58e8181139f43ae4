#!/usr/bin/env bash
# The commands behind reports/negative_distillation.{md,json} and reports/nd_ablations.{md,json}.
# Preset `small`, DailyDialog official split (dedup, no test pair in train), CPU, OMP_NUM_THREADS=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
PY=.venv/bin/python
DATA=../shared/data/dailydialog

# 1. standard, negative teacher (MLE on D_N), ND student from scratch (the paper's protocol)
$PY -m training build --preset small --data $DATA --out artifacts --runs runs
# 2. the baselines, fine-tuned from the standard model for 200 updates
$PY -m training train-generator --preset small --method nt --base artifacts/generator-standard \
    --out artifacts/generator-nt --max-steps 200
$PY -m training train-generator --preset small --method ul --base artifacts/generator-standard \
    --out artifacts/generator-ul --max-steps 200
# 3. ND as a fine-tune of the standard model (same budget as NT/UL; see the report for why)
$PY -m training train-generator --preset small --method nd --init-from artifacts/generator-standard \
    --out artifacts/generator-nd-ft --max-steps 200
# 4. main table on the whole test split
$PY -m training compare --title "Negative distillation vs baselines (preset small, DailyDialog test)" \
    --bundle standard=artifacts/generator-standard --bundle negative-teacher=artifacts/generator-negative-teacher \
    --bundle nt=artifacts/generator-nt --bundle ul=artifacts/generator-ul \
    --bundle nd=artifacts/generator-nd --bundle nd-ft=artifacts/generator-nd-ft \
    --out reports/negative_distillation
# 5. ablations of the fine-tune variant (smaller budget: 1000 test pairs)
for ab in no-pred no-hid no-att fixed-alpha hard-targets random-targets; do
  $PY -m training train-generator --preset small --method nd --init-from artifacts/generator-standard \
      --ablation $ab --out artifacts/ablation-nd-ft-$ab --max-steps 200
done
$PY -m training compare --title "ND ablations (fine-tune variant, preset small, 1000 test pairs)" --max-examples 1000 \
    --bundle standard=artifacts/generator-standard --bundle nd-ft=artifacts/generator-nd-ft \
    $(for ab in no-pred no-hid no-att fixed-alpha hard-targets random-targets; do echo --bundle nd-ft-$ab=artifacts/ablation-nd-ft-$ab; done) \
    --out reports/nd_ablations

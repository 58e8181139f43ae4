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
# 6. the greedy ratio table of the analysis section
$PY -m benchmarks.ratio_table reports/negative_distillation.json --baseline standard
# 7. ND against a strictly generic teacher (D_N = the 12.5% of pairs with H_src > 0)
$PY -m training train-generator --preset small --method mle --subset negative --negative-fraction 0.125 \
    --max-steps 350 --tokenizer runs/small/tokenizer.json --out artifacts/generator-negative-teacher-12
$PY -m training train-generator --preset small --method nd --teacher artifacts/generator-negative-teacher-12 \
    --init-from artifacts/generator-standard --out artifacts/generator-nd-ft-t12 --max-steps 200
$PY -m training compare --title "ND with a strictly generic teacher (D_N = top 12.5% by source entropy; preset small, 1000 test pairs)" \
    --max-examples 1000 --bundle standard=artifacts/generator-standard \
    --bundle negative-teacher-12=artifacts/generator-negative-teacher-12 --bundle nd-ft-t12=artifacts/generator-nd-ft-t12 \
    --out reports/nd_generic_teacher

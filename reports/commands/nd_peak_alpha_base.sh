#!/usr/bin/env bash
# reports/nd_peak_alpha_base.{md,json} (issue 11): the base build's ND fine-tune (1,000 updates from
# Standard, gamma at 500) with eq. 15's peak alpha lowered from 1 (lambda 4, the build's) to 0.5
# (lambda 2) and 0.25 (lambda 1), so that the MLE term of eq. 13 never vanishes; the same negative
# teacher, tokenizer and budget. Lambda 0 is the control: the same 1,000 fine-tune updates with
# alpha = 0 throughout, i.e. plain MLE at the fine-tune learning rate (what the extra updates
# alone buy). Each training run: ~13 min on the 2-core CPU (2 threads, nice 10).
# Resumable: rerun and each Trainer continues from runs-exp/base/<name>/checkpoint.pt.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
A=artifacts-base
for lam in 2 1 0; do
  OMP_NUM_THREADS=2 $PY -m training train-generator --preset base --method nd \
    --teacher $A/generator-negative-teacher --init-from $A/generator-standard \
    --tokenizer $A/generator-standard/tokenizer.json --max-steps 1000 --nd-lambda $lam \
    --out artifacts-exp/base-nd-ft-lam$lam --name generator-nd-ft-lam$lam --runs runs-exp
done
OMP_NUM_THREADS=2 $PY -m training compare \
  --title "ND fine-tune at preset base: peak alpha 1 (the build's), 0.5, 0.25 and the alpha-0 control (whole test split)" \
  --bundle standard=$A/generator-standard --bundle nd-ft-peak1=$A/generator-nd \
  --bundle nd-ft-peak0.5=artifacts-exp/base-nd-ft-lam2 --bundle nd-ft-peak0.25=artifacts-exp/base-nd-ft-lam1 \
  --bundle mle-ft-control=artifacts-exp/base-nd-ft-lam0 \
  --out reports/nd_peak_alpha_base

#!/usr/bin/env bash
# issue 11: the ND student from scratch at preset base with the paper's early peak (gamma at 12.8%
# of the run, as 25,600 of ~200k updates) and peak alpha 0.5 (lambda 2, the better fine-tune of
# reports/nd_peak_alpha_base.md); Standard's 5,000-update budget, the base build's negative
# teacher and tokenizer. ~80 min on the 2-core CPU; resumable: rerun and the Trainer continues
# from runs-exp/base/generator-nd-scratch-early/checkpoint.pt.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
A=artifacts-base
OMP_NUM_THREADS=2 $PY -m training train-generator --preset base --method nd \
  --teacher $A/generator-negative-teacher --tokenizer $A/generator-standard/tokenizer.json \
  --nd-lambda 2 --nd-gamma-fraction 0.128 \
  --out artifacts-exp/base-nd-scratch-early --name generator-nd-scratch-early --runs runs-exp
OMP_NUM_THREADS=2 $PY -m training compare \
  --title "ND from scratch at base, early peak (gamma 0.128, peak alpha 0.5) vs Standard, equal budget (whole test split)" \
  --bundle standard=$A/generator-standard --bundle nd-scratch-early=artifacts-exp/base-nd-scratch-early \
  --out reports/nd_scratch_early_base

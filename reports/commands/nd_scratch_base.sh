#!/usr/bin/env bash
# reports/nd_scratch_base.{md,json} (issue 11): the ND student trained from scratch at preset base,
# the paper's recipe (eq. 15's schedule over the whole run, lambda 4, gamma = 2,500 of 5,000
# updates), against the base build's Standard model and its fine-tuned ND student. Same tokenizer,
# same negative teacher (the base build's, from scratch on the clustered-entropy D_N), same
# 5,000-update budget as Standard. Training: 1 h 19 min on the 2-core CPU (2 threads; paused
# twice for a few minutes while idle-machine service benchmarks ran). Resumable: rerun the
# first command and the Trainer continues from runs-exp/base/generator-nd-scratch/checkpoint.pt.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
$PY -m training train-generator --preset base --method nd \
  --teacher artifacts-base/generator-negative-teacher \
  --tokenizer artifacts-base/generator-standard/tokenizer.json \
  --out artifacts-exp/base-nd-scratch --name generator-nd-scratch --runs runs-exp
OMP_NUM_THREADS=2 $PY -m training compare \
  --title "ND from scratch at preset base vs the fine-tuned ND student and Standard (whole test split)" \
  --bundle standard=artifacts-base/generator-standard --bundle nd-ft=artifacts-base/generator-nd \
  --bundle nd-scratch=artifacts-exp/base-nd-scratch --out reports/nd_scratch_base

#!/usr/bin/env bash
# reports/nd_normhid_base.{md,json} (issue 11, session 21): the base build's ND fine-tune (1,000
# updates from Standard, gamma at 500, peak alpha 1, the same negative teacher and tokenizer) with
# L_hid (eq. 9) on layer-normalised decoder states (NDLossConfig.normalize_hidden, `--ablation
# norm-hid`): in the build's ND the plain L_hid saturates (exp(-(a-b)^2) -> 0 once the pre-LN
# residual streams differ in scale), so it gave no gradient; normalised, it stays between 1 and 2
# (of 3 layers) through the run. ~6 min of training on the idle 2-core CPU (2 threads).
# Resumable: rerun and the Trainer continues from runs-exp/base/<name>/checkpoint.pt.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
A=artifacts-base
[ -f artifacts-s21/base-nd-ft-normhid/manifest.json ] || \
  OMP_NUM_THREADS=2 $PY -m training train-generator --preset base --method nd \
    --teacher $A/generator-negative-teacher --init-from $A/generator-standard \
    --tokenizer $A/generator-standard/tokenizer.json --max-steps 1000 --ablation norm-hid \
    --out artifacts-s21/base-nd-ft-normhid --name generator-nd-ft-normhid --runs runs-exp
OMP_NUM_THREADS=2 $PY -m training compare \
  --title "ND fine-tune at preset base with L_hid on layer-normalised hidden states (session 21) against the build's ND fine-tune and Standard (whole test split)" \
  --bundle standard=$A/generator-standard --bundle nd-ft=$A/generator-nd \
  --bundle nd-ft-normhid=artifacts-s21/base-nd-ft-normhid --out reports/nd_normhid_base

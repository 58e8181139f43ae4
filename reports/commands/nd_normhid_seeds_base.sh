#!/usr/bin/env bash
# reports/nd_normhid_seeds_base.{md,json} (issue 11, session 21): is ND's effect at base larger
# than the seed-to-seed spread of a fine-tune? Three seeds of the ND fine-tune with L_hid on
# layer-normalised states (--ablation norm-hid; seeds 0 and 1 from nd_normhid_base.sh) against
# two seeds of the alpha-0 control (the same 1,000 fine-tune updates from Standard, plain MLE:
# --nd-lambda 0), all in one comparison on the whole test split. ~7 min per training run on the
# idle 2-core CPU (2 threads). Resumable: a finished bundle is skipped, a cut-off run resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
A=artifacts-base
O=artifacts-s21
[ -f $O/base-nd-ft-normhid-s2/manifest.json ] || OMP_NUM_THREADS=2 $PY -m training train-generator \
  --preset base --method nd --teacher $A/generator-negative-teacher --init-from $A/generator-standard \
  --tokenizer $A/generator-standard/tokenizer.json --max-steps 1000 --runs runs-exp \
  --ablation norm-hid --seed 2 --out $O/base-nd-ft-normhid-s2 --name generator-nd-ft-normhid-s2
for seed in 0 1; do
  [ -f $O/base-mle-ft-s$seed/manifest.json ] || OMP_NUM_THREADS=2 $PY -m training train-generator \
    --preset base --method nd --teacher $A/generator-negative-teacher --init-from $A/generator-standard \
    --tokenizer $A/generator-standard/tokenizer.json --max-steps 1000 --runs runs-exp \
    --nd-lambda 0 --seed $seed --out $O/base-mle-ft-s$seed --name generator-mle-ft-s$seed
done
OMP_NUM_THREADS=2 $PY -m training compare \
  --title "ND fine-tune (normalised L_hid) over three seeds against the alpha-0 control over two, base (whole test split)" \
  --bundle standard=$A/generator-standard \
  --bundle nd-normhid-s0=$O/base-nd-ft-normhid --bundle nd-normhid-s1=$O/base-nd-ft-normhid-s1 \
  --bundle nd-normhid-s2=$O/base-nd-ft-normhid-s2 \
  --bundle mle-ft-s0=$O/base-mle-ft-s0 --bundle mle-ft-s1=$O/base-mle-ft-s1 \
  --out reports/nd_normhid_seeds_base
# the seed means of that report, against the control (session 22)
$PY -m benchmarks.seed_groups --report reports/nd_normhid_seeds_base.json --baseline mle-ft \
  --out reports/nd_normhid_seeds_base_groups

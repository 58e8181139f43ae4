#!/usr/bin/env bash
# Issue 11: MMI-antiLM decoding for the small build's generators (models/decoding.py).
# Run from the repository root after `make build` (artifacts/ = the small build), on an idle machine
# for the timing columns (the quality columns do not depend on the load).
set -euo pipefail
PY=.venv/bin/python

# 1. Choose lambda x gamma on 1,000 validation contexts of the served generator (rule in the report).
$PY -m benchmarks.anti_lm --bundle artifacts/generator-nt --split validation --max-examples 1000 \
    --weights 0.25,0.4,0.55,0.7,0.8 --steps 1,2,3,5 --out reports/anti_lm_small_val

# 2. The chosen setting against plain greedy on the whole test split, served NT and standard.
for g in nt standard; do
  $PY -m benchmarks.anti_lm --bundle artifacts/generator-$g --split test --weights 0.55 --steps 3 \
      --out reports/anti_lm_small_test_$g
done

# 3. The quality report with every generator of that build decoding as the small preset now says
#    (a new build writes anti_lm into its bundles; set-decoding gives an existing build the same).
rm -rf artifacts-al && mkdir artifacts-al
for d in artifacts/*; do
  n=$(basename "$d")
  if [[ $n == generator-* ]]; then cp -r "$d" "artifacts-al/$n"; else ln -s "../artifacts/$n" "artifacts-al/$n"; fi
done
for g in artifacts-al/generator-*; do
  $PY -m training set-decoding --bundle "$g" --set anti_lm=0.55 --set anti_lm_steps=3
done
OMP_NUM_THREADS=2 $PY -m benchmarks.quality_report --artifacts artifacts-al --out reports/quality_small

# Session 17: step 1 again on the NT bundle the small build serves now (session 14's,
# generator-nt@d79b5ae5): the rule would pick lambda 0.25 on 5 tokens; small keeps 0.55 / 3
# (training/config/small.py says why).
$PY -m benchmarks.anti_lm --bundle artifacts/generator-nt --split validation --max-examples 1000 \
    --weights 0.25,0.4,0.55,0.7,0.8 --steps 1,2,3,5 --out reports/anti_lm_small_val_s17

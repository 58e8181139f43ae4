#!/usr/bin/env bash
# Issue 11 (session 15): two of the G2R paper's settings on small's retriever, seed 0, against the
# served build's own: 512 shared random negatives (small: 16) and 3,000 augmented contexts (small:
# 600). Resumable: a finished bundle is skipped. Scores do not depend on load; times do.
set -euo pipefail
PY=.venv/bin/python
COMMON="--preset small --method g2r-d --seed 0 --teacher artifacts/generator-nt --tokenizer runs/small/tokenizer.json --init-from none"
mkdir -p artifacts-s15/ret-neg artifacts-s15/ret-aug artifacts-s15/ret-knobs
[ -f artifacts-s15/ret-neg/neg512-s0/manifest.json ] || \
  $PY -m training train-retriever $COMMON --augmented runs/small/g2r-augment-generator-nt \
      --set retriever.random_negatives=512 --runs runs-exp/s15-ret-neg --out artifacts-s15/ret-neg/neg512-s0
[ -f artifacts-s15/ret-aug/aug3000-s0/manifest.json ] || \
  $PY -m training train-retriever $COMMON --augmented runs-exp/s15-aug3000 \
      --set retriever.augment.max_contexts=3000 --runs runs-exp/s15-ret-aug --out artifacts-s15/ret-aug/aug3000-s0
ln -sfn ../../artifacts/retriever-g2r artifacts-s15/ret-knobs/served-s0
ln -sfn ../ret-neg/neg512-s0 artifacts-s15/ret-knobs/neg512-s0
ln -sfn ../ret-aug/aug3000-s0 artifacts-s15/ret-knobs/aug3000-s0
$PY -m benchmarks.retriever_seeds --bundles artifacts-s15/ret-knobs --baseline served \
    --out reports/retriever_knobs_small

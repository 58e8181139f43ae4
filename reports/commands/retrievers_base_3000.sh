#!/usr/bin/env bash
# Issue 11 (session 17): base's retrievers were still improving at their last update (best step
# 2,500 of 2,500 in five of the six runs of reports/retrievers_base_seeds.md; G2R-D seed 1's was
# 2,000). The same six runs continued
# to 3,000 updates: the Trainer extends a finished run whose budget was raised, and with base's
# noam schedule that is the run a 3,000-update budget gives from the start (tests/test_trainer.py).
# Seed 0's run dirs are copies of the build's. Resumable. ~16 min on the idle 2-core machine.
set -euo pipefail
PY=.venv/bin/python
RUNS=runs-exp/s17-base-seeds
OUT=artifacts-s17/base-3000
mkdir -p $OUT
[ -d $RUNS/base/biencoder-s0 ] || cp -a runs-base/base/retriever-biencoder $RUNS/base/biencoder-s0
[ -d $RUNS/base/g2rd-s0 ] || cp -a runs-base/base/retriever-g2r $RUNS/base/g2rd-s0
for seed in 0 1 2; do
  [ -f $OUT/biencoder-s$seed/manifest.json ] || \
    $PY -m training train-retriever --preset base --method biencoder --seed $seed --max-steps 3000 \
        --tokenizer runs-base/base/tokenizer.json --init-from artifacts-base/generator-standard \
        --runs $RUNS --name biencoder-s$seed --out $OUT/biencoder-s$seed
  [ -f $OUT/g2rd-s$seed/manifest.json ] || \
    $PY -m training train-retriever --preset base --method g2r-d --seed $seed --max-steps 3000 \
        --tokenizer runs-base/base/tokenizer.json --init-from artifacts-base/generator-standard \
        --augmented runs-base/base/g2r-augment-generator-nt \
        --runs $RUNS --name g2rd-s$seed --out $OUT/g2rd-s$seed
done
$PY -m benchmarks.retriever_seeds --bundles $OUT --baseline biencoder \
    --out reports/retrievers_base_3000

#!/usr/bin/env bash
# Issue 11: bi-encoder vs G2R-D vs G2R-DM, small preset, three seeds each, the same tokenizer,
# teacher (the served small generator) and augmentation shards as `make run`'s build; then test
# Hits@1/100 per seed and method (benchmarks/retriever_seeds.py). Resumable: a finished bundle is
# skipped. Run from the repository root after `make build` (artifacts/ and runs/small/ exist).
set -euo pipefail
PY=.venv/bin/python
OUT=${OUT:-artifacts-exp/retriever-seeds}
TEACHER=artifacts/$($PY -c "import json; print(json.load(open('artifacts/serving.json'))['generative'])")
SHARDS=runs/small/g2r-augment-$(basename "$TEACHER")
for seed in 0 1 2; do
  for method in biencoder g2r-d g2r-dm; do
    dir=$OUT/$method-s$seed
    [ -f "$dir/manifest.json" ] && continue
    $PY -m training train-retriever --preset small --method $method --seed $seed \
        --teacher "$TEACHER" --augmented "$SHARDS" --tokenizer runs/small/tokenizer.json \
        --init-from none --runs runs-exp/retriever-seeds --out "$dir"
  done
done
$PY -m benchmarks.retriever_seeds --bundles "$OUT" --out reports/retriever_seeds_small

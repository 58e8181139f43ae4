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

# Session 11: the small G2R-D retriever trained 2,400 updates instead of 1,200 (same seed, teacher,
# shards and tokenizer as the build's own 1,200-update bundle, artifacts/retriever-g2r); then both
# scored on test (reports/retriever_steps_small.md)
$PY -m training train-retriever --preset small --method g2r-d --seed 0 --teacher artifacts/generator-nt \
    --augmented runs/small/g2r-augment-generator-nt --tokenizer runs/small/tokenizer.json \
    --runs runs-exp/ret-steps --max-steps 2400 --out artifacts-exp/ret-steps/g2r-d-2400
mkdir -p artifacts-exp/ret-steps-cmp
ln -sfn ../../artifacts/retriever-g2r artifacts-exp/ret-steps-cmp/g2r-d1200-s0
ln -sfn ../ret-steps/g2r-d-2400 artifacts-exp/ret-steps-cmp/g2r-d2400-s0
$PY -m benchmarks.retriever_seeds --bundles artifacts-exp/ret-steps-cmp --baseline g2r-d1200 \
    --out reports/retriever_steps_small
# ... and the plain bi-encoder at 2,400 updates beside it, one seed (reports/retriever_2400_small.md)
$PY -m training train-retriever --preset small --method biencoder --seed 0 --teacher artifacts/generator-nt \
    --augmented runs/small/g2r-augment-generator-nt --tokenizer runs/small/tokenizer.json --init-from none \
    --runs runs-exp/ret-steps --max-steps 2400 --out artifacts-exp/ret-steps/biencoder-2400
mkdir -p artifacts-exp/ret-2400-cmp
ln -sfn ../ret-steps/biencoder-2400 artifacts-exp/ret-2400-cmp/biencoder-s0
ln -sfn ../ret-steps/g2r-d-2400 artifacts-exp/ret-2400-cmp/g2r-d-s0
$PY -m benchmarks.retriever_seeds --bundles artifacts-exp/ret-2400-cmp --out reports/retriever_2400_small

#!/usr/bin/env bash
# Issue 11 (session 17): base's retriever comparison over three seeds, as the issue asks. Seed 0 is
# the build's pair (artifacts-base, symmetric eq. 2, reports/retrievers_base_s16_sym.md); seeds 1
# and 2 train the same way apart from the build: warm start from the standard generator, the
# build's G2R shards (teacher generator-nt). Resumable: a finished bundle is skipped, a cut-off
# run resumes from its checkpoint. ~45 min on the idle 2-core machine.
set -euo pipefail
PY=.venv/bin/python
OUT=artifacts-s17/base-seeds
mkdir -p $OUT/cmp
for seed in 1 2; do
  [ -f $OUT/biencoder-s$seed/manifest.json ] || \
    $PY -m training train-retriever --preset base --method biencoder --seed $seed \
        --tokenizer runs-base/base/tokenizer.json --init-from artifacts-base/generator-standard \
        --runs runs-exp/s17-base-seeds --out $OUT/biencoder-s$seed
  [ -f $OUT/g2rd-s$seed/manifest.json ] || \
    $PY -m training train-retriever --preset base --method g2r-d --seed $seed \
        --tokenizer runs-base/base/tokenizer.json --init-from artifacts-base/generator-standard \
        --augmented runs-base/base/g2r-augment-generator-nt \
        --runs runs-exp/s17-base-seeds --out $OUT/g2rd-s$seed
  ln -sfn ../biencoder-s$seed $OUT/cmp/biencoder-s$seed
  ln -sfn ../g2rd-s$seed $OUT/cmp/g2rd-s$seed
done
# seed 0 at 2,500 updates: the build's pair as it was then (artifacts-base has held 3,000-update
# retrievers since; reports/retrievers_base_3000.md). The bi-encoder's weights are those of
# retriever_symmetric_base.sh's run (equal sha256); G2R-D's 3,000-update continuation kept its
# step-2,500 weights (same bundle id, d51f5094).
ln -sfn ../../../artifacts-s16/base-sym/biencodersym-s0 $OUT/cmp/biencoder-s0
ln -sfn ../../base-3000/g2rd-s0 $OUT/cmp/g2rd-s0
$PY -m benchmarks.retriever_seeds --bundles $OUT/cmp --baseline biencoder \
    --out reports/retrievers_base_seeds

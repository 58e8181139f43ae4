#!/usr/bin/env bash
# Issue 11 (session 16): base's plain bi-encoder with the symmetric eq. 2 on top of the warm start
# (small's setting since 0c9e68a), seed 0, against the base build's bi-encoder
# (reports/retrievers_base_s16.md). Resumable: a finished bundle is skipped.
set -euo pipefail
PY=.venv/bin/python
OUT=artifacts-s16/base-sym
mkdir -p $OUT/cmp
[ -f $OUT/biencodersym-s0/manifest.json ] || \
  $PY -m training train-retriever --preset base --method biencoder --seed 0 \
      --tokenizer runs-base/base/tokenizer.json --init-from artifacts-base/generator-standard \
      --set retriever.symmetric_loss=true --runs runs-exp/s16-base-sym --out $OUT/biencodersym-s0
ln -sfn ../biencodersym-s0 $OUT/cmp/biencodersym-s0
ln -sfn ../../../artifacts-base/retriever-biencoder $OUT/cmp/biencoder-s0
$PY -m benchmarks.retriever_seeds --bundles $OUT/cmp --baseline biencoder \
    --out reports/retriever_symmetric_base

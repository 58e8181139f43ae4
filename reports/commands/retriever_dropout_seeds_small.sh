#!/usr/bin/env bash
# Issue 11 (session 14): small's bi-encoder with and without dropout over three seeds, 2,100
# updates each (the preset's), the served build's teacher, shards and tokenizer; seed 0 without
# dropout is the build's own retriever. Resumable: a finished bundle is skipped. Scores do not
# depend on load.
set -euo pipefail
PY=.venv/bin/python
OUT=artifacts-s14/ret-drop-seeds
mkdir -p $OUT
ln -sfn ../../artifacts/retriever-g2r $OUT/drop0-s0
for seed in 0 1 2; do
  for drop in 0.1 0; do
    name=drop$(echo $drop | tr -d .)-s$seed
    [ -f "$OUT/$name/manifest.json" ] && continue
    $PY -m training train-retriever --preset small --method g2r-d --seed $seed \
        --teacher artifacts/generator-nt --augmented runs/small/g2r-augment-generator-nt \
        --tokenizer runs/small/tokenizer.json --init-from none --set retriever.model.dropout=$drop \
        --runs runs-exp/s14-ret-drop --out "$OUT/$name"
  done
done
$PY -m benchmarks.retriever_seeds --bundles $OUT --baseline drop01 \
    --out reports/retriever_dropout_seeds_small

#!/usr/bin/env bash
# Issue 11 (session 16): eq. 2 in both directions (retriever.symmetric_loss) on top of the PCA
# warm start, three seeds against the warm start alone (reports/retriever_embpca_seeds_small.sh
# trained embpca-s0..2 and embpcasym-s0). Resumable: a finished bundle is skipped.
set -euo pipefail
PY=.venv/bin/python
COMMON="--preset small --method g2r-d --teacher artifacts/generator-nt --tokenizer runs/small/tokenizer.json --augmented runs/small/g2r-augment-generator-nt --init-from artifacts/generator-standard"
OUT=artifacts-s16/ret
CMP=artifacts-s16/ret-sym
mkdir -p $OUT $CMP
for seed in 0 1 2; do
  [ -f $OUT/embpcasym-s$seed/manifest.json ] || \
    $PY -m training train-retriever $COMMON --seed $seed --set retriever.symmetric_loss=true \
        --runs runs-exp/s16-embpcasym-s$seed --out $OUT/embpcasym-s$seed
  ln -sfn ../ret/embpcasym-s$seed $CMP/embpcasym-s$seed
  ln -sfn ../ret/embpca-s$seed $CMP/embpca-s$seed
done
$PY -m benchmarks.retriever_seeds --bundles $CMP --baseline embpca \
    --out reports/retriever_symmetric_seeds_small

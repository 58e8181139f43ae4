#!/usr/bin/env bash
# Issue 11 (session 16): three changes to small's retriever that need no stronger teacher, seed 0,
# against the served build's own (artifacts/retriever-g2r): one encoder for both sides
# (retriever.model.shared), eq. 2 in both directions (retriever.symmetric_loss), and token
# embeddings started from the standard generator's by PCA (--init-from). Resumable: a finished
# bundle is skipped. Scores do not depend on load; times do.
set -euo pipefail
PY=.venv/bin/python
COMMON="--preset small --method g2r-d --seed 0 --teacher artifacts/generator-nt --tokenizer runs/small/tokenizer.json --augmented runs/small/g2r-augment-generator-nt"
OUT=artifacts-s16/ret
CMP=artifacts-s16/ret-variants
mkdir -p $OUT $CMP
[ -f $OUT/shared-s0/manifest.json ] || \
  $PY -m training train-retriever $COMMON --init-from none --set retriever.model.shared=true \
      --runs runs-exp/s16-shared --out $OUT/shared-s0
[ -f $OUT/symmetric-s0/manifest.json ] || \
  $PY -m training train-retriever $COMMON --init-from none --set retriever.symmetric_loss=true \
      --runs runs-exp/s16-symmetric-s0 --out $OUT/symmetric-s0
[ -f $OUT/embpca-s0/manifest.json ] || \
  $PY -m training train-retriever $COMMON --init-from artifacts/generator-standard \
      --runs runs-exp/s16-embpca-s0 --out $OUT/embpca-s0
for name in shared-s0 symmetric-s0 embpca-s0; do ln -sfn ../ret/$name $CMP/$name; done
ln -sfn ../../artifacts/retriever-g2r $CMP/served-s0
$PY -m benchmarks.retriever_seeds --bundles $CMP --baseline served \
    --out reports/retriever_variants_small

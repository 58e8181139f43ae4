#!/usr/bin/env bash
# Issue 11 (session 16): the PCA warm start of the token embeddings (reports/retriever_variants_small.md,
# one seed) over three seeds against small's current retriever, plus two combinations on seed 0
# (with the symmetric loss, with one shared encoder). Resumable: a finished bundle is skipped.
set -euo pipefail
PY=.venv/bin/python
COMMON="--preset small --method g2r-d --teacher artifacts/generator-nt --tokenizer runs/small/tokenizer.json --augmented runs/small/g2r-augment-generator-nt"
OUT=artifacts-s16/ret
SEEDS=artifacts-s16/ret-seeds
mkdir -p $OUT $SEEDS
for seed in 0 1 2; do
  [ -f $OUT/embpca-s$seed/manifest.json ] || \
    $PY -m training train-retriever $COMMON --seed $seed --init-from artifacts/generator-standard \
        --runs runs-exp/s16-embpca-s$seed --out $OUT/embpca-s$seed
  ln -sfn ../ret/embpca-s$seed $SEEDS/embpca-s$seed
done
# small's current retriever: the served build's (seed 0), session 14's seed-1 run of the same
# settings (reports/retriever_dropout_seeds_small.md) and seed 2, trained here
[ -f $OUT/served-s2/manifest.json ] || \
  $PY -m training train-retriever $COMMON --seed 2 --init-from none \
      --runs runs-exp/s16-served-s2 --out $OUT/served-s2
ln -sfn ../../artifacts/retriever-g2r $SEEDS/served-s0
ln -sfn ../../artifacts-s14/ret-drop-seeds/drop0-s1 $SEEDS/served-s1
ln -sfn ../ret/served-s2 $SEEDS/served-s2
[ -f $OUT/embpcasym-s0/manifest.json ] || \
  $PY -m training train-retriever $COMMON --seed 0 --init-from artifacts/generator-standard \
      --set retriever.symmetric_loss=true --runs runs-exp/s16-embpcasym-s0 --out $OUT/embpcasym-s0
[ -f $OUT/embpcashared-s0/manifest.json ] || \
  $PY -m training train-retriever $COMMON --seed 0 --init-from artifacts/generator-standard \
      --set retriever.model.shared=true --runs runs-exp/s16-embpcashared-s0 --out $OUT/embpcashared-s0
ln -sfn ../ret/embpcasym-s0 $SEEDS/embpcasym-s0
ln -sfn ../ret/embpcashared-s0 $SEEDS/embpcashared-s0
$PY -m benchmarks.retriever_seeds --bundles $SEEDS --baseline served \
    --out reports/retriever_embpca_seeds_small

#!/usr/bin/env bash
# Issue 11 (session 18): after reports/retrievers_base_g2r_full.md (teacher replies for all 67,011
# contexts: 74% of the positives, G2R-D 0.045 below the 3,000-context runs), quality instead of
# quantity: the same full shards through a stricter teacher quality bar, only the top 10% of the
# teacher's replies by its own score (min_score_teacher_quantile 0.9 instead of base's 0.25), seed 0,
# 3,000 updates, beside the runs of that report. Resumable (checkpoints).
set -euo pipefail
PY=.venv/bin/python
RUNS=runs-exp/s18-g2r-full
OUT=artifacts-s18/base-g2r-full
[ -f $OUT/g2rd-top10-s0/manifest.json ] || \
  $PY -m training train-retriever --preset base --method g2r-d --seed 0 --max-steps 3000 \
      --set retriever.teacher_filter.min_score_teacher_quantile=0.9 \
      --tokenizer runs-base/base/tokenizer.json --init-from artifacts-base/generator-standard \
      --augmented $RUNS/g2r-augment-generator-nt-all --runs $RUNS --name g2rd-top10-s0 --out $OUT/g2rd-top10-s0
OMP_NUM_THREADS=2 $PY -m benchmarks.retriever_seeds --bundles $OUT --baseline biencoder \
    --out reports/retrievers_base_g2r_teacher_bar

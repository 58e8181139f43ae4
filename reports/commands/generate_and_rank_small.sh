#!/usr/bin/env bash
# Issue 11, session 25: generate, then rank (GENERATIVE_RERANK). The served small generator's
# candidates (greedy; beam n-best of 4, 8, 16; 7 samples as the safety filter draws them) ranked
# by the served small retriever as the service ranks them (RetrievalResponder.rank_replies),
# judged by models that took no part: base's plain bi-encoder (percentile among 99 random test
# responses) and base's Standard generator (log p per token); BLEU-4, Dist-2, max-ratio, generic
# and unseen shares; batch-1 time of each ranked decoding against greedy. The whole test split.
# Needs `make run` (artifacts/) and the base build (artifacts-base/).
set -euo pipefail
cd "$(dirname "$0")/../.."
uptime
OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.generate_and_rank --artifacts artifacts \
  --split test --contexts 0 --beams 4,8,16 --judge artifacts-base/retriever-biencoder \
  --judge-generator artifacts-base/generator-standard --latency-contexts 200 \
  --out reports/generate_and_rank_small
# what a user sees: the everyday probe, ranked (the service's default now) beside unranked,
# on small's bundles and on base's
OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.everyday_probe --artifacts artifacts \
  --data ../shared/data/dailydialog --out reports/everyday_probe_small
OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.everyday_probe --artifacts artifacts-base \
  --data ../shared/data/dailydialog --out reports/everyday_probe_base
# base's served generator ranked by base's served retriever, judged by small's retriever and
# small's Standard generator (models base's ranking took no part in); 2,000 test contexts
OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.generate_and_rank --artifacts artifacts-base \
  --split test --contexts 2000 --beams 8 --judge artifacts/retriever-g2r \
  --judge-generator artifacts/generator-standard --latency-contexts 200 \
  --out reports/generate_and_rank_base

#!/usr/bin/env bash
# The commands behind reports/service.{md,json}: the bundles are the ones `make run` builds on a
# clean clone (preset small; here that clone was /tmp/ci/main, so --models-dir pointed there).
set -euo pipefail
cd "$(dirname "$0")/../.."
OMP_NUM_THREADS=1 make build                       # or: make run (builds, then serves)
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.service_load --threads 1 --models-dir artifacts \
    --generative-bundle generator-nd --retrieval-bundle retriever-g2r --out reports/service

# Issue 17 (items 3-5), reports/http_profile.md: the event loop's time per POST /respond under
# cProfile (before: a worktree of the commit before the changes, --loop asyncio --http h11)
.venv/bin/python -m benchmarks.profile_http --models-dir artifacts --requests 1500 --warmup 100 \
    --top 20 --label after --out reports/http_profile/after_r1
# To be measured on an idle machine (the CPU was shared with a training job when these were
# written): threads x workers, and ours against LitServe on the same bundles (the bench extra)
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.service_load --models-dir artifacts \
    --generative-bundle generator-nd --retrieval-bundle retriever-g2r \
    --threads 1,2 --workers 1,2 --out reports/service_threads_workers
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.peer --models-dir artifacts --runs 3 \
    --concurrency 1,8,32 --out reports/service_peer

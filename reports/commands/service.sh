#!/usr/bin/env bash
# The commands behind reports/service.{md,json}: the bundles are the ones `make run` builds on a
# clean clone (preset small; here that clone was /tmp/ci/main, so --models-dir pointed there).
set -euo pipefail
cd "$(dirname "$0")/../.."
OMP_NUM_THREADS=1 make build                       # or: make run (builds, then serves)
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.service_load --threads 1 --models-dir artifacts \
    --generative-bundle generator-nd --retrieval-bundle retriever-g2r --out reports/service

#!/usr/bin/env bash
# Search scaling report (reports/search_scaling.md, reports/search_scaling.json).
# Machine: shared 2-core CPU, one thread (OMP_NUM_THREADS=1; the script also sets torch and FAISS
# to 1 thread), one job at a time. Synthetic seeded embeddings: no data or bundles needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
.venv/bin/python -m benchmarks.search_scaling --sizes 10000,100000,1000000 --queries 1000 \
    --ef 64,128,256 --build-budget-s 720 --out reports/search_scaling

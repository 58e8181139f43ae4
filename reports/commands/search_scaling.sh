#!/usr/bin/env bash
# Search scaling report (reports/search_scaling.md, reports/search_scaling.json).
# Machine: shared 2-core CPU, one thread (OMP_NUM_THREADS=1; the script also sets torch and FAISS
# to 1 thread), one job at a time. Synthetic seeded embeddings; --like needs the G2R-DM bundle
# of reports/commands/g2r.sh (its embedding mean and covariance).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
.venv/bin/python -m benchmarks.search_scaling --sizes 10000,100000,1000000 --queries 1000 \
    --ef 64,128,256 --build-budget-s 720 --like artifacts/retriever-g2r-dm \
    --out reports/search_scaling
# Diagnostic: unit-norm rows (the equal-norm coordinate is then ~0 for every row, i.e. the
# transform is a no-op), to tell the transform's effect from the data's on Gaussian recall.
.venv/bin/python -m benchmarks.search_scaling --sizes 10000,100000 --queries 1000 \
    --ef 64,128,256 --unit-norm --out reports/search_scaling_unit_norm

#!/usr/bin/env bash
# Issue 11 (session 17): where base's served retrieval time goes (tokenize / encode / search), and
# what a smaller efSearch under the re-ranker would save and change. Idle machine, one thread, as
# the quality report's latency table.
set -euo pipefail
PY=.venv/bin/python
OMP_NUM_THREADS=1 $PY -m benchmarks.retrieval_stages --bundle artifacts-base/retriever-biencoder \
    --out reports/retrieval_stages_base

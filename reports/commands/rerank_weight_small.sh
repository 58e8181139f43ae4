#!/usr/bin/env bash
# Issue 11 (session 13): is the TF-IDF re-ranking weight the build chooses on validation the best on
# test? The session-12 (artifacts-s12) and session-13 small retrievers, every weight the build tries,
# scored on the first 1,000 validation pairs (the old rule), the whole validation split and the test
# split. Then the session-13 retriever stage again with the whole-split rule (same weights: the
# training is deterministic), and the quality report. Quality figures do not depend on load.
set -euo pipefail
PY=.venv/bin/python

$PY -m benchmarks.rerank_weight --bundle s12=artifacts-s12/retriever-g2r \
    --bundle s13=artifacts/retriever-g2r --first 1000 --out reports/rerank_weight_small
$PY -m training build --preset small --data ../shared/data/dailydialog --out artifacts --runs runs \
    --redo retriever-g2r
OMP_NUM_THREADS=2 $PY -m benchmarks.quality_report --artifacts artifacts --out reports/quality_small

#!/usr/bin/env bash
# Issue 11 (session 21): the retriever's context encoder in int8 (RETRIEVAL_INT8, on by default on
# a CPU) against float32 on base's bi-encoder and on its 1-layer distilled context encoder
# (retriever-fast, session 20: `python -m training distill-context --preset base --bundle
# artifacts-base/retriever-biencoder --out artifacts-base/retriever-fast --runs runs-base`).
# Idle machine, one thread. First the whole test split's Hits@1/100 (dense and served), the
# served top-1 agreement with float32 and the interleaved batch-1 times; then, per bundle, where
# the served time goes and greedy generation against the served path, float32, other efSearch
# values and the dense path (G2R's own retrieval) at each efSearch, interleaved.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
OMP_NUM_THREADS=1 $PY -m benchmarks.retrieval_int8 \
    --retriever biencoder=artifacts-base/retriever-biencoder \
    --retriever fast=artifacts-base/retriever-fast --out reports/retrieval_int8_base
OMP_NUM_THREADS=1 $PY -m benchmarks.retrieval_stages --bundle artifacts-base/retriever-biencoder \
    --generator artifacts-base/generator-nt --ef 256,128,64 --out reports/retrieval_stages_base_s21
OMP_NUM_THREADS=1 $PY -m benchmarks.retrieval_stages --bundle artifacts-base/retriever-fast \
    --generator artifacts-base/generator-nt --ef 256,128,64 --out reports/retrieval_stages_fast_s21
# the 1-layer student against its teacher, served and dense, whole test split
mkdir -p artifacts-s21/cmp
ln -sfn ../../artifacts-base/retriever-biencoder artifacts-s21/cmp/biencoder-s0
ln -sfn ../../artifacts-base/retriever-fast artifacts-s21/cmp/fast-s0
$PY -m benchmarks.retriever_seeds --bundles artifacts-s21/cmp --baseline biencoder \
    --out reports/retriever_fast_base

# The same comparison on the small preset (what `make run` builds and serves), after a fresh
# `make build` on the idle machine (its wall time from /usr/bin/time in the session-21 note).
OMP_NUM_THREADS=1 $PY -m benchmarks.retrieval_int8 \
    --retriever g2r=artifacts/retriever-g2r --out reports/retrieval_int8_small

# The service under load with RETRIEVAL_INT8=off against auto (int8), small's retriever: one server
# at a time, alternating over 4 rounds, closed-loop load at concurrency 1 and 8 (batching on,
# safety filter off: the peer benchmark's server).
OMP_NUM_THREADS=1 $PY -m benchmarks.server_ab --backend retrieval --rounds 4 --concurrency 1,8 \
    --variant float32:RETRIEVAL_INT8=off --variant int8:RETRIEVAL_INT8=auto --models-dir artifacts \
    --out reports/retrieval_int8_server_ab_small

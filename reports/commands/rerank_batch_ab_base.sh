#!/usr/bin/env bash
# Issue 11 (session 26): does re-ranking a micro-batch in one numpy pass (c2c588c) make the served
# retrieval path faster than the per-context loop before it (d9db92d)? Both checkouts' retriever
# and re-ranker code on base's served bi-encoder, interleaved call by call, at batch 1 (the
# latency target's protocol: retrieval vs greedy generation, batch 1) and in micro-batches of 16
# (what the service's batcher hands a retrieval backend under load), with their replies compared.
# Idle machine, one thread; ~4 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
[ -d /tmp/before-d9db92d ] || git worktree add -f /tmp/before-d9db92d d9db92d
OMP_NUM_THREADS=1 $PY -m benchmarks.served_path_ab --bundle artifacts-base/retriever-biencoder \
    --baseline-src /tmp/before-d9db92d --out reports/rerank_batch_ab_base_b1
OMP_NUM_THREADS=1 $PY -m benchmarks.served_path_ab --bundle artifacts-base/retriever-biencoder \
    --baseline-src /tmp/before-d9db92d --batch 16 --queries 1600 --rounds 3 \
    --agreement 2000 --out reports/rerank_batch_ab_base_b16
# Then the batch-1 target itself with this code: the served path and its variants against greedy
# generation of the served generator, interleaved, with the floor any retrieval with this
# encoder pays (tokenize + encode alone) and what that leaves for search and re-ranking.
OMP_NUM_THREADS=1 $PY -m benchmarks.retrieval_stages --bundle artifacts-base/retriever-biencoder \
    --generator artifacts-base/generator-nt --ef 256,128,64 --out reports/retrieval_stages_base_s26

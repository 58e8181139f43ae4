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
# The batched code was measured from the checkout that had it (cbf084c; c2c588c's retriever and
# re-ranker); it was then taken back (see below), so the A/B runs from a worktree of it.
[ -d /tmp/before-d9db92d ] || git worktree add -f /tmp/before-d9db92d d9db92d
[ -d /tmp/batched-c2c588c ] || git worktree add -f /tmp/batched-c2c588c c2c588c
ROOT=$PWD
for batch in 1 16; do
  if [ $batch = 1 ]; then more=""; else more="--queries 1600 --rounds 3 --agreement 2000"; fi
  (cd /tmp/batched-c2c588c && OMP_NUM_THREADS=1 $ROOT/$PY -m benchmarks.served_path_ab \
      --bundle $ROOT/artifacts-base/retriever-biencoder --data $ROOT/../shared/data/dailydialog \
      --baseline-src /tmp/before-d9db92d --batch $batch $more --out $ROOT/reports/rerank_batch_ab_base_b$batch)
done
# Result: 0.96x at batch 1 (0.045 ms slower a request), 1.04x at batch 16, the same replies. The
# per-context numpy calls were not what the re-rank costs (its per-element work and the HNSW
# top-100 are), so the batched code was taken back: it slowed the latency target's own case.
# Then the batch-1 target itself with the code kept (the per-context loop): the served path and
# its variants against greedy generation of the served generator, interleaved, with the floor any retrieval with this
# encoder pays (tokenize + encode alone) and what that leaves for search and re-ranking.
OMP_NUM_THREADS=1 $PY -m benchmarks.retrieval_stages --bundle artifacts-base/retriever-biencoder \
    --generator artifacts-base/generator-nt --ef 256,128,64 --out reports/retrieval_stages_base_s26

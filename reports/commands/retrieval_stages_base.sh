#!/usr/bin/env bash
# Issue 11 (session 17): where base's served retrieval time goes (tokenize / encode / search), and
# what a smaller efSearch under the re-ranker would save and change. Idle machine, one thread, as
# the quality report's latency table.
set -euo pipefail
PY=.venv/bin/python
OMP_NUM_THREADS=1 $PY -m benchmarks.retrieval_stages --bundle artifacts-base/retriever-biencoder \
    --out reports/retrieval_stages_base

# Session 19 (base rebuilt from scratch on a new machine: `bash reports/commands/build_base.sh`'s
# first command): the batch-1 retrieval path after the traced context encoder and the leaner
# re-ranking (11a8575..950fb60). Idle machine, one thread. First the stages and, interleaved
# context by context, greedy generation of the served generator against the served retrieval and
# its variants (untraced encoder, efSearch 128 and 100, dense path alone); then the session-18
# code (edc3092) against this checkout on the same bundle, interleaved, with their replies compared.
OMP_NUM_THREADS=1 $PY -m benchmarks.retrieval_stages --bundle artifacts-base/retriever-biencoder \
    --generator artifacts-base/generator-nt --out reports/retrieval_stages_base_s19
[ -d /tmp/before-edc3092 ] || git worktree add -f /tmp/before-edc3092 edc3092
OMP_NUM_THREADS=1 $PY -m benchmarks.served_path_ab --bundle artifacts-base/retriever-biencoder \
    --baseline-src /tmp/before-edc3092 --out reports/served_path_ab_base

#!/usr/bin/env bash
# Issue 11, session 25: what generate-then-rank (GENERATIVE_RERANK=8, the service's default since
# this session) costs a loaded service: generative requests only, micro-batching on, closed-loop
# concurrency 1, 8 and 32, the server at 1 thread on this 2-core machine (the load client shares
# the cores). Three servers: unranked (0: greedy replies in the continuous batch); ranked at any
# load (GENERATIVE_RERANK_BELOW=0); ranked only while fewer than 4 generative requests are queued
# or running (the default), a busier backend serving its own decoding.
set -euo pipefail
cd "$(dirname "$0")/../.."
uptime
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.service_load --threads 1 --backends generative \
  --batching on --concurrency 1,8,32 --skip-inprocess --generative-rerank 0 \
  --out reports/service_load_rerank0_small
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.service_load --threads 1 --backends generative \
  --batching on --concurrency 1,8,32 --skip-inprocess --generative-rerank 8 \
  --generative-rerank-below 0 --out reports/service_load_rerank8_small
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.service_load --threads 1 --backends generative \
  --batching on --concurrency 1,8,32 --skip-inprocess --generative-rerank 8 \
  --generative-rerank-below 4 --out reports/service_load_rerank8_below4_small
uptime

#!/usr/bin/env bash
# The commands behind reports/reliability.md (issue 12), in the order they ran. Every figure is
# against a real `python -m service` started by the benchmark itself, on this workplace's 2-core
# CPU (no GPU) while other jobs used the same cores (the base training build and other training
# jobs; each output records the load average). Outputs: reports/reliability_*.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python

# Baseline before this session (code at commit 6eb5645, tiny bundles from tests/service_fixtures.py
# served with DIALOGUE_MODELS_DIR=<tiny> DIALOGUE_PORT=<port> python -m service):
#   schemathesis run http://127.0.0.1:<port>/openapi.json --checks all --seed 1 --max-examples 100 \
#       --no-color --workers 1 --continue-on-failure > reports/reliability_fuzz_before.txt

# Schema fuzzing: schemathesis --checks all, positive and negative cases, fixed seed, the small
# build's bundles with the safety classifier, admin endpoint on (fuzzed with and without auth).
$PY -m benchmarks.service_fuzz --models-dir artifacts --seed 1 --max-examples 3000 \
    --out reports/reliability_fuzz
# (the same run on tiny bundles with 1,000 examples is the slow test
#  tests/test_service_schema.py::test_schemathesis_with_every_check_finds_nothing)

# Deadline under 128 concurrent clients (lean raw-socket clients that wait Retry-After after a
# 429), FALLBACK on, REQUEST_TIMEOUT_S 5 (default) and 1 (so that the deadline binds).
$PY -m benchmarks.service_reliability deadline --backend generative --concurrency 128 \
    --requests 1500 --request-timeout-s 5 --out reports/reliability_deadline_generative_5s
$PY -m benchmarks.service_reliability deadline --backend retrieval --concurrency 128 \
    --requests 1500 --request-timeout-s 5 --out reports/reliability_deadline_retrieval_5s
$PY -m benchmarks.service_reliability deadline --backend generative --concurrency 128 \
    --requests 1500 --request-timeout-s 1 --out reports/reliability_deadline_generative_1s
# the same with httpx as the load generator (as benchmarks/service_load.py drives it)
$PY -m benchmarks.service_reliability deadline --backend generative --concurrency 128 \
    --requests 1500 --request-timeout-s 5 --client httpx \
    --out reports/reliability_deadline_generative_5s_httpx

# Poison requests beside 16 normal clients (one every 50 ms), 1,500 normal requests per backend.
$PY -m benchmarks.service_reliability poison --requests 1500 --out reports/reliability_poison

# 5-minute soak, 16 clients, mixed traffic; the server's RSS every 5 s.
$PY -m benchmarks.service_reliability soak --seconds 300 --concurrency 16 \
    --out reports/reliability_soak

# A 200 MiB body without Content-Length (chunked) and one declaring 200 MiB.
$PY -m benchmarks.service_reliability chunked --out reports/reliability_chunked

# Threads (item 9). The load benchmark beside the busy machine: 2 intra-op threads (the old
# default: torch's, no OpenMP policy), 2 with spinning OpenMP threads (ACTIVE), 1 (the new default).
for threads in 2 1; do
  $PY -m benchmarks.service_load --backends generative,retrieval --concurrency 8,32 \
      --batching on --generative-requests 200 --retrieval-requests 600 --warmup 16 \
      --skip-inprocess --threads "$threads" --out "reports/reliability_threads_$threads"
done
$PY -m benchmarks.service_load --backends generative,retrieval --concurrency 8,32 \
    --batching on --generative-requests 200 --retrieval-requests 600 --warmup 16 \
    --skip-inprocess --threads 2 --server-omp-wait-policy active \
    --out reports/reliability_threads_2_active
# ... and beside a deliberately spinning companion as well (2 torch threads, libgomp's default
# policy), as the training jobs ran before they let idle OpenMP threads sleep
env -u OMP_WAIT_POLICY $PY -c '
import torch, time
torch.set_num_threads(2)
a = torch.randn(384, 384)
end = time.time() + 600
while time.time() < end:
    a = torch.tanh(a @ a)
' &
BUSY=$!
trap 'kill $BUSY 2>/dev/null || true' EXIT
sleep 2
for threads in 2 1; do
  $PY -m benchmarks.service_load --backends generative --concurrency 8,32 --batching on \
      --generative-requests 200 --warmup 16 --skip-inprocess --threads "$threads" \
      --out "reports/reliability_threads_${threads}_spinning_companion"
done
kill $BUSY
# A/B routed traffic (both backends computing at once), 32 clients, 2 vs 1 threads
for threads in 2 1; do
  $PY -m benchmarks.service_reliability deadline --backend ab --concurrency 32 --requests 1500 \
      --server-env DIALOGUE_TORCH_THREADS=$threads --out "reports/reliability_threads_${threads}_ab"
done
# One batched generative call (16 contexts) per thread count x OpenMP policy, fresh processes,
# without and with the spinning companion
$PY -m benchmarks.service_threads --calls 20 --out reports/reliability_threads_calls

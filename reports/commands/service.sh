#!/usr/bin/env bash
# The commands behind reports/service.md, service_threads_workers.md and service_peer.md (issue 17),
# run one after the other on the idle 2-core machine (nothing else running; each run's own load
# average is in its report). The bundles are the ones `make run` builds (preset small):
# artifacts/generator-nt and artifacts/retriever-g2r, as artifacts/serving.json chooses.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
uptime
.venv/bin/python -m benchmarks.service_load --threads 1 --out reports/service
.venv/bin/python -m benchmarks.service_load --threads 1,2 --workers 1,2 --skip-inprocess \
    --out reports/service_threads_workers
# ours against LitServe on the same bundles (the bench extra: pip install -e '.[bench]')
.venv/bin/python -m benchmarks.peer --models-dir artifacts --runs 3 --concurrency 1,8,32 \
    --out reports/service_peer
uptime

# reports/http_profile.md: the event loop's time per POST /respond under cProfile (before: a
# worktree of the commit before the changes, --loop asyncio --http h11)
.venv/bin/python -m benchmarks.profile_http --models-dir artifacts --requests 1500 --warmup 100 \
    --top 20 --label after --out reports/http_profile/after_r1

# reports/http_overhead.md: in-process vs service vs client, alternating rounds (a training job
# that ran meanwhile was paused with SIGSTOP for the duration)
.venv/bin/python -m benchmarks.http_overhead --rounds 3 --out reports/http_overhead
# reports/service_peer_generative.md: the generative backend against LitServe again after the
# free-slot change of models/continuous.py (same pause)
.venv/bin/python -m benchmarks.peer --models-dir artifacts --backends generative --batching on \
    --runs 3 --concurrency 1,8,32 --out reports/service_peer_generative

# Session 10: the same with the wait policy session 8's run had inherited (reports/http_overhead.md)
OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m benchmarks.http_overhead --rounds 5 \
    --out reports/http_overhead_passive

# Session 11: bfloat16 against float32 for the small bundles (reports/cpu_dtype_small.md), the
# evidence behind DTYPE=auto's choice of bf16 generators on CPUs with native bf16
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.cpu_dtype --out reports/cpu_dtype_small
# ours vs LitServe with both servers' weights in float32, then in bfloat16 (reading in
# reports/service_peer_generative.md, session 11)
for dtype in float32 bfloat16; do
    .venv/bin/python -m benchmarks.peer --models-dir artifacts --backends generative --batching on \
        --runs 3 --concurrency 1,8,32 --dtype "$dtype" --out "reports/service_peer_generative_$dtype"
done
for dtype in float32 bfloat16; do
    .venv/bin/python -m benchmarks.peer --models-dir artifacts --backends generative --batching on \
        --runs 3 --concurrency 32 --generative-requests 2000 --dtype "$dtype" \
        --out "reports/service_peer_c32_$dtype"
done
# every cell of issue 17's table in one run, both servers in float32 (reports/service_peer_s11.md)
.venv/bin/python -m benchmarks.peer --models-dir artifacts --runs 3 --concurrency 1,8,32 --dtype float32 \
    --out reports/service_peer_s11
# the ratios table of reports/service_peer_s11.md, rendered from that run's JSON (nothing re-measured)
.venv/bin/python -m benchmarks.peer --render reports/service_peer_s11.json

# Session 12: the generative backend against LitServe after the prefill thread (PREFILL_THREAD,
# continuous batching encodes waiting requests on a second thread): reports/service_peer_s12_generative.md
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.peer --models-dir artifacts --runs 3 --backends generative \
    --concurrency 1,8,32 --dtype float32 --out reports/service_peer_s12_generative
# same-run A/B: decoding thread alone, with the prefill thread, and the decoder in a process of its
# own (DECODER_PROCESS, tried at the commit that added it and reverted after this A/B), fp32 and bf16
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.server_ab --rounds 4 --concurrency 1,32 --requests 512 \
    --variant thread:PREFILL_THREAD=false --variant prefill:PREFILL_THREAD=true \
    --variant process:DECODER_PROCESS=true --out reports/decoder_process_ab
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.server_ab --rounds 4 --concurrency 32 --requests 768 \
    --dtype bfloat16 --variant thread:PREFILL_THREAD=false --variant prefill:PREFILL_THREAD=true \
    --variant process:DECODER_PROCESS=true --out reports/decoder_process_ab_bf16
# every cell of issue 17's table in one run after the prefill thread (reports/service_peer_s12.md)
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.peer --models-dir artifacts --runs 3 --concurrency 1,8,32 \
    --dtype float32 --out reports/service_peer_s12
# the HTTP + metrics overhead with this session's code (reports/http_overhead_s12.md)
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.http_overhead --rounds 3 --out reports/http_overhead_s12

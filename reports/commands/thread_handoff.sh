python -m benchmarks.thread_handoff --rounds 400 --out reports/thread_handoff

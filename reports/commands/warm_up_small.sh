#!/usr/bin/env bash
# Session 21: the first model call of a fresh replica with and without the start-up warm-up
# (service/backends.py, Backend.warm_up), on the small bundles `make run` serves (a fresh
# `make build`). Idle machine, one thread, 5 fresh processes per arm, alternating.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python -m benchmarks.warm_up --artifacts artifacts --rounds 5 --out reports/warm_up_small

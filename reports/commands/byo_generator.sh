#!/usr/bin/env bash
# Bring your own generator (reports/byo_generator.md, reports/byo_generator.json): the command.
# Machine: idle 2-core CPU (load 0.7-1.3 during the committed run), 1 torch thread.
# Needs artifacts/generator-nt (the small build's NT generator) and the hf extra (transformers).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
uptime
$PY -m benchmarks.byo_generator --ours artifacts/generator-nt --repeats 40 --out reports/byo_generator
uptime

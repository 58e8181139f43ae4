#!/usr/bin/env bash
# Issue 11 (session 15): the served NT model with and without block_adjacent_repeats, whole test
# and validation splits (quality figures do not depend on load; ~2 min each on the 2-core CPU).
# Then the served bundles get the rule as their default (small's preset has it since session 15).
set -euo pipefail
PY=.venv/bin/python
export OMP_NUM_THREADS=2
$PY -m benchmarks.adjacent_repeats --bundle artifacts/generator-nt --split test \
    --out reports/adjacent_repeats_small
$PY -m benchmarks.adjacent_repeats --bundle artifacts/generator-nt --split validation \
    --out reports/adjacent_repeats_small_val
for g in generator-standard generator-negative-teacher generator-nd generator-nt; do
  $PY -m training set-decoding --bundle artifacts/$g --set block_adjacent_repeats=true
done

#!/usr/bin/env bash
# Issue 11 (session 14): NT's least-generic step chosen among 4 evaluation points (every 25 updates
# from update 75, the session-13 preset) or 8 (every 10 from update 80: nt_select_evals=15), from
# the same standard models: seed 0 of the session-14 build (its own NT is the 4-point run) and
# seeds 1 and 2 of session 13's dropout-0 standard models (reports/generator_dropout_seeds_small.md,
# tokenizer of that build, now runs-s13f/). NT's trajectory is deterministic, so the two settings
# differ only in which step is kept. Scores do not depend on load.
set -euo pipefail
PY=.venv/bin/python
nt() {  # name base tokenizer evals seed
  $PY -m training train-generator --preset small --method nt --base "$2" --tokenizer "$3" \
      --seed "$5" --max-steps 150 --set nt_select_evals="$4" --out artifacts-s14/nt/"$1" \
      --runs runs-exp/s14-nt
}
nt e15-s0 artifacts/generator-standard runs/small/tokenizer.json 15 0
nt e6-s1 artifacts-seeds13/d0-s1 runs-s13f/small/tokenizer.json 6 1
nt e15-s1 artifacts-seeds13/d0-s1 runs-s13f/small/tokenizer.json 15 1
nt e6-s2 artifacts-seeds13/d0-s2 runs-s13f/small/tokenizer.json 6 2
nt e15-s2 artifacts-seeds13/d0-s2 runs-s13f/small/tokenizer.json 15 2
R=runs-exp/s14-nt/small+224124a1  # the 15-point runs' folder (<preset>+<digest of the override>)
$PY -m benchmarks.generator_seeds --bundle evals6/s0=artifacts/generator-nt \
    --bundle evals15/s0=artifacts-s14/nt/e15-s0 --bundle evals6/s1=artifacts-s14/nt/e6-s1 \
    --bundle evals15/s1=artifacts-s14/nt/e15-s1 --bundle evals6/s2=artifacts-s14/nt/e6-s2 \
    --bundle evals15/s2=artifacts-s14/nt/e15-s2 --log evals6-s0=runs/small/generator-nt/metrics.jsonl \
    --log evals15-s0=$R/e15-s0/metrics.jsonl --log evals15-s1=$R/e15-s1/metrics.jsonl \
    --log evals15-s2=$R/e15-s2/metrics.jsonl --out reports/nt_select_evals_small

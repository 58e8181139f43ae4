#!/usr/bin/env bash
# Issue 11, session 23: does self-distillation over unseen contexts (the last turns of training
# dialogues; reports/g2r_hard_kd_final_base_seeds.md: +0.0084 served at base, t 4.83) carry to
# the retriever `make run` serves (small's G2R-D)? The same benchmark at small, three seeds; the
# kd arm (the NT generator as teacher) beside it. ~8 min a seed on the idle 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
for seed in 0 1 2; do
  [ -f reports/g2r_hard_kd_final_small_s$seed.json ] || OMP_NUM_THREADS=2 $PY -m benchmarks.g2r_hard_kd \
      --retriever artifacts/retriever-g2r --teacher artifacts/generator-nt \
      --preset small --kd-contexts final --contexts 10000 --arms control,kd,self --seed $seed \
      --scores runs-exp/g2r_hard_kd_final_small_scores.pt --out reports/g2r_hard_kd_final_small_s$seed
done
$PY -m benchmarks.g2r_hard_kd_seeds reports/g2r_hard_kd_final_small_s0.json \
    reports/g2r_hard_kd_final_small_s1.json reports/g2r_hard_kd_final_small_s2.json --pair kd:self \
    --out reports/g2r_hard_kd_final_small_seeds

#!/usr/bin/env bash
# Issue 11 (session 22): is G2R-D level with the bi-encoder because the teacher knows nothing the
# bi-encoder does not? First, the base generator (the standard MLE model) as a ranker alone and
# re-scoring the served bi-encoder's top 3 with eq. 6 (beta chosen on validation), with the cost
# of doing that at batch 1; then whether model-level distillation (eq. 4 over the bi-encoder's own
# candidates, the teacher = the hybrid ranking) carries that into the bi-encoder, against the same
# continuation without it. Idle machine, 2 threads; ~5 and ~16 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
OMP_NUM_THREADS=2 $PY -m benchmarks.g2r_teacher_signal --retriever artifacts-base/retriever-biencoder \
    --generator artifacts-base/generator-standard --out reports/g2r_teacher_signal_base
OMP_NUM_THREADS=2 $PY -m benchmarks.g2r_hard_kd --retriever artifacts-base/retriever-biencoder \
    --teacher artifacts-base/generator-standard --preset base --out reports/g2r_hard_kd_base
# the same with the hardest negatives: the bi-encoder's top 8 of its whole index (~18 minutes)
OMP_NUM_THREADS=2 $PY -m benchmarks.g2r_hard_kd --retriever artifacts-base/retriever-biencoder \
    --teacher artifacts-base/generator-standard --preset base --candidates index --k 8 \
    --contexts 8000 --out reports/g2r_hard_kd_index_base
# the teacher reorders only the negatives; the gold keeps the starting student's probability.
# Three seeds of the continuation (batches and KD draws; the scored contexts stay those of
# sample seed 0, kept in runs-exp/g2r_hard_kd_scores.pt), each with the same L_KD at beta 0
# (`self`: the starting student as its own teacher) to tell the generator's part from
# self-distillation's. ~19 minutes for the first seed (the scoring), ~15 for each other.
for seed in 0 1 2; do
  OMP_NUM_THREADS=2 $PY -m benchmarks.g2r_hard_kd --retriever artifacts-base/retriever-biencoder \
      --teacher artifacts-base/generator-standard --preset base --kd-target negatives \
      --arms control,kd,self --seed $seed --scores runs-exp/g2r_hard_kd_scores.pt \
      --out reports/g2r_hard_kd_negatives_base_s$seed
done
$PY -m benchmarks.g2r_hard_kd_seeds reports/g2r_hard_kd_negatives_base_s0.json \
    reports/g2r_hard_kd_negatives_base_s1.json reports/g2r_hard_kd_negatives_base_s2.json --pair kd:self \
    --pair kd:bundle --out reports/g2r_hard_kd_negatives_base_seeds
# session 23: the same distillation over contexts the bi-encoder never trained on (the last turns
# of each training dialogue, 10,000 of them; candidates = its top 3 of 99 random, no gold),
# where the hybrid teacher's ranking was measured to help; three seeds as above
for seed in 0 1 2; do
  [ -f reports/g2r_hard_kd_final_base_s$seed.json ] || OMP_NUM_THREADS=2 $PY -m benchmarks.g2r_hard_kd \
      --retriever artifacts-base/retriever-biencoder --teacher artifacts-base/generator-standard \
      --preset base --kd-contexts final --contexts 10000 --arms control,kd,self --seed $seed \
      --scores runs-exp/g2r_hard_kd_final_scores.pt --out reports/g2r_hard_kd_final_base_s$seed
done
$PY -m benchmarks.g2r_hard_kd_seeds reports/g2r_hard_kd_final_base_s0.json \
    reports/g2r_hard_kd_final_base_s1.json reports/g2r_hard_kd_final_base_s2.json --pair kd:self \
    --pair self:bundle --out reports/g2r_hard_kd_final_base_seeds
# a sensitivity check of the teacher's weight (validation's criterion is flat from beta 10 to 80
# within its SE): seed 0 at beta 10; its self arm repeats seed 0's exactly (deterministic)
OMP_NUM_THREADS=2 $PY -m benchmarks.g2r_hard_kd --retriever artifacts-base/retriever-biencoder \
    --teacher artifacts-base/generator-standard --preset base --kd-contexts final --contexts 10000 \
    --arms kd,self --beta 10 --seed 0 --scores runs-exp/g2r_hard_kd_final_scores.pt \
    --out reports/g2r_hard_kd_final_beta10_base_s0

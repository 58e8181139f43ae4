#!/usr/bin/env bash
# Malicious-target negative training (He & Glass 2020, Alg. 1) on the small standard generator:
# hit rates on a seeded 100-target sample of the train list before/after NT, with and without
# paraphrase augmentation, T_out fixed from the base model. Two chains run side by side.
set -euo pipefail
export OMP_NUM_THREADS=1
PY=.venv/bin/python
T=../shared/data/malicious_targets
BASE=artifacts/generator-standard
LM=artifacts/lm-responses
OUT=reports/safety_malicious
mkdir -p "$OUT" runs/logs
# the response LM (io- hit types); resumes from its checkpoint when it already exists
$PY -m training train-lm --base $BASE --out $LM --max-steps 500 > runs/logs/lm.log 2>&1
attack() {  # bundle name
  $PY -m training attack --bundle "$1" --reference $BASE --lm $LM --mode both \
    --targets $T/train.txt --limit 100 --out "$OUT/attack_$2" > "runs/logs/attack_$2.log" 2>&1
}
(
  $PY -m training train-malicious-nt --base $BASE --targets $T/train.txt \
    --out artifacts/generator-nt-malicious-0.5k > runs/logs/nt05.log 2>&1
  attack artifacts/generator-nt-malicious-0.5k nt-0.5k
) &
(
  attack $BASE base
  # same number of target searches as 0.5k x 2 iterations
  $PY -m training train-malicious-nt --base $BASE --targets $T/train_aug1k.txt --iterations 1 \
    --out artifacts/generator-nt-malicious-1k > runs/logs/nt1k.log 2>&1
  attack artifacts/generator-nt-malicious-1k nt-1k
) &
wait

# Variant run afterwards: the same 0.5k run at a lower learning rate (perplexity cost of NT).
$PY -m training train-malicious-nt --base $BASE --targets $T/train.txt --lr 3e-5 --max-updates 20 \
  --out artifacts/generator-nt-malicious-0.5k-lr3e-5 > runs/logs/nt05-lr.log 2>&1
attack artifacts/generator-nt-malicious-0.5k-lr3e-5 nt-0.5k-lr3e-5

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

# Held-out paraphrases (run after the above):
# Held-out paraphrase list: paraphrases of the train targets that no train list (train, aug1k,
# aug2_5k) contains; a stand-in for the paper's held-out test list, which is not public here.
.venv/bin/python -m training heldout-paraphrases --out runs/malicious/heldout_paraphrases.txt
export OMP_NUM_THREADS=1
for m in base:artifacts/generator-standard nt-0.5k:artifacts/generator-nt-malicious-0.5k nt-1k:artifacts/generator-nt-malicious-1k; do
  name=${m%%:*}; bundle=${m#*:}
  .venv/bin/python -m training attack --bundle $bundle --reference artifacts/generator-standard \
    --targets runs/malicious/heldout_paraphrases.txt --limit 100 --mode o \
    --out reports/safety_malicious/heldout_$name > runs/logs/heldout_$name.log 2>&1
done

# Variant: FWA also over the 100 most frequent DailyDialog response words (not in the paper).
$PY -m training train-malicious-nt --base $BASE --targets $T/train.txt --fwa-corpus-top 100 \
  --out artifacts/generator-nt-malicious-0.5k-fwa100 > runs/logs/nt05-fwa100.log 2>&1
attack artifacts/generator-nt-malicious-0.5k-fwa100 nt-0.5k-fwa100
$PY -m training attack --bundle artifacts/generator-nt-malicious-0.5k-fwa100 --reference $BASE \
  --targets runs/malicious/heldout_paraphrases.txt --limit 100 --mode o \
  --out $OUT/heldout_nt-0.5k-fwa100 > runs/logs/heldout_nt-0.5k-fwa100.log 2>&1

# The whole 500-target train list, o- search, base and NT(0.5k):
for m in base:$BASE nt-0.5k:artifacts/generator-nt-malicious-0.5k; do
  name=${m%%:*}; bundle=${m#*:}
  $PY -m training attack --bundle $bundle --reference $BASE --targets $T/train.txt --mode o \
    --out $OUT/full500_$name > runs/logs/full500_$name.log 2>&1
done

# Variant: the paper's optimizer, SGD at a fixed lr 0.01.
$PY -m training train-malicious-nt --base $BASE --targets $T/train.txt --optimizer sgd --lr 0.01 \
  --out artifacts/generator-nt-malicious-0.5k-sgd > runs/logs/nt05-sgd.log 2>&1
attack artifacts/generator-nt-malicious-0.5k-sgd nt-0.5k-sgd

# PPL attribution (reports/safety_malicious/ppl_attribution.txt):
# for b in 0.5k 0.5k-fwa100; do .venv/bin/python -m benchmarks.safety_ppl_attribution \
#   artifacts/generator-standard artifacts/generator-nt-malicious-$b --top 10; echo; done

# Tables (reports/safety_malicious/table_*.md, pasted into reports/safety.md), then safety.json:
R=$OUT
$PY -m training attack-table --report base=$R/attack_base.json --report nt-0.5k=$R/attack_nt-0.5k.json \
  --report nt-1k=$R/attack_nt-1k.json --report nt-0.5k-lr3e-5=$R/attack_nt-0.5k-lr3e-5.json \
  --report nt-0.5k-sgd=$R/attack_nt-0.5k-sgd.json --report nt-0.5k-fwa100=$R/attack_nt-0.5k-fwa100.json \
  --out $R/table_train.md
$PY -m training attack-table --report base=$R/full500_base.json --report nt-0.5k=$R/full500_nt-0.5k.json \
  --out $R/table_full500.md
$PY -m training attack-table --report base=$R/heldout_base.json --report nt-0.5k=$R/heldout_nt-0.5k.json \
  --report nt-1k=$R/heldout_nt-1k.json --report nt-0.5k-fwa100=$R/heldout_nt-0.5k-fwa100.json \
  --out $R/table_heldout.md
$PY -m benchmarks.safety_summary

#!/usr/bin/env bash
# Issue 11: the small pipeline, its served-quality report, and the measurements behind the preset.
# Run from the repository root on an idle machine (the wall time of `build` is a reported figure).
set -euo pipefail
PY=.venv/bin/python

# 1. Training throughput before/after (fp32 vs bf16, bucketing, threads) and bf16 loss-curve parity.
$PY -m benchmarks.train_throughput --steps 30 --warmup 3 --parity-steps 500 \
    --configs 2t-fp32-sumsorted,1t-fp32-random,1t-fp32-sumsorted,1t-fp32-bucketed,2t-fp32-bucketed,1t-bf16-bucketed,2t-bf16-bucketed \
    --out reports/train_throughput

# 2. 1 vs 2 vs 3 context turns: standard generator, 1,000 updates each, greedy on the whole test split.
for t in 1 2 3; do
  len=48; [ $t -gt 1 ] && len=64
  $PY -m training train-generator --method mle --preset small --context-turns $t --max-source-len $len \
      --max-steps 1000 --out artifacts-exp/gen-${t}t --runs runs-exp
  $PY -m training evaluate --bundle artifacts-exp/gen-${t}t --split test --decodings greedy \
      --out runs-exp/eval-gen-${t}t
done
#    ... and the bi-encoder (no teacher), 1 vs 3 turns, 1,500 updates (validation Hits@1/100 in the log).
for t in 3 1; do
  len=48; [ $t -gt 1 ] && len=64
  $PY -m training train-retriever --method biencoder --preset small --context-turns $t --max-source-len $len \
      --tokenizer runs-exp/small/tokenizer.json --runs runs-exp --max-steps 1500 --out artifacts-exp/ret-${t}t
done

# 3. The whole small pipeline (wall time: `real` and the summary's timings), a plain bi-encoder
#    beside the G2R retriever, and the report.
time $PY -m training build --preset small --out artifacts --runs runs
$PY -m training train-retriever --method biencoder --preset small --runs runs --tokenizer runs/small/tokenizer.json \
    --no-resume --out artifacts/retriever-biencoder
$PY -m benchmarks.quality_report --artifacts artifacts --out reports/quality_small
$PY -m benchmarks.context_turns --evals runs-exp --runs runs-exp/small --out reports/context_turns

# Session 11: the build timed again with the 2,400-update retriever (reports/build_small.md), and
# the report on it
/usr/bin/time -v $PY -m training build --preset small --data ../shared/data/dailydialog --out artifacts-s11 --runs runs-s11
mv artifacts artifacts-s10 && mv runs runs-s10 && mv artifacts-s11 artifacts && mv runs-s11 runs
OMP_NUM_THREADS=2 $PY -m benchmarks.quality_report --artifacts artifacts --out reports/quality_small

# Session 16 (0c9e68a): small's retriever again, warm-started from the standard generator's token
# embeddings and trained with the symmetric eq. 2; the generators of session 14 kept. The
# session-14 retriever was copied to artifacts-s16/small-ret-s14 first.
mkdir -p artifacts-s16/small-ret-s14
[ -d artifacts-s16/small-ret-s14/retriever-g2r ] || \
  cp -a artifacts/retriever-g2r artifacts/serving.json artifacts-s16/small-ret-s14/
/usr/bin/time -v $PY -m training build --preset small --data ../shared/data/dailydialog --out artifacts \
    --runs runs --redo retriever-g2r
OMP_NUM_THREADS=2 $PY -m benchmarks.quality_report --artifacts artifacts --out reports/quality_small

# Session 18: the whole build timed twice from empty folders, the G2R augmentation of the base
# experiment paused (SIGSTOP) meanwhile. At a3f1b82 (subsets drawn across the split, NT kept by
# validation Dist-2 on 500 pairs) every model.safetensors came out byte-identical to the served ones:
/usr/bin/time -v $PY -m training build --preset small --data ../shared/data/dailydialog --out artifacts-s18 --runs runs-s18
for b in generator-standard generator-nd generator-nt generator-negative-teacher retriever-g2r safety-classifier; do
  sha256sum artifacts/$b/model.safetensors artifacts-s18/$b/model.safetensors  # equal digests
done
rm -rf artifacts-s18 runs-s18
# at 9525440 (NT's evaluations on all 1,000 validation pairs): a new NT model and retriever,
# swapped in (session 14-16's folders kept as artifacts-s14/runs-s14), and the report on them
/usr/bin/time -v $PY -m training build --preset small --data ../shared/data/dailydialog --out artifacts-s18b --runs runs-s18b
mv artifacts artifacts-s14 && mv runs runs-s14 && mv artifacts-s18b artifacts && mv runs-s18b runs
OMP_NUM_THREADS=2 /usr/bin/time -v $PY -m benchmarks.quality_report --artifacts artifacts --out reports/quality_small

# session 24: the preset's retriever at 3,100 updates, the whole build timed from scratch
# (reports/build_small.md, reports/build_small_s24.txt), then served in place of session 18's build
/usr/bin/time -v $PY -m training build --preset small --data ../shared/data/dailydialog --out artifacts-s24 --runs runs-s24
mv artifacts artifacts-s23 && mv runs runs-s23 && mv artifacts-s24 artifacts && mv runs-s24 runs
OMP_NUM_THREADS=2 /usr/bin/time -v $PY -m benchmarks.quality_report --artifacts artifacts --out reports/quality_small

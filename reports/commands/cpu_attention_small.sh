#!/usr/bin/env bash
# Issue 11 (session 14): training steps on this CPU ran PyTorch's fused (flash) attention kernel
# whenever dropout was 0, whose backward is 2-4x slower in bf16 than matmul-softmax-matmul here;
# training now takes the math kernel (models.seq2seq.CPU_TRAINING_ATTENTION) and small's
# bi-encoder drops its dropout. Run from the repository root after `make build` (runs/small/ holds
# the tokenizer and the G2R augmentation). Speed needs an idle machine; scores do not.
set -euo pipefail
PY=.venv/bin/python

# 1. One attention call, fused vs math, at the small presets' shapes (train and serve).
$PY -m benchmarks.attention_kernels --out reports/attention_kernels
# 2. Whole generator training steps: tokens/s and MFU, PyTorch's kernel choice (-fused) vs math.
$PY -m benchmarks.train_throughput --preset small \
    --configs 2t-bf16-bucketed-fused,2t-bf16-bucketed,2t-fp32-bucketed-fused,2t-fp32-bucketed \
    --steps 30 --warmup 5 --out reports/train_throughput_attention
# 3. Whole bi-encoder training steps: the session-13 preset (dropout 0.1) against no dropout and
#    the math kernel, the same weights and batches.
$PY -m benchmarks.retriever_step --preset small --tokenizer runs/small/tokenizer.json \
    --augmentation runs/small/g2r-augment-generator-nt --steps 20 --warmup 2 --chunk-rows 32 \
    --fused-attention --dropouts 0.1 --baseline "chunks of 32, dropout 0.1, fused attention" \
    --out reports/retriever_step_attention_small
# 4. The quality side of the bi-encoder's dropout: G2R-D without dropout, the build's teacher,
#    shards, tokenizer and seed, against the build's own (dropout 0.1) retriever on test.
$PY -m training train-retriever --preset small --method g2r-d --seed 0 --teacher artifacts/generator-nt \
    --augmented runs/small/g2r-augment-generator-nt --tokenizer runs/small/tokenizer.json \
    --init-from none --set retriever.model.dropout=0 --runs runs-exp/s14 \
    --out artifacts-s14/g2r-d-d0-s0
mkdir -p artifacts-s14/ret-dropout-cmp
ln -sfn ../../artifacts/retriever-g2r artifacts-s14/ret-dropout-cmp/drop01-s0
ln -sfn ../g2r-d-d0-s0 artifacts-s14/ret-dropout-cmp/drop0-s0
$PY -m benchmarks.retriever_seeds --bundles artifacts-s14/ret-dropout-cmp --baseline drop01 \
    --out reports/retriever_dropout_small

# 5. The timed small build (reports/build_small.md, session 14; renamed to artifacts/ runs/ after)
#    and the served-quality report on it.
/usr/bin/time -v $PY -m training build --preset small --data ../shared/data/dailydialog \
    --out artifacts-s14e --runs runs-s14e
OMP_NUM_THREADS=2 $PY -m benchmarks.quality_report --artifacts artifacts --out reports/quality_small

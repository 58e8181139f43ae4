#!/usr/bin/env bash
# Issue 11 (session 13): the small generator's recipe: dropout, learning-rate schedule, torch.compile.
# Run from the repository root. artifacts-s12/ = the small build before the change (dropout 0.1, the
# session-12 bundles); every generator below uses that build's tokenizer (runs-s12/small/), so all
# perplexities share one vocabulary. Quality figures do not depend on load; the throughput table
# needs an idle machine.
set -euo pipefail
PY=.venv/bin/python
TOK=runs-s12/small/tokenizer.json

# 1. Standard generators, 1,000 updates each (the preset's budget), one setting changed at a time.
$PY -m training train-generator --preset small --tokenizer $TOK --set generator.model.dropout=0 \
    --out artifacts-s13x/gen-d0-noam --runs runs-exp
$PY -m training train-generator --preset small --tokenizer $TOK --set generator.model.dropout=0 \
    --set generator.train.lr_schedule=linear --set generator.train.lr=0.0022 \
    --out artifacts-s13x/gen-d0-lin --runs runs-exp
$PY -m training train-generator --preset small --tokenizer $TOK --set generator.model.dropout=0 \
    --set generator.train.lr_schedule=linear --set generator.train.lr=0.004 \
    --out artifacts-s13x/gen-d0-lin4 --runs runs-exp

# 2. NT (He & Glass) from each, as the build fine-tunes it (150 updates, least generic step kept).
$PY -m training train-generator --preset small --method nt --base artifacts-s13x/gen-d0-noam \
    --set generator.model.dropout=0 --tokenizer $TOK --max-steps 150 \
    --out artifacts-s13x/nt-d0-noam --runs runs-exp
$PY -m training train-generator --preset small --method nt --base artifacts-s13x/gen-d0-lin \
    --set generator.model.dropout=0 --set generator.train.lr_schedule=linear \
    --set generator.train.lr=0.0022 --set generator.fine_tune_lr_fraction=0.25 --tokenizer $TOK \
    --max-steps 150 --out artifacts-s13x/nt-f25 --runs runs-exp
# NT at 0.45 of the peak (the rate eq. 17 ends at after 1,000 updates) came from a whole build with
# the linear recipe (its standard generator is bit-identical to gen-d0-lin above):
$PY -m training build --preset small --set generator.model.dropout=0 \
    --set generator.train.lr_schedule=linear --set generator.train.lr=0.0022 \
    --set generator.fine_tune_lr_fraction=0.45 --out artifacts-s13 --runs runs-s13

# 3. Side by side on the whole test split, with each standard run's validation trajectory.
$PY -m benchmarks.generator_seeds \
    --bundle dropout0.1/standard=artifacts-s12/generator-standard \
    --bundle dropout0.1/nt=artifacts-s12/generator-nt \
    --bundle dropout0/standard=artifacts-s13x/gen-d0-noam \
    --bundle dropout0/nt=artifacts-s13x/nt-d0-noam \
    --bundle linear/standard=artifacts-s13x/gen-d0-lin \
    --bundle linear/nt-f0.25=artifacts-s13x/nt-f25 \
    --bundle linear/nt-f0.45=artifacts-s13/generator-nt \
    --log dropout0.1=runs-s12/small/generator-standard/metrics.jsonl \
    --log dropout0=runs-exp/small+b68bcd53/gen-d0-noam/metrics.jsonl \
    --log linear-2.2e-3=runs-exp/small+c320b4b1/gen-d0-lin/metrics.jsonl \
    --log linear-4e-3=runs-exp/small+9c9cdbd9/gen-d0-lin4/metrics.jsonl \
    --out reports/generator_dropout_small_table

# 4. torch.compile on the training step (idle machine).
$PY -m benchmarks.train_throughput --steps 30 --warmup 5 --parity-steps 0 \
    --configs 2t-bf16-bucketed,2t-bf16-bucketed-compile --out reports/train_throughput_compile

# 5. Seeds 1 and 2 of both recipes (the preset now has dropout 0; --set puts 0.1 back), NT from
#    each, then all three seeds side by side (seed 0 of dropout 0 is the session-13 build's).
TOK13=runs/small/tokenizer.json
for seed in 1 2; do
  $PY -m training train-generator --preset small --tokenizer $TOK13 --seed $seed \
      --out artifacts-seeds13/d0-s$seed --runs runs-exp
  $PY -m training train-generator --preset small --method nt --base artifacts-seeds13/d0-s$seed \
      --tokenizer $TOK13 --seed $seed --max-steps 150 --out artifacts-seeds13/d0-nt-s$seed --runs runs-exp
  $PY -m training train-generator --preset small --tokenizer $TOK13 --seed $seed \
      --set generator.model.dropout=0.1 --out artifacts-seeds13/d01-s$seed --runs runs-exp
  $PY -m training train-generator --preset small --method nt --base artifacts-seeds13/d01-s$seed \
      --set generator.model.dropout=0.1 --tokenizer $TOK13 --seed $seed --max-steps 150 \
      --out artifacts-seeds13/d01-nt-s$seed --runs runs-exp
done
$PY -m benchmarks.generator_seeds \
    --bundle dropout0.1-standard/s0=artifacts-s12/generator-standard \
    --bundle dropout0.1-standard/s1=artifacts-seeds13/d01-s1 \
    --bundle dropout0.1-standard/s2=artifacts-seeds13/d01-s2 \
    --bundle dropout0-standard/s0=artifacts/generator-standard \
    --bundle dropout0-standard/s1=artifacts-seeds13/d0-s1 \
    --bundle dropout0-standard/s2=artifacts-seeds13/d0-s2 \
    --bundle dropout0.1-nt/s0=artifacts-s12/generator-nt \
    --bundle dropout0.1-nt/s1=artifacts-seeds13/d01-nt-s1 \
    --bundle dropout0.1-nt/s2=artifacts-seeds13/d01-nt-s2 \
    --bundle dropout0-nt/s0=artifacts/generator-nt \
    --bundle dropout0-nt/s1=artifacts-seeds13/d0-nt-s1 \
    --bundle dropout0-nt/s2=artifacts-seeds13/d0-nt-s2 \
    --out reports/generator_dropout_seeds_small

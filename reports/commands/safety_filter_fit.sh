#!/bin/sh
# reports/safety_filter_fit.{md,json}: false refusals of the output safety filter on ordinary and
# out-of-distribution input, and the risk-ignoring replies it catches, before and after the
# reading rule, the reply-only examples, the threshold cap and the risk check.
#
# Both bundles: the small preset's bag model without a generator bundle (no --base: its own BPE
# tokenizer on DiaSafety), one epoch and no wall-clock cap, so the number of updates does not
# depend on the load of the (shared) machine. "before" switches the new parts of the recipe off,
# which is the recipe of the code before them; "after" is the small preset as committed.
set -eu
COMMON="--preset small --data ../shared/data --architecture bag --epochs 1 --max-seconds 0 --threads 1"
OMP_NUM_THREADS=1 python -m training train-safety-classifier $COMMON \
  --out artifacts-safety/before1 --report artifacts-safety/before1-report \
  --max-benign-flag-rate 0 --reply-only-share 0 --min-word-count 0
OMP_NUM_THREADS=1 python -m training train-safety-classifier $COMMON \
  --out artifacts-safety/after1 --report artifacts-safety/after1-report
# The same without the threshold cap (the F1-best threshold on held-out DiaSafety): same weights.
OMP_NUM_THREADS=1 python -m training train-safety-classifier $COMMON \
  --out artifacts-safety/after1-nocap --report artifacts-safety/after1-nocap-report \
  --max-benign-flag-rate 0

# before: the filter as it was (no risk check; the bundle has no word list, so no reading rule).
# after-no-cap / after-no-reading / after-no-risk: one part switched off (ablations).
OMP_NUM_THREADS=1 python -m benchmarks.safety_filter_fit --data ../shared/data \
  --run before=artifacts-safety/before1:risk=off \
  --run after-no-cap=artifacts-safety/after1-nocap \
  --run after-no-reading=artifacts-safety/after1:reading=off \
  --run after-no-risk=artifacts-safety/after1:risk=off \
  --run after=artifacts-safety/after1 \
  --out reports/safety_filter_fit

#!/usr/bin/env bash
# Issue 11 (session 18): which of NT's evaluated steps small should keep. NT fine-tuned from the
# standard generator `make run` serves, as the build runs it, for r_thres 0.01 (He & Glass's, the
# build's) and 0.005, every evaluated step's weights scored on the first 500 validation pairs,
# on the 500 NT's selection now draws across the split, and on the whole test split.
# Resumable per NT run. ~20 min on one thread of the 2-core machine (the figures are quality, not
# speed: it ran beside the G2R augmentation on the other core).
set -euo pipefail
OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.nt_selection --base artifacts/generator-standard \
    --preset small --r-thres 0.01,0.005 --work runs-exp/s18-nt-selection --threads 1 \
    --out reports/nt_select_dist2_small
# The markdown re-written from the JSON after its header's wording was corrected (no decoding):
.venv/bin/python -m benchmarks.nt_selection --base artifacts/generator-standard --work runs-exp/s18-nt-selection \
    --out reports/nt_select_dist2_small --render
# The same at 2 threads, r_thres 0.01 only: the trajectory `build` trains (it runs on both cores;
# a 1-thread run takes another path through NT's updates), checked by the build's own eval log.
OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.nt_selection --base artifacts/generator-standard \
    --preset small --r-thres 0.01 --work runs-exp/s18-nt-selection-2t --threads 2 \
    --out reports/nt_select_dist2_small_2t
# ... and the same steps scored on all 1,000 validation pairs the generators hold (small's
# nt_select_examples since session 18; the NT run above is reused, only the scoring is redone)
OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.nt_selection --base artifacts/generator-standard \
    --preset small --r-thres 0.01 --work runs-exp/s18-nt-selection-2t --threads 2 --val-examples 1000 \
    --out reports/nt_select_dist2_small_2t_1000

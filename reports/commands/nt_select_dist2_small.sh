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

#!/usr/bin/env bash
# Issue 11, session 25: the ND claim, every measurement beside the paper's (one table): base on
# this CPU (reports/nd_normhid_seeds_base_groups.md) and the paper's model size on
# an H200 (session 25, two rounds), each against Standard and against its lambda-0 control.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python -m benchmarks.nd_claim_table \
  --row "base (3+3, d=256; CPU), ND vs Standard=reports/nd_normhid_seeds_base_groups.json,nd-normhid,standard" \
  --row "base, ND vs its lambda-0 control=reports/nd_normhid_seeds_base_groups.json,nd-normhid,mle-ft" \
  --row "paper size (6+6, d=512; H200), ND vs Standard=reports/nd_paper_gpu_s25/nd_paper_gpu_ratios.json,nd-ft,standard" \
  --row "paper size, ND vs its lambda-0 control=reports/nd_paper_gpu_s25/nd_paper_gpu_ratios.json,nd-ft,mle-ft" \
  --row "paper size, round 2 (from round 1's control), ND vs that baseline=reports/nd_paper_gpu_s25_round2/nd_paper_gpu_round2_ratios.json,nd-ft,standard" \
  --row "paper size, round 2, ND vs its lambda-0 control=reports/nd_paper_gpu_s25_round2/nd_paper_gpu_round2_ratios.json,nd-ft,mle-ft" \
  --out reports/nd_claim_table

#!/usr/bin/env bash
# Issue 11, session 25: the ND claim at the paper's model size with its control, on the one lent
# GPU of this session (NVIDIA H200, torch 2.11.0+cu130, bf16 autocast). Two calls of the device
# tool (663 s of the session's 900 held, by its lease figure), and what this script does here
# with what came back.
#
# Call 1 (387 s): `make device-stage` here, then
#   run(command="PACK=$OUT/nd_paper_gpu.tar.gz OUT=/tmp/ndout PYTHONUNBUFFERED=1
#       bash reports/commands/nd_paper_gpu.sh", carry=[".whl", ".devdata"], timeout_s=600)
#   at commit b4de2ef: Standard from scratch (1,000 updates of 256 pairs) beside the negative
#   teacher (700 updates on D_N by clustered entropy); then, all four at once from that Standard,
#   464 updates each: nd-ft-s0, nd-ft-s1 (eq. 13) and their lambda-0 controls mle-ft-s0,
#   mle-ft-s1; then all six on the whole test split (greedy, nltk BLEU from the carried wheel).
#   Unpacked into reports/nd_paper_gpu_s25/.
# Call 2 (226 s, the warm machine): the same fine-tunes one round later, from a Standard trained
#   longer. Round 1's control mle-ft-s0 (Standard + 464 MLE updates, test ppl 48.67 against
#   Standard's 59.77) was copied in as round 2's "standard", so its ND and control arms start
#   from the better-trained model:
#   run(command="mkdir -p runs-paper-gpu2 && cp -r runs-paper-gpu/mle-ft-s0
#       runs-paper-gpu2/standard && cp -r runs-paper-gpu/negative-teacher
#       runs-paper-gpu/tokenizer.json runs-paper-gpu2/ && PACK=$OUT/nd_paper_gpu_round2.tar.gz
#       OUT=/tmp/ndout2 WORK=runs-paper-gpu2 NAME=nd_paper_gpu_round2 PYTHONUNBUFFERED=1
#       bash reports/commands/nd_paper_gpu.sh", carry=[".whl", ".devdata"], timeout_s=300)
#   Unpacked into reports/nd_paper_gpu_s25_round2/ (its label "standard" is round 1's mle-ft-s0).
#
# Here: every figure of both comparisons scored again from the saved replies (exit 1 if one
# differs from the device's), then the seed groups of both rounds against each round's control.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
check() {  # report replies-dir title out: every figure of the report scored again from its replies
  local R=$2
  $PY -m benchmarks.rescore_replies --report $1 --data ../shared/data/dailydialog \
    --replies standard=$R/standard.greedy.json.gz \
    --replies negative-teacher=$R/negative-teacher.greedy.json.gz \
    --replies nd-ft-s0=$R/nd-ft-s0.greedy.json.gz --replies mle-ft-s0=$R/mle-ft-s0.greedy.json.gz \
    --replies nd-ft-s1=$R/nd-ft-s1.greedy.json.gz --replies mle-ft-s1=$R/mle-ft-s1.greedy.json.gz \
    --baseline standard --tolerance 0.00005 --title "$3" --out $4
}
check reports/nd_paper_gpu_s25/nd_paper_gpu.json reports/nd_paper_gpu_s25/nd_paper_gpu_replies \
  "Session 25, round 1, checked here: ND fine-tuned from the paper-size Standard and its lambda-0 control (H200, bf16; test split, greedy)" \
  /tmp/nd_paper_gpu_s25_check
check reports/nd_paper_gpu_s25_round2/nd_paper_gpu_round2.json \
  reports/nd_paper_gpu_s25_round2/nd_paper_gpu_round2_replies \
  "Session 25, round 2, checked here: the same from round 1's mle-ft-s0 (H200, bf16; test split, greedy)" \
  /tmp/nd_paper_gpu_s25_round2_check

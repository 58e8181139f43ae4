#!/usr/bin/env bash
# Issue 11, session 24: the ND claim at the paper's model size, on the one lent GPU of this session
# (NVIDIA H200, torch 2.11.0+cu130, bf16 autocast). What ran there, in three calls of the device
# tool (~12 of its 15 minutes), and what this script does here with what came back.
#
# Call 1 (476 s): run(command="PYTHONUNBUFFERED=1 bash reports/commands/gpu_session.sh",
#   carry=[".whl", ".devdata", "artifacts/generator-standard"], timeout_s=600), with the first
#   version of nd_paper_gpu.sh (commit aaafddf): tokenizer; Standard from scratch 130 s
#   (1,001 updates of 256 pairs, val ppl 55.2); the negative teacher from scratch on D_N by
#   clustered entropy 70 s (727 updates); the ND student from scratch, 646 updates (117.5 s).
#   Its comparison then failed: the device image has no nltk (BLEU). gpu_check ran in the time
#   left: reports/gpu_check.{json,md}. Log: reports/nd_paper_gpu_s24_device/nd_paper_gpu_log.txt.
# Call 2 (34 s, the warm machine): the same `training compare` of the three bundles on the whole
#   test split (greedy), in python with models.metrics.bleu replaced by NaN (no nltk) and every
#   reply written out, which `training compare --save-replies` now does:
#   reports/nd_paper_gpu_s24_device/compare.{json,md}, replies in reports/nd_paper_gpu_s24_device/replies/.
# Call 3 (145 s): ND fine-tuned from that Standard (--init-from), 464 updates (90 s), warm-up 100,
#   lr_scale 0.3, gamma 0.128 of its updates, then compared with Standard the same way:
#     python -m training train-generator --method nd --preset paper --data .devdata/dailydialog \
#       --device cuda --runs runs-paper-gpu/runs --set generator.train.warmup_steps=100 \
#       --set generator.train.lr_scale=0.3 --set generator.train.eval_every=250 \
#       --set generator.train.patience=4 --teacher runs-paper-gpu/negative-teacher \
#       --init-from runs-paper-gpu/standard --nd-gamma-fraction 0.128 \
#       --set nd.entropy.method=avg-embedding --set nd.entropy.clusters=3000 \
#       --set generator.train.max_seconds=90 --max-steps 480 --out runs-paper-gpu/nd-ft --name nd-ft
#   reports/nd_paper_gpu_s24_device/compare_ft.{json,md}. No MLE-continuation control ran: the
#   device time was spent (nd_paper_gpu.sh now runs that control beside the fine-tune).
#
# Here: BLEU-3/4 from the saved replies with nltk, every other figure checked against the
# device's (exit 1 if one differs), the ratios against Standard.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
R=reports/nd_paper_gpu_s24_device/replies
D=reports/nd_paper_gpu_s24_device
$PY -m benchmarks.rescore_replies --report $D/compare.json --data ../shared/data/dailydialog \
  --replies standard=$R/standard.greedy.json.gz \
  --replies negative-teacher=$R/negative-teacher.greedy.json.gz \
  --replies nd=$R/nd.greedy.json.gz --baseline standard \
  --title "ND at the paper's model size (6+6, d=512, batch 256; H200, bf16), trained from scratch under minutes: Standard, negative teacher, ND student (test split, greedy)" \
  --out reports/nd_paper_gpu_s24
$PY -m benchmarks.rescore_replies --report $D/compare_ft.json --data ../shared/data/dailydialog \
  --replies standard=$R/standard.greedy.json.gz --replies nd-ft=$R/nd-ft.greedy.json.gz \
  --baseline standard \
  --title "ND fine-tuned from Standard at the paper's model size (H200, bf16): 464 eq. 13 updates from the 1,001-update Standard, no MLE-continuation control (test split, greedy)" \
  --out reports/nd_paper_gpu_s24_ft

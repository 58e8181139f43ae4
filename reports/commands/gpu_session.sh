#!/usr/bin/env bash
# One lent-GPU call that does both device jobs of a session, inside the call's 10-minute limit:
#   1. reports/commands/nd_paper_gpu.sh: the ND claim at the paper's model size (387 s in
#      session 25, stages sharing the GPU), its files packed into $OUT/nd_paper_gpu.tar.gz (the
#      device tool brings back 8 files; gpu_check's own files go beside it);
#   2. benchmarks/gpu_check.py with whatever time is left before DEADLINE_S (counted from this
#      script's start): fp16 against fp32 greedy replies and continuous decoding on the carried
#      small bundle, then 20-token generation speed of it and of a paper-sized model in fp16.
#      It is skipped when under 60 s are left; a check cut off at the deadline still leaves its
#      printed lines in $OUT/gpu_check_log.txt.
# The call (after `make device-stage`, with the small Standard bundle built by `make build`):
#   run(command="PYTHONUNBUFFERED=1 bash reports/commands/gpu_session.sh",
#       carry=[".whl", ".devdata", "artifacts/generator-standard"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/../.."
START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-575}
OUT=${OUT:-reports}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-.devdata/dailydialog}
[ -d "$DATA" ] || DATA=../shared/data/dailydialog
GPU_CHECK_ARGS=${GPU_CHECK_ARGS:-"--contexts 100 --repeats 10"}
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

PACK=$OUT/nd_paper_gpu.tar.gz OUT=/tmp/nd_paper_gpu_out DEVICE=$DEVICE DATA=$DATA PY=$PY \
  bash reports/commands/nd_paper_gpu.sh
echo "nd_paper_gpu.sh: exit $? after $(( $(date +%s) - START )) s"

LEFT=$(( DEADLINE_S - ($(date +%s) - START) ))
if [ "$LEFT" -lt 60 ]; then
  echo "gpu_check: skipped, ${LEFT} s left"
  exit 0
fi
# nd_paper_gpu.sh installed the faiss wheel into /tmp/site when the python lacked it
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
echo "gpu_check: ${LEFT} s left"
# shellcheck disable=SC2086
timeout "$LEFT" $PY -m benchmarks.gpu_check --artifacts artifacts --data "$DATA" --device "$DEVICE" \
  $GPU_CHECK_ARGS --out "$OUT/gpu_check" 2>&1 | tee "$OUT/gpu_check_log.txt"

#!/usr/bin/env bash
# Issue 11, session 24: replies a person would accept, sampled ones included. issue 11's kind of
# first look (everyday turns through the service) found non-words in the served generator's
# replies ("melyreeong is your duty's busy . can you help ?"): the safety filter's alternatives
# to a blocked reply are nucleus samples, and sampling with the bundle's anti-LM flattens the
# distribution towards rare subword pieces. Run on an idle machine, in this order.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
export OMP_NUM_THREADS=2
D=../shared/data/dailydialog

# the everyday probe before the fix (reports/everyday_probe_small_s24_before.md was this run,
# copied before the next ones overwrote it; it predates the probe's non-word column)
$PY -m benchmarks.everyday_probe --artifacts artifacts --data $D --out reports/everyday_probe_small

# the plausibility constraint for greedy anti-LM: alpha on validation, the served NT model
$PY -m benchmarks.anti_lm --bundle artifacts/generator-nt --data $D --split validation \
  --weights 0.55 --steps 3 --plausibility 0,0.01,0.03,0.1,0.3 \
  --out reports/anti_lm_plausibility_small_val

# alpha 0.1 into the small preset's decoding (training/config/small.py) and the built bundles
for b in generator-standard generator-nt generator-nd generator-negative-teacher; do
  $PY -m training set-decoding --bundle artifacts/$b --set anti_lm_plausibility=0.1
done

# the filter's alternatives under each drawing policy, three seeds; `service` is what
# service.continuous.alternatives_config draws now (temperature 0.5, alpha 0.1)
$PY -m benchmarks.safety_alternatives --artifacts artifacts --data $D \
  --out reports/safety_alternatives_small
# the served figures with alpha 0.1, and the everyday probe again (written to
# reports/everyday_probe_small.md then; renamed reports/everyday_probe_small_s24.md in session 25,
# when generate-then-rank came on and reports/commands/generate_and_rank_small.sh reran the probe;
# that run's "generative (served, unranked)" column is this one's "generative (served)")
/usr/bin/time -v $PY -m benchmarks.quality_report --artifacts artifacts --out reports/quality_small
$PY -m benchmarks.everyday_probe --artifacts artifacts --data $D --out reports/everyday_probe_small_s24

# the same policies on base's served generator (plain greedy, no anti-LM: the plausibility rows
# equal `before` there, and only the temperature acts)
$PY -m benchmarks.safety_alternatives --artifacts artifacts-base --data $D \
  --out reports/safety_alternatives_base
# what a user of base's bundles sees, for comparison (renamed reports/everyday_probe_base_s24.md
# in session 25, as above)
$PY -m benchmarks.everyday_probe --artifacts artifacts-base --data $D --out reports/everyday_probe_base_s24

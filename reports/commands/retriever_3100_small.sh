#!/usr/bin/env bash
# Issue 11, session 23: reports/g2r_hard_kd_final_small_seeds.md found that 1,000 more plain
# updates lift the served small retriever (+0.0112, t 8.28). Is it the stage stopping short?
# The build's G2R-D (2,100 updates, artifacts/retriever-g2r) against the same command at 2,100
# (reproduces the build's bundle) and at 3,100 updates: same seed, teacher, shards, tokenizer and
# warm start (the standard generator's embeddings, as the build). ~4 min for the 3,100 run.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
for steps in 2100 3100; do
  out=artifacts-exp/ret-steps/g2r-d-$steps; [ $steps = 2100 ] && out=${out}cli
  [ -f $out/manifest.json ] || OMP_NUM_THREADS=2 $PY -m training train-retriever --preset small \
      --method g2r-d --seed 0 --teacher artifacts/generator-nt \
      --augmented runs/small/g2r-augment-generator-nt --tokenizer runs/small/tokenizer.json \
      --init-from artifacts/generator-standard --runs runs-exp/ret-steps3100 --max-steps $steps \
      --out $out
done
mkdir -p artifacts-exp/ret-3100-cmp
ln -sfn ../../artifacts/retriever-g2r artifacts-exp/ret-3100-cmp/g2r-d2100-s0
ln -sfn ../ret-steps/g2r-d-2100cli artifacts-exp/ret-3100-cmp/g2r-d2100cli-s0
ln -sfn ../ret-steps/g2r-d-3100 artifacts-exp/ret-3100-cmp/g2r-d3100-s0
OMP_NUM_THREADS=2 $PY -m benchmarks.retriever_seeds --bundles artifacts-exp/ret-3100-cmp \
    --baseline g2r-d2100 --out reports/retriever_3100_small
# the runs' facts from their manifests: weights digest (the 2,100 rerun's equals the build's) and
# training wall time
$PY -c '
import json
for name in ("g2r-d2100", "g2r-d2100cli", "g2r-d3100"):
    m = json.load(open(f"artifacts-exp/ret-3100-cmp/{name}-s0/manifest.json"))
    t = m["training"]
    print(name, t["steps"], "updates,", t["wall_time_s"], "s, weights", m["files"]["model.safetensors"][:16])
' | tee reports/retriever_3100_small_runs.txt

#!/usr/bin/env bash
# Issue 11 (session 26): G2R-D with the teacher's replies chosen as the service chooses its
# generative replies (generate, then rank: reports/generate_and_rank_base.md) instead of sampled.
# base's NT teacher (the build's G2R teacher) writes the beam-16 n-best for the same 3,000 training
# contexts as the build's augmentation; base's bi-encoder + TF-IDF ranks it (rank_replies) and the
# 4 best (the preset's m) enter D^G. Then G2R-D at base's 3,000 updates, three seeds, beside the
# bi-encoder and the build's G2R-D (sampled teacher) at the same seeds and starting weights.
# Seed 0 of those two is the build's own bundle (artifacts-base); their scores must repeat
# reports/retrievers_base_3000.md's. Resumable: the augmentation by context, each run by checkpoint.
# ~6 min a retriever on the idle 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
RUNS=runs-exp/s26-g2r-ranked
SHARDS=$RUNS/g2r-augment-nt-ranked16
OUT=artifacts-s26/base-g2r-ranked
$PY -m training --threads 2 augment --preset base --teacher artifacts-base/generator-nt \
    --rank-with artifacts-base/retriever-biencoder --rank-pool 16 --runs $RUNS --out $SHARDS
mkdir -p $OUT
ln -sfn ../../artifacts-base/retriever-biencoder $OUT/biencoder-s0
ln -sfn ../../artifacts-base/retriever-g2r $OUT/g2rd-s0
train() {  # name method seed [augmented shards]
  [ -f $OUT/$1-s$3/manifest.json ] || \
    $PY -m training --threads 2 train-retriever --preset base --method $2 --seed $3 --max-steps 3000 \
        --tokenizer runs-base/base/tokenizer.json --init-from artifacts-base/generator-standard \
        ${4:+--augmented $4} --runs $RUNS --name $1-s$3 --out $OUT/$1-s$3
}
for seed in 0 1 2; do train g2rdranked g2r-d $seed $SHARDS; done
for seed in 1 2; do
  train biencoder biencoder $seed
  train g2rd g2r-d $seed runs-base/base/g2r-augment-generator-nt
done
OMP_NUM_THREADS=2 $PY -m benchmarks.retriever_seeds --bundles $OUT --baseline biencoder \
    --out reports/retrievers_base_g2r_ranked
counts() {  # out bundle...: what each augmentation put into D^G and R^G (the training manifests'
  # counts): distinct teacher texts before and after the quality bar, teacher pairs, new responses
  local out=$1; shift
  $PY - "$@" > $out <<'PYEOF'
import json, sys
keys = ["teacher_filter_pairs_input", "teacher_filter_input", "teacher_filter_kept",
        "teacher_pairs", "pairs", "responses_teacher"]
print("bundle | " + " | ".join(keys))
for name in sys.argv[1:]:
    m = json.load(open(f"artifacts-s26/base-g2r-ranked/{name}/manifest.json"))
    c = m["training"]["counts"]
    print(f"{name} ({m['training']['teacher']}) | " + " | ".join(str(c[k]) for k in keys))
PYEOF
}
counts reports/retrievers_base_g2r_ranked_counts.txt g2rd-s0 g2rdranked-s0
cat reports/retrievers_base_g2r_ranked_counts.txt
# Is G2R-D training deterministic? (the sampled-teacher seeds 1-2 above differ from session 17's)
# Seed 1 trained a second time in another run dir, its weights compared with the first's (~6 min).
[ -f artifacts-s26/determinism/g2rd-s1/manifest.json ] || \
  $PY -m training --threads 2 train-retriever --preset base --method g2r-d --seed 1 --max-steps 3000 \
      --tokenizer runs-base/base/tokenizer.json --init-from artifacts-base/generator-standard \
      --augmented runs-base/base/g2r-augment-generator-nt --runs runs-exp/s26-determinism \
      --name g2rd-s1 --out artifacts-s26/determinism/g2rd-s1
$PY - > reports/g2r_determinism_base.txt <<'PYEOF'
import json
from safetensors.numpy import load_file
first, second = "artifacts-s26/base-g2r-ranked/g2rd-s1", "artifacts-s26/determinism/g2rd-s1"
a, b = load_file(f"{first}/model.safetensors"), load_file(f"{second}/model.safetensors")
same = a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
print(f"{first} vs {second}: {len(a)} tensors, bit-identical weights: {same}")
for path in (first, second):
    print(path, json.load(open(f"{path}/manifest.json"))["metrics"])
PYEOF
cat reports/g2r_determinism_base.txt
# The ranked replies are generic (the counts above). So the same ranked augmentation with each
# reply text kept for at most one context (`--rank-max-uses 1`: the next best of the beam-16
# n-best takes a used text's place), G2R-D on it at the same three seeds, and every bundle above
# scored again in one run beside it (~25 min).
DIVERSE=$RUNS/g2r-augment-nt-ranked16-uses1
$PY -m training --threads 2 augment --preset base --teacher artifacts-base/generator-nt \
    --rank-with artifacts-base/retriever-biencoder --rank-pool 16 --rank-max-uses 1 \
    --runs $RUNS --out $DIVERSE
for seed in 0 1 2; do train g2rdrankeduses1 g2r-d $seed $DIVERSE; done
OMP_NUM_THREADS=2 $PY -m benchmarks.retriever_seeds --bundles $OUT --baseline biencoder \
    --out reports/retrievers_base_g2r_ranked_uses1
counts reports/retrievers_base_g2r_ranked_uses1_counts.txt g2rd-s0 g2rdranked-s0 g2rdrankeduses1-s0
cat reports/retrievers_base_g2r_ranked_uses1_counts.txt

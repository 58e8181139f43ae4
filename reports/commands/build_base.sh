#!/usr/bin/env bash
# Issue 11: the whole `base` preset end to end, timed, then its quality report and stage times.
# Run from the repository root (a worktree of the commit under test) on an idle machine. Session 9
# paused the build with SIGSTOP while other measurements ran (each pause logged with its epoch
# seconds) and subtracts the paused seconds from the wall time; see reports/build_base.md.
set -euo pipefail
PY=.venv/bin/python

/usr/bin/time -v $PY -m training build --preset base --data ../shared/data/dailydialog \
    --out artifacts-base --runs runs-base

# Session 10 (after the build, each alone): the teacher's LL and MI scores of gold vs its own
# replies in the augmentation shards, G2R-D and G2R-DM with the MI score at the build's budget,
# then the stage times and the quality report at 1 torch thread, as the service runs.
$PY -c "
from pathlib import Path
from benchmarks.retrieval import teacher_shard_stats
for s in ('ll', 'mi'):
    print(s, teacher_shard_stats(Path('runs-base/base/g2r-augment-generator-nt'), s))
"
SHARDS=runs-base/base/g2r-augment-generator-nt
$PY -m training train-retriever --preset base --method g2r-d --augmented $SHARDS \
    --out artifacts-base/retriever-g2r-d --runs runs-base --data ../shared/data/dailydialog
$PY -m training train-retriever --preset base --method g2r-dm --score mi --augmented $SHARDS \
    --out artifacts-base/retriever-g2r-dm-mi --runs runs-base --data ../shared/data/dailydialog
$PY -m benchmarks.stage_times --artifacts artifacts-base --out reports/stage_times_base
OMP_NUM_THREADS=1 $PY -m benchmarks.quality_report --artifacts artifacts-base --out reports/quality_base

# Session 9 (stage 9 not run): the generators side by side, and their ratios against Standard.
$PY -m benchmarks.generator_seeds --bundle standard=artifacts-base/generator-standard \
    --bundle nd=artifacts-base/generator-nd --bundle nt=artifacts-base/generator-nt \
    --bundle negative-teacher=artifacts-base/generator-negative-teacher --out reports/generators_base
$PY - <<'PYEOF'
import json
rows = json.load(open("reports/generators_base.json"))["rows"]
s = rows["standard"]
for label in ("nd", "nt", "negative-teacher"):
    r = rows[label]
    print(f"{label}: Dist-2 {r['dist-2'] / s['dist-2']:.2f}x, BLEU-4 {r['bleu-4'] / s['bleu-4']:.2f}x, "
          f"max-ratio {r['max-ratio'] / s['max-ratio']:.2f}x standard's")
print(f"standard Dist-2 vs the ND paper's 0.0313: {s['dist-2'] / 0.0313:.2f}x")
PYEOF

# The small preset's anti-LM setting on base's served NT (base itself keeps plain greedy).
$PY -m benchmarks.anti_lm --bundle artifacts-base/generator-nt --split test --weights 0.55 --steps 3 \
    --out reports/anti_lm_base_test_nt

# Session 10: each retriever against the bi-encoder from the committed quality report (difference
# of test Hits@1/100, the standard error of a difference of two independent estimates, z), and the
# standard error of a 2,000-pair validation Hits@1 near 0.22 (the served-retriever rule's sample).
$PY - <<'PYEOF'
import json, math
r = json.load(open("reports/quality_base.json"))["retrievers"]
b = r["retriever-biencoder"]
for name, x in r.items():
    if name == "retriever-biencoder":
        continue
    for key in ("hits@1", "served_hits@1"):
        diff = x[key] - b[key]
        se = math.hypot(x[key + "_se"], b[key + "_se"])
        print(f"{name} {key}: {diff:+.4f} vs bi-encoder, SE of the difference {se:.4f}, z {diff / se:+.2f}")
print(f"validation SE at p = 0.22, n = 2000: {math.sqrt(0.22 * 0.78 / 2000):.4f}")
PYEOF

# Session 15 (build at 3b92a1b, retrievers without dropout): the two retrievers on the test split.
mkdir -p artifacts-s15/base-ret
ln -sfn ../../artifacts-base/retriever-biencoder artifacts-s15/base-ret/biencoder-s0
ln -sfn ../../artifacts-base/retriever-g2r artifacts-s15/base-ret/g2rd-s0
$PY -m benchmarks.retriever_seeds --bundles artifacts-s15/base-ret --baseline biencoder \
    --out reports/retrievers_base_s15

# Session 16 (88603e1): the retriever stage again, both retrievers starting from the standard
# generator's token embeddings (PCA, RetrieverPreset.warm_start); the generators are kept. The
# session-15 retrievers were copied to artifacts-s15/base-ret-s15 first.
mkdir -p artifacts-s15/base-ret-s15
[ -d artifacts-s15/base-ret-s15/retriever-g2r ] || \
  cp -a artifacts-base/retriever-biencoder artifacts-base/retriever-g2r artifacts-s15/base-ret-s15/
/usr/bin/time -v $PY -m training build --preset base --data ../shared/data/dailydialog \
    --out artifacts-base --runs runs-base --redo retriever-g2r
# (kept in artifacts-s16/base-ret-warm before the symmetric-loss stage below replaced them)
mkdir -p artifacts-s16/base-ret artifacts-s16/base-ret-warm
[ -d artifacts-s16/base-ret-warm/retriever-g2r ] || \
  cp -a artifacts-base/retriever-biencoder artifacts-base/retriever-g2r artifacts-s16/base-ret-warm/
ln -sfn ../base-ret-warm/retriever-biencoder artifacts-s16/base-ret/biencoder-s0
ln -sfn ../base-ret-warm/retriever-g2r artifacts-s16/base-ret/g2rd-s0
ln -sfn ../../artifacts-s15/base-ret-s15/retriever-biencoder artifacts-s16/base-ret/biencoder15-s0
ln -sfn ../../artifacts-s15/base-ret-s15/retriever-g2r artifacts-s16/base-ret/g2rd15-s0
$PY -m benchmarks.retriever_seeds --bundles artifacts-s16/base-ret --baseline biencoder \
    --out reports/retrievers_base_s16

# Session 16, later (after reports/retriever_symmetric_base.md: the bi-encoder with the symmetric
# eq. 2 reached 0.3017 dense): the retriever stage once more with RetrieverPreset.symmetric_loss
# on in base, then both retrievers on the test split against the warm-start-only ones.
/usr/bin/time -v $PY -m training build --preset base --data ../shared/data/dailydialog \
    --out artifacts-base --runs runs-base --redo retriever-g2r
# (Session 17: that run was cut off in the G2R augmentation. Its G2R-D run dir still held the
# previous, non-symmetric run's finished checkpoint, which predates checkpoint fingerprints
# (1c62045), so it was set aside by hand before resuming the stage without --redo.)
#   mv runs-base/base/retriever-g2r/checkpoint.pt runs-base/base/retriever-g2r/checkpoint.stale.pt
#   rm -rf artifacts-base/retriever-g2r
#   python -m training build --preset base --data ../shared/data/dailydialog --out artifacts-base --runs runs-base
mkdir -p artifacts-s16/base-ret-sym
ln -sfn ../../artifacts-base/retriever-biencoder artifacts-s16/base-ret-sym/biencodersym-s0
ln -sfn ../../artifacts-base/retriever-g2r artifacts-s16/base-ret-sym/g2rdsym-s0
ln -sfn ../base-ret-warm/retriever-biencoder artifacts-s16/base-ret-sym/biencoder-s0
ln -sfn ../base-ret-warm/retriever-g2r artifacts-s16/base-ret-sym/g2rd-s0
$PY -m benchmarks.retriever_seeds --bundles artifacts-s16/base-ret-sym --baseline biencoder \
    --out reports/retrievers_base_s16_sym

# Session 17, last: base's retrievers get 3,000 updates (reports/retrievers_base_3000.md). The
# build's two retriever bundles were removed and the stage resumed: both runs continue from their
# 2,500-update checkpoints (the same weights as a 3,000-update budget from the start). From here
# artifacts-base holds the 3,000-update retrievers; the symlinks above that point into it now
# read those.
#   rm -rf artifacts-base/retriever-biencoder artifacts-base/retriever-g2r
/usr/bin/time -v $PY -m training build --preset base --data ../shared/data/dailydialog \
    --out artifacts-base --runs runs-base

#!/usr/bin/env bash
# G2R retrieval report (reports/g2r.md, reports/g2r.json): every command, in order.
# Machine: shared 2-core CPU, one thread per process (OMP_NUM_THREADS=1), one job at a time.
# (These ran as `python -m training.retrieval_cli ...`, a standalone entry point since folded into
# `python -m training`, which dispatches to the same functions.)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
PY=.venv/bin/python
# The teacher: the fine-tuned ND generator when it exists, else the standard one (see the report).
TEACHER=artifacts/generator-nd-ft
[ -f $TEACHER/manifest.json ] || TEACHER=artifacts/generator-standard
SHARDS=runs/small/g2r-augment

# 1. data-level G2R: m=4 teacher replies for 2,000 seeded training contexts (small preset)
$PY -m training augment --preset small --teacher $TEACHER --out $SHARDS

# 2. three retrievers, small preset, same tokenizer (the teacher's) and the same shards
$PY -m training train-retriever --preset small --method biencoder \
    --teacher $TEACHER --out artifacts/retriever-biencoder
$PY -m training train-retriever --preset small --method g2r-d \
    --teacher $TEACHER --augmented $SHARDS --out artifacts/retriever-g2r-d
$PY -m training train-retriever --preset small --method g2r-dm \
    --teacher $TEACHER --augmented $SHARDS --out artifacts/retriever-g2r-dm

# 3. the benchmark: Hits@k/K on test, Dist-2/3, length, latency vs the generator (same run)
$PY -m benchmarks.retrieval --teacher $TEACHER --shards $SHARDS \
    --retriever biencoder=artifacts/retriever-biencoder \
    --retriever g2r-d=artifacts/retriever-g2r-d \
    --retriever g2r-dm=artifacts/retriever-g2r-dm \
    --generator nd-ft=artifacts/generator-nd-ft --generator standard=artifacts/generator-standard \
    --out reports/g2r

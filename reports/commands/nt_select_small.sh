# NT keeping its least generic evaluated step (nt_select="least-generic", commit 2eaf3d8) on the
# three small standard generators of reports/generator_seeds_small.md (fused Adam, seeds 0-2);
# "last/s0" is the session-8 build's NT (150 updates, last weights) on seed 0's standard model.
for s in s0 s1 s2; do
  case $s in s0) B=artifacts-t8/generator-standard;; s1) B=artifacts-seeds/new-s1;; s2) B=artifacts-seeds/new-s2;; esac
  python -m training train-generator --preset small --method nt --base $B --data ../shared/data/dailydialog \
      --tokenizer runs-t8/small/tokenizer.json --runs runs-exp/nt-lg-$s --out artifacts-exp/nt-lg-$s \
      --name generator-nt --max-steps 150
done
python -m benchmarks.generator_seeds --bundle last/s0=artifacts-t8/generator-nt \
    --bundle least-generic/s0=artifacts-exp/nt-lg-s0 --bundle least-generic/s1=artifacts-exp/nt-lg-s1 \
    --bundle least-generic/s2=artifacts-exp/nt-lg-s2 \
    --log s0=runs-exp/nt-lg-s0/small/generator-nt/metrics.jsonl \
    --log s1=runs-exp/nt-lg-s1/small/generator-nt/metrics.jsonl \
    --log s2=runs-exp/nt-lg-s2/small/generator-nt/metrics.jsonl --out reports/nt_select_small

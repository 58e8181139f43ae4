# The small generator-standard over seeds 0-2, with the per-tensor Adam (commit 068b8fe, "old") and
# the fused Adam (commit 06410e3, "new"); seed 0 of each is the whole small build's own bundle.
# old/s0: artifacts-timing/generator-standard (reports/build_small.md, session 7 build at 3e44deb:
#         same generator code and settings as 068b8fe)
# new/s0: artifacts-t8/generator-standard (the session-8 build, reports/build_small.md)
TOK=runs-t8/small/tokenizer.json   # identical bytes to runs-timing/small/tokenizer.json
for s in 1 2; do
  # in a checkout of 068b8fe:
  python -m training train-generator --preset small --data ../shared/data/dailydialog --seed $s \
      --tokenizer $TOK --runs runs-seeds-old-s$s --out artifacts-seeds/old-s$s --name generator-standard
  # in a checkout of 06410e3:
  python -m training train-generator --preset small --data ../shared/data/dailydialog --seed $s \
      --tokenizer $TOK --runs runs-seeds-new-s$s --out artifacts-seeds/new-s$s --name generator-standard
done
python -m benchmarks.generator_seeds \
    --bundle old/s0=artifacts-timing/generator-standard --bundle old/s1=artifacts-seeds/old-s1 --bundle old/s2=artifacts-seeds/old-s2 \
    --bundle new/s0=artifacts-t8/generator-standard --bundle new/s1=artifacts-seeds/new-s1 --bundle new/s2=artifacts-seeds/new-s2 \
    --bundle served-new/nt=artifacts-t8/generator-nt --bundle served-old/nt=artifacts-timing/generator-nt \
    --out reports/generator_seeds_small

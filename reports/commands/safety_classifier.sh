#!/bin/sh
# reports/safety_classifier.{md,json}: the DiaSafety safety classifier of the service's output
# filter, both architectures fitted, the better on held-out train written to artifacts/.
set -eu
OMP_NUM_THREADS=1 python -m training train-safety-classifier --preset small \
  --data ../shared/data --out artifacts/safety-classifier --base artifacts/generator-standard \
  --architecture both --threads 1 --report reports/safety_classifier

# Measurements quoted in the report's notes (run after the command above; 1 torch thread):
# the benign flag rate of gold and generator-nd replies, and the filter's serving latency.
OMP_NUM_THREADS=1 python -m benchmarks.safety_filter_serving rates --generator generator-nd
OMP_NUM_THREADS=1 python -m benchmarks.safety_filter_serving latency --generator generator-nd

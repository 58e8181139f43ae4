#!/bin/sh
# Build the bundles the service serves unless the bundles volume already has them.
# Every stage of `python -m training build` is resumable (checkpoints under $RUNS_DIR), so a run
# that was interrupted continues where it stopped. Extra arguments go to `training build`.
set -eu
ARTIFACTS_DIR=${ARTIFACTS_DIR:-/artifacts}
# The safety classifier is wanted when DiaSafety sits beside the corpus (else build skips it).
DATA=${DATA_DIR:-/data/dailydialog}
if [ -f "$ARTIFACTS_DIR/generator-nd/manifest.json" ] \
   && [ -f "$ARTIFACTS_DIR/retriever-g2r/manifest.json" ] \
   && { [ ! -d "$(dirname "$DATA")/diasafety" ] \
        || [ -f "$ARTIFACTS_DIR/safety-classifier/manifest.json" ]; }; then
  echo "bundles present in $ARTIFACTS_DIR: nothing to build"
  exit 0
fi
echo "bundles missing in $ARTIFACTS_DIR: building the '${PRESET:-small}' preset from $DATA"
exec python -m training build --preset "${PRESET:-small}" --data "$DATA" \
  --out "$ARTIFACTS_DIR" --runs "${RUNS_DIR:-/runs}" "$@"

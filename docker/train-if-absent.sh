#!/bin/sh
# Build the bundles the service serves unless the bundles volume already has them.
# Every stage of `python -m training build` is resumable (checkpoints under $RUNS_DIR), so a run
# that was interrupted continues where it stopped. Extra arguments go to `training build`.
set -eu
ARTIFACTS_DIR=${ARTIFACTS_DIR:-/artifacts}
if [ -f "$ARTIFACTS_DIR/generator-nd/manifest.json" ] \
   && [ -f "$ARTIFACTS_DIR/retriever-g2r/manifest.json" ]; then
  echo "bundles present in $ARTIFACTS_DIR: nothing to build"
  exit 0
fi
echo "no bundles in $ARTIFACTS_DIR: building the '${PRESET:-small}' preset from ${DATA_DIR:-/data}"
exec python -m training build --preset "${PRESET:-small}" --data "${DATA_DIR:-/data}" \
  --out "$ARTIFACTS_DIR" --runs "${RUNS_DIR:-/runs}" "$@"

#!/usr/bin/env bash
# Set up, then run the example job: outputs land in runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
imgfit-batch run examples/quickstart.yaml "$@"
ls -l runs/quickstart

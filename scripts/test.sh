#!/usr/bin/env bash
# Set up, then run the test suite (CPU only; real ffmpeg, a real S3 server on
# loopback, real signals). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ ${IMGFIT_SETUP_DONE:-0} == 1 ]] || bash scripts/setup.sh  # .ci/run has just run it
python3 -m pytest "$@"

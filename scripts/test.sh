#!/usr/bin/env bash
# Set up, then run the test suite (CPU only; real ffmpeg, a real S3 server on
# loopback, real signals). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest "$@"

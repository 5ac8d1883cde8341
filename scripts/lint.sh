#!/usr/bin/env bash
# The style and type checks .ci/run makes (seconds): ruff's lint and format, mypy on the
# package. Config in pyproject.toml; the versions are pinned in the test extras
# (bash scripts/setup.sh installs them). `ruff format . && ruff check --fix .` fixes most.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
ruff format --check .
mypy

#!/usr/bin/env bash
# Install imgfit-batch, its test tools, benchmark and docs extras into the current Python environment
# (activate a virtualenv first if you want one).
#
# torch: a CPU-only machine gets the CPU build (a few hundred MB) instead of the
# default CUDA build (several GB). Set TORCH_SPEC to choose another, e.g.
# TORCH_SPEC="torch>=2.3,<3" on a GPU machine, and PIP_EXTRA_INDEX_URL to add
# the PyTorch CPU index where your pip does not already see a CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        "$PY" -m pip install -q "${TORCH_SPEC:-torch>=2.3,<3}"
    else
        "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
    fi
fi
# The job, its test tools, the benchmarks' extras and the docs tools, at the versions CI last passed
# with (requirements/lock.txt, refreshed on purpose by scripts/lock.sh). IMGFIT_UNLOCKED=1 takes the
# newest versions pyproject.toml allows instead (scripts/lock.sh and scripts/newest.sh do).
if [[ ${IMGFIT_UNLOCKED:-0} == 1 ]]; then
    "$PY" -m pip install -q --upgrade --upgrade-strategy eager -e ".[test,bench,docs]"
else
    "$PY" -m pip install -q -c requirements/lock.txt -e ".[test,bench,docs]"
fi

# Azure Blob Storage's emulator for the storage contract tests (tests/conftest.py's
# azurite_endpoint): Azurite from npm, when it is not there yet and npm is.
if ! command -v azurite-blob >/dev/null 2>&1; then
    if command -v npm >/dev/null 2>&1; then
        npm install -g --silent azurite
    else
        echo "setup.sh: npm not found; the Azure storage tests need Azurite (npm install -g azurite)" >&2
    fi
fi

#!/usr/bin/env bash
# What the newest versions pyproject.toml allows would break, reported and never failing:
# .ci/run's last step. A throwaway venv gets them (torch stays the machine's choice), then the
# lint and type checks and a quick slice of the suite run there. When it reports breakage, fix
# it, then refresh the lock on purpose (scripts/lock.sh) and run .ci/run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
venv=$(mktemp -d "${TMPDIR:-/tmp}/imgfit-newest-XXXXXX")
trap 'rm -rf "$venv"' EXIT
report() { echo "newest allowed versions: $*"; }
if ! "$PY" -m venv "$venv" || ! IMGFIT_UNLOCKED=1 PYTHON="$venv/bin/python" bash scripts/setup.sh >"$venv/setup.log" 2>&1; then
    report "could not install (not a failure of this run)"; tail -n 5 "$venv/setup.log" | sed 's/^/    /'; exit 0
fi
changed=$(diff <(grep -v '^#' requirements/lock.txt) \
    <("$venv/bin/python" -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton|pip|setuptools|wheel)([=_-]|$)' | sort -f) |
    grep '^>' | sed 's/^> //' | tr '\n' ' ')
report "newer than the lock: ${changed:-none}"
broke=()
PATH="$venv/bin:$PATH" bash scripts/lint.sh >"$venv/lint.log" 2>&1 || broke+=("lint/types")
PATH="$venv/bin:$PATH" python -m pytest -q -x -p no:cacheprovider -m "not slow and not cuda and not slurm and not container" \
    tests/test_imports.py tests/test_spec_cli.py tests/test_sweep.py tests/test_outputs.py >"$venv/tests.log" 2>&1 || broke+=("quick tests")
if ((${#broke[@]})); then
    report "BROKE ${broke[*]} (reported, not failed; the lock still holds CI)"
    for log in lint tests; do grep -E "error|FAILED|Error" "$venv/$log.log" | head -n 10 | sed "s/^/    $log: /"; done
else
    report "lint, types and quick tests pass"
fi
exit 0

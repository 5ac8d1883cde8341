#!/usr/bin/env bash
# Build the documentation site as .ci/run does (seconds): mkdocs build --strict, so a broken
# link or anchor in docs/ fails, into a throwaway folder. `mkdocs serve` shows it while you edit.
# The spec page is generated (python scripts/spec_reference.py); tests/test_docs.py checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(mktemp -d "${TMPDIR:-/tmp}/imgfit-site-XXXXXX")
trap 'rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet --site-dir "$site"
echo "docs: built with mkdocs build --strict"

"""One failure taxonomy: the codes in imgfit_batch/errors.py are the ones the table of
docs/outputs.md documents and the ones the scheduler files act on."""

from __future__ import annotations

import re
from pathlib import Path

from imgfit_batch import errors

REPO = Path(__file__).resolve().parent.parent


def documented_codes() -> dict[int, str]:
    text = (REPO / "docs" / "outputs.md").read_text()
    table = text[text.index("## Exit codes") :]
    table = table[: table.index("\n\n", table.index("| code |"))]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| ([^|]+) \|", table, re.M)}


def test_the_readme_table_lists_exactly_the_codes_the_errors_carry():
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert set(documented_codes()) == codes


def test_every_error_class_exits_with_a_documented_code():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ImgfitError)]
    assert {c.exit_code for c in classes} <= set(documented_codes())
    assert errors.TransientError.exit_code not in (errors.EXIT_USAGE, errors.EXIT_UNAVAILABLE), "must be retryable"


def test_slurm_script_retries_the_retryable_codes_and_fails_the_permanent_ones():
    script = (REPO / "slurm" / "train.sh").read_text()
    requeued = {int(c) for c in re.findall(r"\$status -eq (\d+) && .*\]\]; then", script)}
    assert requeued == {errors.EXIT_INTERRUPTED, errors.EXIT_RETRYABLE}

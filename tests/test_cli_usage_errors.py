"""The CLI framework's own usage errors (unknown option or command, a missing
argument, a value that does not parse, an extra argument) leave through the same
path as every other error: one line on stderr, redacted, at most MAX_LINE
characters, exit 2. Every command is fed a secret and a 10 kB argument."""

from __future__ import annotations

import pytest
from conftest import assert_one_error_line, run_cli

from imgfit_batch.cli import MAX_LINE

SECRET = "secretpw"
URL = f"https://user:{SECRET}@host/x"
HUGE = "h" * 10_000 + URL  # 10 kB, with the secret at its end (the tail a capped line keeps)

COMMANDS = ("run", "validate", "plan", "schema", "render", "status", "report", "compare")

# (command, the arguments after it) that click itself refuses, for every command
USAGE_ERRORS = [
    *[(c, [f"--bogus-{URL}"]) for c in COMMANDS],  # an unknown option naming a secret
    *[(c, [f"--{HUGE}"]) for c in COMMANDS],  # an unknown option of 10 kB
    *[
        (c, ["x", "y", "z", URL, HUGE]) for c in ("run", "validate", "plan", "schema", "status", "report")
    ],  # extra arguments
    ("run", ["x.yaml", "--index", URL]),  # a value that does not parse
    ("run", ["x.yaml", "--index", HUGE]),
    ("run", ["x.yaml", "--index", "-1"]),  # out of range
    ("run", []),
    ("validate", []),
    ("plan", []),
    ("status", []),
    ("report", []),  # a missing argument
    ("render", ["out", "--scale", URL, "-o", "a.png"]),
    ("render", ["out", "--width", HUGE, "-o", "a.png"]),
    ("render", [URL]),  # -o missing
    ("compare", ["a"]),  # -o missing
    ("compare", ["a", "b", "-o", "c.mp4", "--height", URL]),
    ("compare", ["a", "b", "-o", "c.mp4", "--fps", HUGE]),
    ("compare", ["-o", "c.mp4"]),  # no OUT at all
    ("status", [URL, "--json=" + URL]),  # a flag given a value
]


@pytest.mark.parametrize("command,args", USAGE_ERRORS, ids=lambda v: v if isinstance(v, str) else None)
def test_usage_errors_of_every_command_are_one_redacted_capped_line_exit_2(cli, command, args):
    result = cli(command, *args)
    assert result.exit_code == 2, result.stderr[:2000]
    line = assert_one_error_line(result.stderr)
    assert len(line) <= MAX_LINE, len(line)
    assert SECRET not in result.stderr and SECRET not in result.stdout
    assert "Usage:" not in result.stderr and "Try '" not in result.stderr, "click's four-line block"
    assert command in line, "the line names the command it concerns"


@pytest.mark.parametrize("args", [[f"rn-{URL}", "x"], [HUGE], [f"--bogus-{URL}", "run"]])
def test_an_unknown_command_or_top_level_option_is_one_redacted_capped_line(cli, args):
    result = cli(*args)
    assert result.exit_code == 2
    line = assert_one_error_line(result.stderr)
    assert len(line) <= MAX_LINE and SECRET not in result.stderr


def test_no_arguments_prints_the_help_and_one_line_exit_2(cli):
    result = cli()
    assert result.exit_code == 2
    assert "Commands" in result.stdout and "run" in result.stdout
    assert_one_error_line(result.stderr, "no command")


@pytest.mark.parametrize("command", COMMANDS)
def test_hostile_positional_arguments_of_every_command_are_one_redacted_capped_line(cli, tmp_path, command):
    """Arguments click accepts but the command refuses: a 10 kB location with a password
    in it (exit 2, a malformed location, or 3, nothing there)."""
    tail = {"render": ["-o", str(tmp_path / "a.png")], "compare": [HUGE, "-o", str(tmp_path / "c.mp4")]}
    args = [] if command == "schema" else [HUGE, *tail.get(command, [])]
    result = cli(command, *args)
    if command == "schema":
        assert result.exit_code == 0  # nothing to refuse: it takes no argument
        return
    assert result.exit_code in (2, 3), result.stderr[:2000]
    line = assert_one_error_line(result.stderr)
    assert len(line) <= MAX_LINE and SECRET not in result.stderr


def test_the_console_script_prints_a_usage_error_as_one_redacted_line():
    proc = run_cli("run", f"--bogus-{URL}", "spec.yaml")
    assert proc.returncode == 2
    line = assert_one_error_line(proc.stderr, "No such option", "imgfit-batch run --help")
    assert SECRET not in proc.stderr and "***" in line

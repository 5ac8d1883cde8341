"""A resume across an encoder change: the checkpoint records the ffmpeg build that
made its video segments (video.encoder_identity; the codec settings video.crf and
video.preset are result fields already). A rerun with another build, once a segment
is encoded, is refused in one line naming both, before training resumes, and
touches nothing: the rerun with the earlier build finishes identically."""

from __future__ import annotations

import os
import signal
import stat

import pytest
from conftest import assert_one_error_line, assert_same_result, cli_env, read_outputs, run_cli, signal_when, write_spec

from imgfit_batch import video

pytestmark = pytest.mark.slow


def other_build(tmp_path) -> str:
    """The real ffmpeg behind a wrapper that names another build (as after an image upgrade)."""
    path = tmp_path / "ffmpeg-upgraded"
    path.write_text(
        f'#!/bin/sh\nif [ "$1" = "-version" ]; then echo "ffmpeg version 99.0-upgraded"; exit 0; fi\n'
        f'exec "{video.ffmpeg_exe()}" "$@"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_a_resume_with_another_encoder_is_refused_before_training_and_the_earlier_one_finishes(reference, tmp_path):
    output = tmp_path / "out"
    spec = write_spec(tmp_path / "spec.yaml", reference.spec_for(str(output)))
    code, _, stderr = signal_when(spec, signal.SIGTERM, lambda e: e["event"] == "checkpoint" and e["step"] >= 80)
    assert code == 75, stderr
    assert "seg-000000.mp4" in os.listdir(output / "checkpoints" / "video"), "a segment is encoded already"
    before = sorted(os.listdir(output / "checkpoints"))

    proc = run_cli("run", spec, env=cli_env(IMAGEIO_FFMPEG_EXE=other_build(tmp_path)))
    assert proc.returncode == 3, proc.stderr
    assert_one_error_line(
        proc.stderr, f"encoded by {video.encoder_identity()}", "ffmpeg version 99.0-upgraded", "--restart"
    )
    assert '"event": "resumed"' not in proc.stdout, "refused before training resumes"
    assert sorted(os.listdir(output / "checkpoints")) == before

    proc = run_cli("run", spec)
    assert proc.returncode == 0, proc.stderr
    assert_same_result(read_outputs(str(output)), reference.result)


def test_the_identity_names_the_build_and_digests_its_libraries():
    identity = video.encoder_identity()
    assert identity.startswith("ffmpeg version ") and "(sha256 " in identity

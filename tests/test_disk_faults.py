"""Disk and inodes full, and a failing video encoder: the job never hangs and never lies.

Real parts: tmpfs mounts as the output or TMPDIR (mounting needs root; skipped with the
reason otherwise, failing under CI=true), the real ffmpeg, and stand-in ffmpeg
executables that are real processes (one that crashes, one that writes a short video,
one that never reads its input). Every job runs as a real process with a deadline:
a run still alive after it, and after SIGTERM plus a grace period, fails the test.

A full disk is exit 69 (retryable) with one line, wherever it strikes (a video segment,
a checkpoint, the publish step), and nothing wrong is published; once space is freed
the same command finishes with the result of an undisturbed run, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import (
    Reference,
    assert_one_error_line,
    assert_same_result,
    cli_env,
    read_outputs,
    save_photo,
    signal_when,
    skip_or_fail,
    tiny_spec,
    write_spec,
)

from imgfit_batch import video
from imgfit_batch.errors import EXIT_RETRYABLE, EXIT_UNAVAILABLE, EXIT_USAGE, TransientError, UnavailableError

pytestmark = pytest.mark.slow  # real mounts, real subprocesses

DEADLINE = 120  # seconds: each run here takes a few; only a hang gets near this
GRACE = 15  # after SIGTERM


# ---------------------------------------------------------------- helpers


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, size=..., nr_inodes=...) -> a fresh tmpfs folder; all unmounted afterwards."""
    mounted = []

    def mount(name: str, **options) -> str:
        where = tmp_path / name
        where.mkdir()
        try:
            proc = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", ",".join(f"{k}={v}" for k, v in options.items()), "tmpfs", str(where)],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except FileNotFoundError:
            skip_or_fail("no mount command: a real full disk needs a tmpfs mount")
        if proc.returncode != 0:
            skip_or_fail(f"cannot mount a tmpfs (needs root): {proc.stderr.strip()}")
        mounted.append(str(where))
        return str(where)

    yield mount
    for where in reversed(mounted):
        # lazy: an encoder orphaned by a failed test may still hold a file open there
        subprocess.run(["umount", "-l", where], capture_output=True, timeout=30)


def remount(where: str, **options) -> None:
    """Free space: grow the tmpfs in place (its files stay)."""
    opts = ",".join(["remount", *(f"{k}={v}" for k, v in options.items())])
    subprocess.run(["mount", "-o", opts, where], check=True, capture_output=True, timeout=30)


def run_job(spec_path: str, env: dict | None = None, cwd: str | None = None) -> tuple[int, str, str]:
    """`imgfit-batch run SPEC` as a real process with a deadline; a hang fails the test."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgfit_batch", "run", spec_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or cli_env(),
        cwd=cwd,
        start_new_session=True,
    )
    try:
        try:
            out, err = proc.communicate(timeout=DEADLINE)
            return proc.returncode, out, err
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=GRACE)
            pytest.fail(
                f"the job hung for {DEADLINE}s (it ended only on SIGTERM, exit {proc.returncode}):\n{err[-3000:]}"
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job hung: alive {DEADLINE}s after its start and {GRACE}s after SIGTERM")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def assert_nothing_published(output: str) -> None:
    for name in ("summary.json", "video.mp4"):
        assert not os.path.exists(os.path.join(output, name)), f"{name} was published by a failed run"


def assert_finishes_like_reference(spec_path: str, output: str, reference: Reference, env: dict | None = None) -> None:
    code, _, err = run_job(spec_path, env=env)
    assert code == 0, err
    result = read_outputs(output)
    assert_same_result(result, reference.result)
    assert video.count_frames(os.path.join(output, "video.mp4")) == result["summary"]["frames"]


def within(seconds: float, call, *args):
    """call(*args) in a helper thread; fails the test if it has not returned after `seconds`."""
    box: dict = {}

    def target():
        try:
            box["value"] = call(*args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(call, '__name__', call)} still waiting after {seconds}s: a hang"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ---------------------------------------------------------------- the job: inodes and disk full


def test_output_folder_out_of_inodes_is_exit_69_then_resumes_identically(reference, tmpfs, tmp_path):
    """The hang found on main: the writer thread waited forever once ffmpeg could not
    create its segment. Now: one line, 69, and a rerun after inodes are freed finishes.
    First without an inode for the output folder itself (was exit 3, "do not retry")."""
    fs = tmpfs("fs", size="16m", nr_inodes=1)
    output = os.path.join(fs, "out")
    spec = write_spec(tmp_path / "spec.yaml", reference.spec_for(output))
    code, _, err = run_job(spec)
    assert code == EXIT_RETRYABLE, err
    assert_one_error_line(err, "cannot create the output folder")

    remount(fs, nr_inodes=7)  # the folders and first files fit, a segment or checkpoint does not
    code, _, err = run_job(spec)
    assert code == EXIT_RETRYABLE, err
    assert_one_error_line(err, "No space left on device")
    assert_nothing_published(output)

    remount(fs, nr_inodes=10000)
    assert_finishes_like_reference(spec, output, reference)


@pytest.mark.parametrize("where", ["segment", "checkpoint", "publish"])
def test_disk_full_is_exit_69_publishes_nothing_and_the_rerun_is_identical(where, reference, tmpfs, tmp_path):
    """Sizes chosen so the first write that fails is the named one (measured with this
    project's pinned ffmpeg and the reference job): a video segment on a tiny output
    disk that nothing else writes to before the end, a checkpoint (the largest files of
    a running job) on a small one, or the joined video in TMPDIR while publishing."""
    env = None
    if where == "segment":
        fs = tmpfs("fs", size="8k")
        output = os.path.join(fs, "out")
        spec = reference.spec_for(output, checkpoint={"every_n_steps": 1000})  # only the end checkpoint
        needle = "video segment"
    elif where == "checkpoint":
        fs = tmpfs("fs", size="96k")
        output = os.path.join(fs, "out")
        spec = reference.spec_for(output)
        needle = "checkpoints/ckpt-"
    else:
        fs = tmpfs("tmp", size="4k")
        output = str(tmp_path / "out")
        spec = reference.spec_for(output)
        env = cli_env(TMPDIR=fs)
        needle = "video.mp4"
    spec_path = write_spec(tmp_path / "spec.yaml", spec)
    code, _, err = run_job(spec_path, env=env)
    assert code == EXIT_RETRYABLE, err
    assert_one_error_line(err, "No space left on device", needle)
    assert_nothing_published(output)

    remount(fs, size="64m")
    assert_finishes_like_reference(spec_path, output, reference, env=env)


def test_temp_folder_out_of_inodes_is_exit_69_and_publishes_nothing(reference, tmpfs, tmp_path):
    """(The rerun after freeing TMPDIR is the publish case above.)"""
    fs = tmpfs("tmp", size="16m", nr_inodes=3)  # the folder itself, the staging folder, one file
    output = str(tmp_path / "out")
    spec = write_spec(tmp_path / "spec.yaml", reference.spec_for(output))
    code, _, err = run_job(spec, env=cli_env(TMPDIR=fs))
    assert code == EXIT_RETRYABLE, err
    assert_one_error_line(err, "No space left on device")
    assert_nothing_published(output)


def test_output_folder_named_like_an_ffmpeg_protocol_is_a_plain_folder(tmp_path):
    """`concat:runs/x` (or `S3:/bucket/x`) relative to the current folder: ffmpeg read the
    first part as a protocol, failed, and the job hung. Paths given to ffmpeg are now
    unambiguous, so it is a folder like any other (or, should the spec refuse such a
    name one day, a spec error: never a hang)."""
    image = tmp_path / "photo.png"
    save_photo(image)
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(image), "concat:runs/x"))
    code, _, err = run_job(spec, cwd=str(tmp_path))
    if code == EXIT_USAGE:
        assert_one_error_line(err)
        return
    assert code == 0, err
    output = tmp_path / "concat:runs" / "x"
    summary = json.loads((output / "summary.json").read_text())
    assert summary["frames"] > 0 and video.count_frames(str(output / "video.mp4")) == summary["frames"]


def test_a_damaged_segment_is_never_published_with_a_summary_that_claims_more(reference, tmp_path):
    """Segments written by an earlier run are joined at the end: if one decodes short
    (damaged since it was checked), video.mp4 and summary.json are not published."""
    output = str(tmp_path / "out")
    spec = write_spec(tmp_path / "spec.yaml", reference.spec_for(output))
    code, _, err = signal_when(spec, signal.SIGTERM, lambda e: e["event"] == "checkpoint" and e["step"] >= 84)
    assert code == 75, err
    segment = os.path.join(output, "checkpoints", "video", video.segment_name(0))
    short = str(tmp_path / "short.mp4")
    subprocess.run(
        [video.ffmpeg_exe(), "-v", "error", "-i", segment, "-frames:v", "10", "-c", "copy", short],
        check=True,
        timeout=60,
    )
    os.replace(short, segment)  # a valid mp4 with 10 of its 40 frames

    code, _, err = run_job(spec)
    assert code == EXIT_UNAVAILABLE, err
    assert_one_error_line(err, "decode to", "--restart")
    assert_nothing_published(output)


# ---------------------------------------------------------------- the writer alone


W, H, C = 24, 16, 3


def frames(n: int, size: tuple[int, int] = (W, H)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size[1], size[0], C), dtype=np.uint8) for _ in range(n)]


def writer(folder: str, size: tuple[int, int] = (W, H), **kwargs) -> video.SegmentWriter:
    return video.SegmentWriter(folder, size[0], size[1], C, fps=2, crf=23, preset="ultrafast", **kwargs)


def feed_and_finish(w: video.SegmentWriter, batch: list[np.ndarray]) -> None:
    for frame in batch:
        w.add(frame)
    w.finish()


@pytest.fixture
def fake_ffmpeg(tmp_path, monkeypatch):
    """install(script) -> an executable standing in for ffmpeg when it encodes raw frames
    (`$REAL "$@"` runs the real one); decoding and joining still use the real ffmpeg."""
    real = video.ffmpeg_exe()

    def install(encode_script: str) -> None:
        path = tmp_path / "ffmpeg"
        path.write_text(
            f'#!/bin/sh\nREAL="{real}"\ncase " $* " in\n  *" -i - "*)\n{encode_script}\n;;\nesac\nexec "$REAL" "$@"\n'
        )
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setattr(video, "ffmpeg_exe", lambda: str(path))

    return install


def no_segments_left(folder: str) -> bool:
    return not [n for n in os.listdir(folder) if n.endswith(".mp4")]


@pytest.mark.parametrize(
    "script, says",
    [
        ('echo "simulated encoder failure" >&2; exit 3', "ffmpeg exited with 3: simulated encoder failure"),
        ('cat >/dev/null; echo "crashed while flushing" >&2; exit 4', "ffmpeg exited with 4: crashed while flushing"),
        ("kill -SEGV $$", "ffmpeg was killed by SIGSEGV"),
    ],
    ids=["exits-at-once", "fails-after-reading-all", "crashes"],
)
def test_a_failing_encoder_is_a_transient_error_within_a_deadline(script, says, fake_ffmpeg, tmp_path):
    fake_ffmpeg(script)
    folder = str(tmp_path / "video")
    w = writer(folder)
    with pytest.raises(TransientError, match=says):
        within(30, feed_and_finish, w, frames(w.k + 3))  # a full segment, then the partial one on finish
    within(30, w.abandon)
    with pytest.raises(TransientError, match=says):
        within(30, w.sync)  # and every later call says the same
    assert no_segments_left(folder), os.listdir(folder)


def test_a_segment_that_decodes_short_is_never_accepted(fake_ffmpeg, tmp_path):
    """ffmpeg exits 0 but the file holds 3 frames: the decode check refuses it."""
    fake_ffmpeg(
        'OUT=""; for a; do OUT="$a"; done; F="${OUT#file:}"\n'
        '"$REAL" "$@" || exit $?\n'
        '"$REAL" -v error -y -i "$F" -frames:v 3 -c copy "$F.short.mp4" && mv "$F.short.mp4" "$F"\nexit 0'
    )
    folder = str(tmp_path / "video")
    closed = []
    w = writer(folder, on_closed=lambda j, path: closed.append(j))
    with pytest.raises(TransientError, match=f"decodes to 3 of the {w.k} frames"):
        within(60, feed_and_finish, w, frames(w.k + 2))
    assert closed == [] and no_segments_left(folder), os.listdir(folder)


def test_a_failing_on_closed_ends_finish_sync_and_abandon(tmp_path):
    """The deadlock found on main: on_closed (or the rename) failing while `finish` is
    handled left the writer waiting for a second finish and the trainer in join()."""

    def on_closed(j, path):
        raise UnavailableError(f"{path}: upload refused")

    w = writer(str(tmp_path / "video"), on_closed=on_closed)
    with pytest.raises(UnavailableError, match="upload refused"):
        within(30, feed_and_finish, w, frames(3))  # one partial segment, closed by finish
    within(30, w.abandon)
    with pytest.raises(UnavailableError):
        within(30, w.sync)

    w = writer(str(tmp_path / "video2"), on_closed=on_closed)
    for frame in frames(w.k):  # a full segment: on_closed fails in the writer thread
        within(30, w.add, frame)
    with pytest.raises(UnavailableError):
        within(30, w.sync)
    with pytest.raises(UnavailableError):
        within(30, w.finish)


def test_a_failing_rename_or_a_vanished_folder_ends_finish_with_an_error(tmp_path):
    folder = str(tmp_path / "video")
    os.makedirs(os.path.join(folder, video.segment_name(0), "x"))  # a folder where the segment goes: no rename
    w = writer(folder)
    with pytest.raises(RuntimeError, match="Is a directory"):
        within(30, feed_and_finish, w, frames(3))
    within(30, w.abandon)
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp")], "the temporary segment is left behind"

    folder = str(tmp_path / "vanishing")
    w = writer(folder)
    for frame in frames(2):
        w.add(frame)
    within(30, w.sync)
    shutil.rmtree(folder)  # ffmpeg opens its output only now: it fails
    with pytest.raises(TransientError, match="No such file or directory"):
        within(30, w.finish)
    within(30, w.abandon)


def test_a_stuck_encoder_is_given_up_on(fake_ffmpeg, tmp_path):
    """ffmpeg that never reads its input: the writer blocks feeding it; waits give up
    after stall_seconds (kept tiny here) and kill it."""
    fake_ffmpeg("exec sleep 60")
    w = writer(str(tmp_path / "video"), size=(256, 256))  # a frame is larger than a pipe's buffer
    w.stall_seconds = 1
    with pytest.raises(TransientError, match="no progress"):
        within(30, feed_and_finish, w, frames(2, (256, 256)))
    within(30, w.abandon)


def test_a_protocol_looking_relative_folder_is_written_as_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = writer("S3:/bucket/video")
    batch = frames(w.k + 2)
    within(60, feed_and_finish, w, batch)
    segments = [os.path.join("S3:/bucket/video", video.segment_name(j)) for j in range(2)]
    assert [video.count_frames(p) for p in segments] == [w.k, 2]
    video.concat(segments, "concat:joined.mp4", len(batch))
    assert video.count_frames("concat:joined.mp4") == len(batch)


@pytest.mark.parametrize("channels, size", [(3, (24, 16)), (1, (23, 15))], ids=["rgb", "gray-odd-size"])
def test_segments_are_byte_identical_to_those_imageio_ffmpeg_wrote(channels, size, tmp_path):
    """Our own ffmpeg process takes the arguments imageio-ffmpeg's write_frames gave it:
    a job checkpointed by an earlier version resumes into the same bytes."""
    import imageio_ffmpeg

    rng = np.random.default_rng(1)
    batch = [rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8) for _ in range(5)]
    w = video.SegmentWriter(str(tmp_path / "new"), size[0], size[1], channels, fps=4, crf=23, preset="medium")
    feed_and_finish(w, batch)
    pad = (size[0] + size[0] % 2, size[1] + size[1] % 2)
    params = (["-vf", f"pad={pad[0]}:{pad[1]}:0:0"] if pad != size else []) + [
        "-preset",
        "medium",
        "-crf",
        "23",
        "-threads",
        "2",
        "-g",
        str(w.k),
    ]
    old = str(tmp_path / "old.mp4")
    gen = imageio_ffmpeg.write_frames(
        old,
        size,
        pix_fmt_in="gray" if channels == 1 else "rgb24",
        pix_fmt_out="yuv420p",
        fps=4,
        quality=None,
        codec="libx264",
        macro_block_size=1,
        output_params=params,
        ffmpeg_log_level="error",
    )
    gen.send(None)
    for frame in batch:
        gen.send(frame.tobytes())
    gen.close()
    new = tmp_path / "new" / video.segment_name(0)
    assert new.read_bytes() == open(old, "rb").read()

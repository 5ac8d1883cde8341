"""Frames streamed into ffmpeg (H.264, yuv420p) as fixed-length segments.

Segment j holds frames [j*K, (j+1)*K). K depends only on the frame size, so
every run of a job cuts the video at the same frames, and a resumed job encodes
byte-identical segments: the frames of the open segment travel in the checkpoint
(raw) and are fed to its encoder again on resume. At the end the segments are
joined without re-encoding (ffmpeg's concat demuxer).

Encoding runs in a writer thread behind a bounded queue, so the trainer never
waits on the encoder unless the encoder falls a whole queue behind.

Nothing is taken on trust: a segment counts only once its ffmpeg exited 0 and
the file decodes to exactly the frames fed to it; until then it lives under a
temporary name. A failed segment (disk or inodes full, ffmpeg crashed) is a
TransientError: the checkpoints never count on it, so a rerun re-encodes it.
Every wait between the trainer and the writer thread wakes up when the thread
fails or ends, and gives up on a thread stuck on one item for STALL_SECONDS.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from imgfit_batch.errors import ImgfitError, NodeLocalError, TransientError, UnavailableError, is_node_local

SEGMENT_BYTES = 48 * 1024 * 1024  # raw bytes of the open segment a checkpoint may carry
MAX_SEGMENT_SECONDS = 10
STALL_SECONDS = 600.0  # the writer busy this long on one frame or segment is stuck (encoder or storage)
FFMPEG_SECONDS = 600.0  # the most one ffmpeg run may take to finish (closing, joining, counting)
ABANDON_SECONDS = 10.0  # how long abandon() waits for the writer thread before leaving it behind


def frame_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The rendered frame size: the input's, or scaled so the longer side is max_side."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def segment_frames(width: int, height: int, channels: int, fps: int) -> int:
    return int(max(1, min(fps * MAX_SEGMENT_SECONDS, SEGMENT_BYTES // (width * height * channels))))


def segment_name(j: int) -> str:
    return f"seg-{j:06d}.mp4"


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def encoder_identity() -> str:
    """What makes the segments' bitstream besides the spec's codec settings (video.crf,
    video.preset, which a checkpoint compares already): the ffmpeg build and its
    libraries, as `ffmpeg -version` names them. "ffmpeg version 7.0.2-static (sha256
    3f2a...)": its first line and a digest of the whole answer (library versions,
    configuration). Segments of two builds joined with `-c copy` make a damaged video.
    Asked once per process and binary (every checkpoint records it)."""
    return _identity(ffmpeg_exe())


@functools.lru_cache(maxsize=4)
def _identity(exe: str) -> str:
    try:
        text = subprocess.run(
            [exe, "-version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=FFMPEG_SECONDS,
            errors="replace",
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise TransientError(
            f"the video encoder ffmpeg cannot run on this node ({exc}); run again (elsewhere)"
        ) from None
    first = " ".join(text.splitlines()[0].split()[:3]) if text.strip() else "ffmpeg (no version line)"
    return f"{first} (sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]})"


def input_url(path: str) -> str:
    """A local path as ffmpeg cannot misread it: `S3:/x` or `concat:y` would be protocols."""
    return "file:" + os.path.abspath(path)


def _disk_full(text: str) -> bool:
    return "No space left on device" in text or "Disk quota exceeded" in text


def ffmpeg_failure(what: str, returncode: int, stderr: str) -> TransientError:
    """ffmpeg failed: the disk or inodes full, or the encoder crashed. Both may pass on
    another try (later, or on another node); the checkpoints never count on its output."""
    lines = [
        re.sub(r"^\[[^]]*\]\s*", "", line.strip()) for line in stderr.splitlines() if line.strip()
    ]  # "[out#0/mp4 @ 0x..] "
    last = lines[-1] if lines else "no message"
    if _disk_full(stderr):
        reason = "No space left on device" if "No space left on device" in stderr else "Disk quota exceeded"
        return NodeLocalError(
            f"{what}: ffmpeg: {reason}: disk or inodes full on this node; "
            "free space (or run elsewhere) and run again: it resumes"
        )
    how = f"exited with {returncode}"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            how = f"was killed by {signal.Signals(-returncode).name}"
    return TransientError(f"{what}: ffmpeg {how}: {last}")


def _run_ffmpeg(what: str, args: list[str]) -> str:
    """Run ffmpeg to completion (bounded by FFMPEG_SECONDS); returns its stderr, raises on failure."""
    try:
        proc = subprocess.run(
            [ffmpeg_exe(), *args], stdin=subprocess.DEVNULL, capture_output=True, timeout=FFMPEG_SECONDS
        )
    except subprocess.TimeoutExpired:
        raise TransientError(f"{what}: ffmpeg did not finish within {FFMPEG_SECONDS:.0f}s") from None
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise ffmpeg_failure(what, proc.returncode, stderr)
    return stderr


class Encoder:
    """One ffmpeg process encoding frames from its stdin into one file. Its exit status
    and the tail of its stderr are ours to check (imageio-ffmpeg's writer checks neither)."""

    def __init__(self, args: list[str], path: str, what: str):
        self.path, self.what, self.frames = path, what, 0
        self._tail: collections.deque[str] = collections.deque(maxlen=20)
        # a session of its own: a Ctrl-C meant for the job must not kill the encoder mid-segment
        self.proc = subprocess.Popen(
            [ffmpeg_exe(), *args, input_url(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stderr is not None  # both piped above
        self._stdin, self._stderr = self.proc.stdin, self.proc.stderr
        # drained all along, so ffmpeg can never block on a full stderr pipe
        self._reader = threading.Thread(target=self._read_stderr, name="ffmpeg-stderr", daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        for line in self._stderr:
            self._tail.append(line.decode(errors="replace").rstrip())

    def write(self, data: bytes | memoryview) -> None:
        try:
            self._stdin.write(data)
        except (BrokenPipeError, ValueError):  # ffmpeg is gone (or was killed): its status says why
            self._wait()
            raise TransientError(f"{self.what}: ffmpeg stopped reading frames") from None
        self.frames += 1

    def close(self) -> None:
        """Flush the last frames and wait for ffmpeg; raises unless it exited 0."""
        try:
            self._stdin.close()
        except (BrokenPipeError, ValueError):
            pass  # the status below says what happened
        self._wait()

    def _wait(self) -> None:
        try:
            returncode = self.proc.wait(timeout=FFMPEG_SECONDS)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TransientError(f"{self.what}: ffmpeg did not finish within {FFMPEG_SECONDS:.0f}s") from None
        self._reader.join(timeout=5)
        if returncode != 0:
            raise ffmpeg_failure(self.what, returncode, "\n".join(self._tail))

    def stop(self) -> None:
        """Kill ffmpeg now (any thread: it unblocks a writer stuck feeding a stuck ffmpeg)."""
        with contextlib.suppress(OSError):
            self.proc.kill()

    def discard(self) -> None:
        """Kill ffmpeg and remove its file (the writer thread's own cleanup)."""
        self.stop()
        with contextlib.suppress(OSError, ValueError):
            self._stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class SegmentWriter:
    """Writes frames [start, ...) into segment files in `folder`.

    `pending` are the frames of the open segment already rendered before a
    resume; they are re-encoded first. `on_closed(j, path)` runs in the writer
    thread each time segment j is complete on disk (encoded, checked, renamed).
    A failure in the thread (ffmpeg, the disk, `on_closed`) ends it; the trainer's
    next call raises it.
    """

    stall_seconds = STALL_SECONDS

    def __init__(
        self,
        folder: str,
        width: int,
        height: int,
        channels: int,
        fps: int,
        crf: int,
        preset: str,
        start_frame: int = 0,
        pending: np.ndarray | None = None,
        on_closed: Callable[[int, str], None] | None = None,
        queue_size: int = 8,
    ):
        self.folder, self.width, self.height, self.channels = folder, width, height, channels
        self.fps, self.crf, self.preset = fps, crf, preset
        self.k = segment_frames(width, height, channels, fps)
        self.on_closed = on_closed
        os.makedirs(folder, exist_ok=True)
        pending = pending if pending is not None and len(pending) else np.zeros((0, height, width, channels), np.uint8)
        if start_frame % self.k != len(pending):
            raise ValueError(
                f"resume at frame {start_frame} needs {start_frame % self.k} open-segment frames, got {len(pending)}"
            )
        self.frames = start_frame - len(pending)  # frames accepted (counting pending re-fed below)
        self._open: list[np.ndarray] = []  # frames of the open segment (for checkpoints)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._ended = threading.Event()  # the writer thread has returned, by whatever path
        self._abandoned = False
        self._finished = False  # the last segment closed on finish()
        self._busy_since: float | None = None  # when the thread took the item it is working on
        self._encoder: Encoder | None = None  # the open segment's
        self._thread = threading.Thread(target=self._run, name="video-writer", daemon=True)
        self._thread.start()
        for frame in pending:
            self.add(frame)

    # -- trainer side

    def add(self, frame) -> None:
        """Queue one (h, w, c) uint8 frame: a numpy array, or a torch tensor on any device
        (copied to the host in the writer thread, so the trainer never waits for it)."""
        self._raise_if_failed()
        self._open.append(frame)
        self.frames += 1
        if self.frames % self.k == 0:
            self._open = []
        self._put(("frame", frame))

    def open_frames(self) -> np.ndarray:
        """Frames of the open segment, which a checkpoint must carry."""
        if not self._open:
            return np.zeros((0, self.height, self.width, self.channels), np.uint8)
        return np.stack([_host(f) for f in self._open])

    def sync(self) -> None:
        """Wait until every queued frame is encoded and every full segment closed."""
        done = threading.Event()
        self._put(("sync", done))
        self._wait(done)
        if not done.is_set():
            self._raise_if_failed()
            raise RuntimeError("the video writer stopped before the sync")

    def finish(self) -> None:
        """Close the last (partial) segment; the video is then complete."""
        self._put(("finish", None))
        self._wait(None)
        self._raise_if_failed()
        if not self._finished:
            raise RuntimeError("the video writer stopped before the video was finished")

    def abandon(self) -> None:
        """Stop without closing the open segment (its frames live in the checkpoint, as do
        those of every segment closed since). For failure paths: never raises, waits briefly."""
        self._abandoned = True
        encoder = self._encoder
        if encoder is not None:
            encoder.stop()  # unblocks a writer stuck feeding a stuck ffmpeg
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(("abandon", None))  # when full, the thread sees the flag at its next item
        self._ended.wait(ABANDON_SECONDS)

    def _put(self, item: tuple) -> None:
        """Queue an item, waiting while the queue is full, but never on a thread that has ended or is stuck."""
        while True:
            if self._ended.is_set():
                self._raise_if_failed()
                raise RuntimeError("the video writer has already stopped")
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                self._check_stall()

    def _wait(self, done: threading.Event | None) -> None:
        """Until `done` is set (None: until the thread ends); returns early when the thread ends."""
        while not (done is not None and done.is_set()):
            if self._ended.wait(0.1):
                return
            self._check_stall()

    def _check_stall(self) -> None:
        since = self._busy_since
        if since is not None and time.monotonic() - since > self.stall_seconds:
            self.abandon()
            raise TransientError(
                f"video segments in {self.folder}: the encoder made no progress for "
                f"{self.stall_seconds:.0f}s; gave up (run again: it resumes)"
            )

    def _raise_if_failed(self) -> None:
        exc = self._error
        if exc is None:
            return
        if isinstance(exc, ImgfitError):  # ffmpeg's failures, a segment upload storage gave up on: their own line
            raise exc
        if is_node_local(exc):
            raise NodeLocalError(
                f"video segments in {self.folder}: {exc.strerror or exc} on this node; "
                "free space (or run elsewhere) and run again: it resumes"
            ) from exc
        raise RuntimeError(f"video encoder failed: {exc}") from exc

    # -- writer thread

    def _start_segment(self, j: int) -> Encoder:
        # unique per process: an orphaned encoder of a killed run may still be writing its own
        tmp = os.path.join(self.folder, f".tmp-{os.getpid()}-{segment_name(j)}")
        pad_w, pad_h = self.width + self.width % 2, self.height + self.height % 2
        # the arguments imageio-ffmpeg's write_frames used: the same bytes as every earlier run of a job
        args = [
            "-y",
            "-f",
            "rawvideo",
            "-vcodec",
            "rawvideo",
            "-s",
            f"{self.width}x{self.height}",
            "-pix_fmt",
            "gray" if self.channels == 1 else "rgb24",
            "-r",
            str(Fraction(self.fps).limit_denominator()),
            "-i",
            "-",
            "-an",
            "-vcodec",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-v",
            "error",
        ]
        if (pad_w, pad_h) != (self.width, self.height):
            args += ["-vf", f"pad={pad_w}:{pad_h}:0:0"]
        args += ["-preset", self.preset, "-crf", str(self.crf), "-threads", "2", "-g", str(self.k)]
        return Encoder(args, tmp, f"video segment {os.path.join(self.folder, segment_name(j))}")

    def _close_segment(self, encoder: Encoder, j: int) -> None:
        """ffmpeg exited 0 and the file decodes to every frame fed: only then does it take its name."""
        encoder.close()
        decoded = decoded_frames(encoder.path, encoder.what)
        if decoded != encoder.frames:
            raise TransientError(
                f"{encoder.what}: ffmpeg exited 0 but the file decodes to {decoded} of the "
                f"{encoder.frames} frames fed; run again: it resumes"
            )
        path = os.path.join(self.folder, segment_name(j))
        os.replace(encoder.path, path)
        if self.on_closed:
            self.on_closed(j, path)

    def _run(self) -> None:
        encoded = self.frames  # first frame index this thread will see
        encoder = None
        try:
            while True:
                op, arg = self._queue.get()
                if self._abandoned or op == "abandon":
                    return
                self._busy_since = time.monotonic()
                if op == "frame":
                    if encoder is None:
                        encoder = self._encoder = self._start_segment(encoded // self.k)
                    encoder.write(np.ascontiguousarray(_host(arg)).tobytes())
                    encoded += 1
                    if encoded % self.k == 0:
                        self._close_segment(encoder, encoded // self.k - 1)
                        encoder = self._encoder = None
                elif op == "sync":
                    arg.set()
                elif op == "finish":
                    if encoder is not None:
                        self._close_segment(encoder, encoded // self.k)
                        encoder = self._encoder = None
                    self._finished = True
                    return
                self._busy_since = None
        except BaseException as exc:  # surfaced to the trainer on its next call (every wait also sees _ended)
            self._error = exc
        finally:
            if encoder is not None:  # abandoned or failed: never leave its file (or its process) behind
                encoder.discard()
            self._encoder = self._busy_since = None
            self._ended.set()


def _host(frame) -> np.ndarray:
    return frame if isinstance(frame, np.ndarray) else frame.cpu().numpy()


def num_segments(frames: int, k: int) -> int:
    return -(-frames // k)


def concat(segment_paths: list[str], out_path: str, expected_frames: int) -> None:
    """Join segments into one mp4 without re-encoding; raises unless it decodes to `expected_frames`."""
    try:
        if len(segment_paths) == 1:
            shutil.copyfile(segment_paths[0], out_path)
        else:
            listing = out_path + ".txt"
            try:
                with open(listing, "w") as fh:
                    for p in segment_paths:
                        fh.write("file '" + os.path.abspath(p).replace("'", "'\\''") + "'\n")
                _run_ffmpeg(
                    f"joining the video segments into {out_path}",
                    [
                        "-y",
                        "-loglevel",
                        "error",
                        "-f",
                        "concat",
                        "-safe",
                        "0",
                        "-i",
                        input_url(listing),
                        "-c",
                        "copy",
                        "-movflags",
                        "+faststart",
                        input_url(out_path),
                    ],
                )
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(listing)
    except OSError as exc:
        if is_node_local(exc):
            raise NodeLocalError(
                f"{out_path}: cannot join the video segments: {exc.strerror or exc} on this node; "
                "free space (or run elsewhere) and run again: it resumes"
            ) from None
        raise
    decoded = decoded_frames(out_path, out_path)
    if decoded != expected_frames:
        # segments were checked when written: one that decodes short now was damaged since
        counts = " + ".join(str(decoded_frames(p, p)) for p in segment_paths)
        raise UnavailableError(
            f"the video segments in {os.path.dirname(os.path.abspath(segment_paths[0]))} decode to {decoded} frames "
            f"({counts}), the checkpoint counts {expected_frames}: a segment is damaged; "
            "rerun with --restart to start over"
        )


def decoded_frames(path: str, what: str) -> int:
    """count_frames, as a check: a file ffmpeg cannot read at all decodes to 0 frames."""
    try:
        return count_frames(path)
    except subprocess.CalledProcessError:
        return 0
    except subprocess.TimeoutExpired:
        raise TransientError(f"{what}: decoding it took longer than {FFMPEG_SECONDS:.0f}s") from None


def count_frames(path: str) -> int:
    """Decode the whole video and count its frames (what a viewer would see)."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostats", "-i", input_url(path), "-map", "0:v:0", "-f", "null", "-"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
        timeout=FFMPEG_SECONDS,
    )
    frames = [line for line in proc.stderr.splitlines() if line.startswith("frame=")]
    return int(frames[-1].split("frame=")[1].split()[0]) if frames else 0


def decode_frames(path: str, width: int, height: int, channels: int) -> np.ndarray:
    """All frames of a video as (n, h, w, c) uint8 (cropped back to the frame size)."""
    pad_w, pad_h = width + width % 2, height + height % 2
    pix = "gray" if channels == 1 else "rgb24"
    proc = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", input_url(path), "-f", "rawvideo", "-pix_fmt", pix, "-"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
    )
    a = np.frombuffer(proc.stdout, np.uint8).reshape(-1, pad_h, pad_w, channels)
    return a[:, :height, :width]

"""`compare`: the films of several finished jobs side by side in one labelled video.

Every job films its field at evenly spaced training steps, so frame i of n shows
the field at fraction i / (n - 1) of training. Output frame j of N shows, for
each input with n frames, its frame round(j * (n - 1) / (N - 1)) (halves up):
the first output frame shows every input's first frame, the last one every
input's last frame, and the inputs advance together by fraction of training.

Each input is decoded by its own ffmpeg, cropped and scaled to its tile there,
and read as raw RGB frames off a pipe, moving forward only; no video is ever
held whole. The output frames are composed in numpy (the labels are drawn once,
with PIL) and piped into one ffmpeg encoder (video.Encoder: stderr drained on
a thread, exit status checked). The result is published only once it decodes
to exactly N frames: the video is made in a temporary folder beside a local -o
(then renamed onto it) or in the system's temporary folder for a remote -o (then
uploaded); remote inputs are downloaded into the same folder. A watchdog kills every
ffmpeg if nothing moves for STALL_SECONDS, or when a stop signal arrives, so no
read or write blocks for ever.

Layout (documented in the command's help, which a test computes from):
  H   = --height, default the smallest input frame height, at most 480; even (rounded down)
  w_k = input k's frame width scaled to H (w * H / h), to the nearest even number (halves up)
  cell: a LABEL_HEIGHT strip (model kind and PSNR; settings) above the tile;
        a column is as wide as its widest tile, and at least LABEL_MIN_WIDTH
  grid: all inputs in one row up to 4, else ceil(sqrt(n)) columns, filled row by
        row; GAP pixels between columns and rows
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from imgfit_batch import outputs, signals, storage, video
from imgfit_batch.errors import Interrupted, NodeLocalError, SpecError, TransientError, UnavailableError
from imgfit_batch.spec import image_stem
from imgfit_batch.storage import local as local_store

MIN_INPUTS, MAX_INPUTS = 2, 16
MAX_ROW = 4  # up to this many inputs sit in one row; more make a grid of ceil(sqrt(n)) columns
DEFAULT_MAX_HEIGHT = 480  # the default tile height is the smallest input's, at most this
MAX_FRAMES = 100_000
DEFAULT_FPS = 30
LABEL_HEIGHT = 40  # the strip above each tile: two lines of text
LABEL_MIN_WIDTH = 200  # a column is at least this wide, so its label stays readable
GAP = 4  # pixels between columns and between rows
FONT_SIZE = 13
BACKGROUND, STRIP, TEXT = (0, 0, 0), (40, 40, 40), (235, 235, 235)
CRF, PRESET = 18, "medium"
STALL_SECONDS = 600.0  # no frame in or out for this long: an ffmpeg is stuck


@dataclass
class Input:
    """One job output to show: where it is, what its label says, its video's frames."""

    output: str
    summary: outputs.Summary
    video_path: str  # local (downloaded first when the output is remote)
    frames: int  # n_k
    width: int  # the video's frame size (the encoder's even padding cropped off)
    height: int


@dataclass
class Layout:
    height: int  # of every tile
    widths: list[int]  # of each input's tile
    columns: int
    column_widths: list[int]

    @property
    def rows(self) -> int:
        return -(-len(self.widths) // self.columns)

    @property
    def size(self) -> tuple[int, int]:
        width = sum(self.column_widths) + GAP * (self.columns - 1)
        return width, self.rows * (LABEL_HEIGHT + self.height) + GAP * (self.rows - 1)

    def cell(self, k: int) -> tuple[int, int, int]:
        """Input k's cell: its left edge, its top edge (the label strip's), and its column's width."""
        row, col = divmod(k, self.columns)
        return (
            sum(self.column_widths[:col]) + GAP * col,
            row * (LABEL_HEIGHT + self.height + GAP),
            self.column_widths[col],
        )

    def tile(self, k: int) -> tuple[int, int]:
        """Where input k's tile goes: centred in its column, below its label strip."""
        x, y, width = self.cell(k)
        return x + (width - self.widths[k]) // 2, y + LABEL_HEIGHT


def plan_layout(sizes: list[tuple[int, int]], height: int | None = None) -> Layout:
    """The output's geometry for inputs of frame sizes `sizes` (width, height); see the module doc."""
    h = height if height is not None else min(DEFAULT_MAX_HEIGHT, min(s[1] for s in sizes))
    h = max(2, h - h % 2)
    widths = [max(2, (w * h + ih) // (2 * ih) * 2) for w, ih in sizes]  # nearest even, halves up
    n = len(sizes)
    columns = n if n <= MAX_ROW else math.ceil(math.sqrt(n))
    column_widths = [max([LABEL_MIN_WIDTH] + widths[c::columns]) for c in range(columns)]
    return Layout(h, widths, columns, column_widths)


def source_frame(j: int, n_out: int, n_in: int) -> int:
    """The input frame that output frame j of n_out shows, for an input of n_in frames:
    the same fraction of training, j * (n_in - 1) / (n_out - 1) rounded (halves up).
    A one-frame output shows every input's last frame (the trained field)."""
    if n_out == 1:
        return n_in - 1
    return (2 * j * (n_in - 1) + (n_out - 1)) // (2 * (n_out - 1))


# ------------------------------------------------------------------ reading the inputs


def _printable(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", " ", text).strip()


def _folder_name(output: str) -> str:
    return output.rstrip("/").rsplit("/", 1)[-1] or output


def settings_of(inp: Input) -> str:
    """The settings a task ran with: its sweep's label from the summary's "task" record,
    else (no sweep, or no record) the output's last folder name."""
    task = inp.summary.task
    if task is not None and task.label:
        return task.label
    return _folder_name(inp.output)


def _image_stem(summary: outputs.Summary) -> str | None:
    image = (summary.task.image if summary.task else None) or summary.image
    if not image:
        return None
    return image_stem(image)  # as the task's folder is named


def label_lines(inputs: list[Input]) -> list[tuple[str, str]]:
    """Each input's two label lines: "<model kind>  PSNR <dB>" and its settings (prefixed
    with its image's stem when the inputs fit different images)."""
    stems = [_image_stem(inp.summary) for inp in inputs]
    several_images = len(set(stems)) > 1
    lines = []
    for inp, stem in zip(inputs, stems):
        kind, psnr = inp.summary.model, inp.summary.psnr_db
        if inp.summary.exact:  # final.png equals the input: psnr_db is null
            score = "PSNR exact"
        else:
            score = "PSNR ?" if psnr is None else f"PSNR {psnr:.2f} dB"
        settings = settings_of(inp)
        if several_images and stem:
            settings = f"{stem}: {settings}"
        lines.append((_printable(f"{kind if isinstance(kind, str) else '?'}  {score}"), _printable(settings)))
    return lines


def _video_size(path: str, what: str) -> tuple[int, int]:
    """(width, height) of the first video stream in `path`; UnavailableError where ffmpeg
    finds none (not a video, or damaged)."""
    proc = subprocess.run(
        [video.ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", video.input_url(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=video.FFMPEG_SECONDS,
    )
    if proc.returncode < 0:
        raise video.ffmpeg_failure(f"reading {what}", proc.returncode, proc.stderr)
    found = re.search(r"Stream #\S+.*?: Video: .*?, (\d+)x(\d+)[ ,]", proc.stderr)
    if found is None:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no message"
        raise UnavailableError(
            f"{what}: not a video ffmpeg can read ({last}); the output is damaged: rerun its job with --restart"
        )
    return int(found.group(1)), int(found.group(2))


def _local_video(uri: str, workdir: str, k: int) -> str:
    """A local path to read `uri` from: the file itself, or a download of the remote object."""
    if storage.is_remote(uri):
        path = os.path.join(workdir, f"input-{k}.mp4")
        storage.download_file(uri, path, what="video")
        return path
    path = storage.local_path(uri)
    storage.check_inside(uri)  # ffmpeg opens the path itself: a link out of the input is refused here
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UnavailableError(f"{uri}: not found; the output has no video") from None
    except OSError as exc:
        raise UnavailableError(f"{uri}: cannot read it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):  # a FIFO would block ffmpeg for ever
        raise UnavailableError(f"{uri}: not a regular file")
    return path


def open_input(output: str, workdir: str, k: int) -> Input:
    """A completed job's output, checked: its summary says completed, its video is readable."""
    summary: outputs.Summary | None = outputs.read(outputs.Summary, storage.join(output, outputs.SUMMARY))
    if summary is None or not summary.completed:
        from imgfit_batch.readback import job_status

        state = job_status(output)  # raises UnavailableError where there is no job at all
        where = f" at step {state['step']}" if state.get("step") is not None else ""
        if state.get("total_steps"):
            where += f" of {state['total_steps']}"
        raise UnavailableError(
            f"{output}: the job is {state['state']}{where}, not completed; "
            "compare needs finished jobs (run or resume it first)"
        )
    uri = storage.join(output, outputs.VIDEO)
    path = _local_video(uri, workdir, k)
    stream_w, stream_h = _video_size(path, uri)
    width, height = stream_w, stream_h
    frame = summary.video.frame_size() if summary.video is not None else None
    if frame is not None:  # the job padded odd sizes to even for yuv420p: crop that back off
        w, h = frame
        if 0 <= stream_w - w <= 1 and 0 <= stream_h - h <= 1:
            width, height = w, h
    frames = summary.frames
    if frames is None or frames != int(frames) or frames < 1:
        try:
            frames = video.count_frames(path)
        except subprocess.CalledProcessError:
            frames = 0
        if frames < 1:
            raise UnavailableError(f"{uri}: has no frames; the output is damaged: rerun its job with --restart")
    return Input(output, summary, path, int(frames), width, height)


def default_fps(first: Input) -> float:
    fps = first.summary.video.fps if first.summary.video else None
    return fps if fps is not None and 0 < fps <= 1000 else DEFAULT_FPS


# ------------------------------------------------------------------ the ffmpeg processes


class _Watchdog:
    """Kills every ffmpeg of the comparison when nothing moved for STALL_SECONDS or a stop
    signal arrived: a blocked read or write then ends, and the main thread says why."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.stalled = False
        self._last = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="compare-watchdog", daemon=True)
        self._thread.start()

    def progress(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(0.5):
            if signals.requested() or time.monotonic() - self._last > STALL_SECONDS:
                self.stalled = not signals.requested()
                self.kill_all()
                return

    def kill_all(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.kill()

    def check(self) -> None:
        """Raise why the processes were killed, if they were."""
        stop = signals.requested()
        if stop:
            raise Interrupted(
                f"compare stopped by {stop} before the video was complete; nothing was written: run it again"
            )
        if self.stalled:
            raise TransientError(f"compare: ffmpeg made no progress for {STALL_SECONDS:.0f}s; gave up (run again)")

    def close(self) -> None:
        self._done.set()
        self.kill_all()  # those still running after a failure
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


class _Decoder:
    """One ffmpeg decoding an input's video into raw RGB tiles of (width, height) on its
    stdout, read one frame at a time, forward only."""

    def __init__(self, inp: Input, what: str, width: int, height: int, watchdog: _Watchdog):
        self.inp, self.what, self.width, self.height, self.watchdog = inp, what, width, height, watchdog
        self.frame_bytes = width * height * 3
        self.index, self.frame = -1, np.zeros((height, width, 3), np.uint8)  # frame_at's first call replaces it
        filters = f"format=rgb24,crop={inp.width}:{inp.height}:0:0"
        if (width, height) != (inp.width, inp.height):
            filters += f",scale={width}:{height}:flags={'area' if height < inp.height else 'bicubic'}"
        self._tail: collections.deque[str] = collections.deque(maxlen=20)
        self.proc = subprocess.Popen(
            [
                video.ffmpeg_exe(),
                "-nostdin",
                "-v",
                "error",
                "-i",
                video.input_url(inp.video_path),
                "-map",
                "0:v:0",
                "-vf",
                filters,
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        watchdog.procs.append(self.proc)
        self._reader = threading.Thread(target=self._read_stderr, name="ffmpeg-decoder-stderr", daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None  # Popen(stderr=PIPE)
        for line in self.proc.stderr:
            self._tail.append(line.decode(errors="replace").rstrip())

    def _read(self) -> bytes:
        assert self.proc.stdout is not None  # Popen(stdout=PIPE)
        data = self.proc.stdout.read(self.frame_bytes)
        self.watchdog.progress()
        return data

    def frame_at(self, index: int) -> np.ndarray:
        """Frame `index` (never one before the last asked for), as (height, width, 3) uint8."""
        while self.index < index:
            data = self._read()
            if len(data) < self.frame_bytes:
                self._failed(f"decodes to {self.index + 1} frames, its summary.json says {self.inp.frames}")
            self.frame = np.frombuffer(data, np.uint8).reshape(self.height, self.width, 3)
            self.index += 1
        return self.frame

    def finish(self) -> None:
        """After the last frame: the video must end there and ffmpeg exit 0."""
        extra = 0
        while len(self._read()) == self.frame_bytes:
            extra += 1
        if extra:
            self._failed(f"decodes to {self.index + 1 + extra} frames, its summary.json says {self.inp.frames}")
        self._wait_ok()

    def _wait_ok(self) -> None:
        try:
            returncode = self.proc.wait(timeout=video.FFMPEG_SECONDS)
        except subprocess.TimeoutExpired:
            raise TransientError(
                f"{self.what}: ffmpeg did not finish decoding within {video.FFMPEG_SECONDS:.0f}s"
            ) from None
        self._reader.join(timeout=5)
        self.watchdog.check()
        if returncode < 0:  # killed by someone else: another try may pass
            raise video.ffmpeg_failure(f"decoding {self.what}", returncode, "\n".join(self._tail))
        if returncode > 0:
            last = self._tail[-1] if self._tail else f"exit status {returncode}"
            raise UnavailableError(
                f"{self.what}: ffmpeg cannot decode it ({last}); the output is damaged: rerun its job with --restart"
            )

    def _failed(self, what: str):
        """The video ended early or ran long: say why (ffmpeg's failure first)."""
        self._wait_ok()
        raise UnavailableError(f"{self.what}: {what}; the output is damaged: rerun its job with --restart")


# ------------------------------------------------------------------ composing


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()  # the small bitmap font


def _fit(draw, text: str, font, width: int) -> str:
    """`text`, or its head and tail joined by "..." to fit `width` pixels: a label's
    last fields (the sweep's fastest-varying) tell tiles apart, so they must show."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text) - 1
    while keep > 0:
        head = (keep + 1) // 2
        cut = text[:head] + "..." + text[len(text) - (keep - head) :]
        if draw.textlength(cut, font=font) <= width:
            return cut
        keep -= 1
    return "..."


def base_canvas(layout: Layout, labels: list[tuple[str, str]]) -> np.ndarray:
    """The output frame without its tiles: the background and every label strip."""
    from PIL import Image, ImageDraw

    width, height = layout.size
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font(FONT_SIZE)
    line_height = (LABEL_HEIGHT - 4) // 2
    for k, lines in enumerate(labels):
        x, y, cell_width = layout.cell(k)
        draw.rectangle([x, y, x + cell_width - 1, y + LABEL_HEIGHT - 1], fill=STRIP)
        for i, line in enumerate(lines):
            draw.text((x + 4, y + 2 + i * line_height), _fit(draw, line, font, cell_width - 8), font=font, fill=TEXT)
    return np.array(image)


def _encoder(path: str, out: str, width: int, height: int, fps: float) -> video.Encoder:
    args = [
        "-y",
        "-f",
        "rawvideo",
        "-vcodec",
        "rawvideo",
        "-s",
        f"{width}x{height}",
        "-pix_fmt",
        "rgb24",
        "-r",
        str(Fraction(fps).limit_denominator(1001)),
        "-i",
        "-",
        "-an",
        "-vcodec",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-preset",
        PRESET,
        "-crf",
        str(CRF),
        "-movflags",
        "+faststart",
        "-v",
        "error",
        "-f",
        "mp4",
    ]
    return video.Encoder(args, path, f"{out} (being made in {path})")


def encode(inputs: list[Input], layout: Layout, n_out: int, fps: float, path: str, out: str) -> None:
    """Compose and encode the n_out frames into `path` (on its way to `out`); raises unless
    every ffmpeg exited 0 and every input decoded to its frame count."""
    canvas = base_canvas(layout, label_lines(inputs))
    watchdog = _Watchdog()
    try:
        decoders = [
            _Decoder(inp, storage.join(inp.output, outputs.VIDEO), layout.widths[k], layout.height, watchdog)
            for k, inp in enumerate(inputs)
        ]
        encoder = _encoder(path, out, *layout.size, fps)
        watchdog.procs.append(encoder.proc)
        places = [layout.tile(k) for k in range(len(inputs))]
        try:
            for j in range(n_out):
                for k, (dec, (x, y)) in enumerate(zip(decoders, places)):
                    tile = dec.frame_at(source_frame(j, n_out, dec.inp.frames))  # (height, widths[k], 3)
                    canvas[y : y + layout.height, x : x + layout.widths[k]] = tile
                encoder.write(canvas.data)  # the canvas's bytes, not a copy of them
                watchdog.progress()
            for dec in decoders:
                dec.finish()
            encoder.close()
        except TransientError:
            watchdog.check()  # a broken pipe because the watchdog killed ffmpeg: say why
            raise
        watchdog.check()
    finally:
        watchdog.close()


# ------------------------------------------------------------------ the command


def check_args(outputs_: list[str], out: str, frames: int | None) -> tuple[list[str], str]:
    """The command's locations, canonical; SpecError (exit 2) for bad usage."""
    if not MIN_INPUTS <= len(outputs_) <= MAX_INPUTS:
        raise SpecError(f"OUT: compare takes {MIN_INPUTS} to {MAX_INPUTS} job outputs, got {len(outputs_)}")
    try:
        locations = [storage.check_uri(o) for o in outputs_]
    except ValueError as exc:
        raise SpecError(f"OUT: {exc}") from None
    try:
        out = storage.check_uri(out, need_key=True)
    except ValueError as exc:
        raise SpecError(f"--output: {exc}") from None
    if not out.lower().endswith(".mp4") or out.rstrip("/").rsplit("/", 1)[-1].lower() == ".mp4":
        raise SpecError(f"--output: {out}: must name an .mp4 file, e.g. compare.mp4")
    if not storage.is_remote(out) and os.path.isdir(storage.local_path(out)):
        raise SpecError(f"--output: {out} is a folder; name the .mp4 file to write")
    for location in locations:
        if storage.contains(location, out) and _job_file(location, out):
            raise SpecError(f"--output: {out} would overwrite a file of the job at {location}; write elsewhere")
    if frames is not None and not 1 <= frames <= MAX_FRAMES:
        raise SpecError(f"--frames: must be 1 to {MAX_FRAMES}, got {frames}")
    return locations, out


def _job_file(location: str, out: str) -> bool:
    rel = storage.relative(location, out)
    return rel in outputs.JOB_FILES or rel.startswith("checkpoints/")


def compare(
    outputs_: list[str],
    out: str,
    height: int | None = None,
    frames: int | None = None,
    fps: float | None = None,
) -> tuple[int, int, int]:
    """Write the side-by-side video of the job outputs `outputs_` to `out`; returns (width, height, frames)."""
    locations, out = check_args(outputs_, out, frames)
    with _workdir(out) as workdir:
        inputs = [open_input(location, workdir, k) for k, location in enumerate(locations)]
        layout = plan_layout([(inp.width, inp.height) for inp in inputs], height)
        n_out = frames if frames is not None else max(inp.frames for inp in inputs)
        if n_out > MAX_FRAMES:
            raise SpecError(
                f"--frames: the inputs have up to {n_out} frames, more than {MAX_FRAMES}; choose fewer with --frames"
            )
        path = os.path.join(workdir, "compare.mp4")
        try:
            encode(inputs, layout, n_out, fps if fps is not None else default_fps(inputs[0]), path, out)
        except NodeLocalError as exc:  # ffmpeg met a full disk (video.py's words promise a resume)
            reason = "Disk quota exceeded" if "quota" in str(exc) else "No space left on device"
            raise NodeLocalError(
                f"{out}: ffmpeg: {reason} writing the video in {workdir}: disk or inodes full "
                "on this node; free space and run compare again"
            ) from None
        decoded = video.decoded_frames(path, out)
        if decoded != n_out:
            raise TransientError(
                f"{out}: ffmpeg exited 0 but the video decodes to {decoded} of {n_out} frames; "
                "nothing was written: run again"
            )
        _publish(path, out)
    return (*layout.size, n_out)


@contextlib.contextmanager
def _workdir(out: str) -> Iterator[str]:
    """A temporary folder for the video being made (and remote inputs): beside a local `out`,
    so publishing it is a rename and a full disk there stops ffmpeg, not the copy."""
    if storage.is_remote(out):
        with tempfile.TemporaryDirectory(prefix="imgfit-compare-") as folder:
            yield folder
        return
    with local_store.errors(out, "write"):
        parent = os.path.dirname(os.path.abspath(storage.local_path(out)))
        os.makedirs(parent, exist_ok=True)
        folder = tempfile.mkdtemp(prefix=".tmp-compare-", dir=parent)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _publish(path: str, out: str) -> None:
    """The checked video at `out`, whole or not at all."""
    if storage.is_remote(out):
        storage.upload_file(path, out)
        return
    with local_store.errors(out, "write"):
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(path, storage.local_path(out))
        local_store.fsync_dir(os.path.dirname(os.path.abspath(storage.local_path(out))))

"""Frames streamed into ffmpeg (H.264, yuv420p) as fixed-length segments.

Segment j holds frames [j*K, (j+1)*K). K depends only on the frame size, so
every run of a job cuts the video at the same frames, and a resumed job encodes
byte-identical segments: the frames of the open segment travel in the checkpoint
(raw) and are fed to its encoder again on resume. At the end the segments are
joined without re-encoding (ffmpeg's concat demuxer).

Encoding runs in a writer thread behind a bounded queue, so the trainer never
waits on the encoder unless the encoder falls a whole queue behind.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from typing import Callable, Optional

import numpy as np

SEGMENT_BYTES = 48 * 1024 * 1024  # raw bytes of the open segment a checkpoint may carry
MAX_SEGMENT_SECONDS = 10


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


class SegmentWriter:
    """Writes frames [start, ...) into segment files in `folder`.

    `pending` are the frames of the open segment already rendered before a
    resume; they are re-encoded first. `on_closed(j, path)` runs in the writer
    thread each time segment j is complete on disk.
    """

    def __init__(self, folder: str, width: int, height: int, channels: int, fps: int, crf: int, preset: str,
                 start_frame: int = 0, pending: Optional[np.ndarray] = None,
                 on_closed: Optional[Callable[[int, str], None]] = None, queue_size: int = 8):
        self.folder, self.width, self.height, self.channels = folder, width, height, channels
        self.fps, self.crf, self.preset = fps, crf, preset
        self.k = segment_frames(width, height, channels, fps)
        self.on_closed = on_closed
        os.makedirs(folder, exist_ok=True)
        pending = pending if pending is not None and len(pending) else np.zeros((0, height, width, channels), np.uint8)
        if start_frame % self.k != len(pending):
            raise ValueError(f"resume at frame {start_frame} needs {start_frame % self.k} open-segment frames, got {len(pending)}")
        self.frames = start_frame - len(pending)  # frames accepted (counting pending re-fed below)
        self._open: list[np.ndarray] = []  # frames of the open segment (for checkpoints)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: Optional[BaseException] = None
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
        self._queue.put(("frame", frame))

    def open_frames(self) -> np.ndarray:
        """Frames of the open segment, which a checkpoint must carry."""
        if not self._open:
            return np.zeros((0, self.height, self.width, self.channels), np.uint8)
        return np.stack([_host(f) for f in self._open])

    def sync(self) -> None:
        """Wait until every queued frame is encoded and every full segment closed."""
        done = threading.Event()
        self._queue.put(("sync", done))
        while not done.wait(0.5):
            self._raise_if_failed()
        self._raise_if_failed()

    def finish(self) -> None:
        """Close the last (partial) segment; the video is then complete."""
        self._stop("finish")
        self._raise_if_failed()

    def abandon(self) -> None:
        """Stop without closing the open segment (its frames live in the checkpoint)."""
        self._stop("abandon")

    def _stop(self, op: str) -> None:
        if self._thread.is_alive():
            self._queue.put((op, None))
            self._thread.join()

    def _raise_if_failed(self) -> None:
        from imgfit_batch.errors import ImgfitError

        if isinstance(self._error, ImgfitError):  # e.g. a segment upload that storage gave up on: its own code and line
            raise self._error
        if self._error is not None:
            raise RuntimeError(f"video encoder failed: {self._error}") from self._error

    # -- writer thread

    def _start_segment(self, j: int):
        import imageio_ffmpeg

        # unique per process: an orphaned encoder of a killed run may still be writing its own
        tmp = os.path.join(self.folder, f".tmp-{os.getpid()}-{segment_name(j)}")
        pad_w, pad_h = self.width + self.width % 2, self.height + self.height % 2
        params = ["-preset", self.preset, "-crf", str(self.crf), "-threads", "2", "-g", str(self.k)]
        if (pad_w, pad_h) != (self.width, self.height):
            params = ["-vf", f"pad={pad_w}:{pad_h}:0:0"] + params
        gen = imageio_ffmpeg.write_frames(
            tmp, (self.width, self.height), pix_fmt_in="gray" if self.channels == 1 else "rgb24",
            pix_fmt_out="yuv420p", fps=self.fps, quality=None, codec="libx264", macro_block_size=1,
            output_params=params, ffmpeg_log_level="error",
        )
        gen.send(None)
        return gen, tmp

    def _run(self) -> None:
        encoded = self.frames  # first frame index this thread will see
        gen = tmp = None
        try:
            while True:
                op, arg = self._queue.get()
                if op == "frame":
                    if gen is None:
                        gen, tmp = self._start_segment(encoded // self.k)
                    gen.send(np.ascontiguousarray(_host(arg)).tobytes())
                    encoded += 1
                    if encoded % self.k == 0:
                        gen.close()
                        j = encoded // self.k - 1
                        path = os.path.join(self.folder, segment_name(j))
                        os.replace(tmp, path)
                        gen = tmp = None
                        if self.on_closed:
                            self.on_closed(j, path)
                elif op == "sync":
                    arg.set()
                elif op == "finish":
                    if gen is not None:
                        gen.close()
                        j = encoded // self.k
                        path = os.path.join(self.folder, segment_name(j))
                        os.replace(tmp, path)
                        gen = None
                        if self.on_closed:
                            self.on_closed(j, path)
                    return
                elif op == "abandon":
                    if gen is not None:
                        gen.close()
                        os.unlink(tmp)
                    return
        except BaseException as exc:  # surfaced to the trainer on its next call
            self._error = exc
            while True:  # keep draining so the trainer never blocks on a full queue
                op, arg = self._queue.get()
                if op == "sync":
                    arg.set()
                if op in ("finish", "abandon"):
                    return


def _host(frame) -> np.ndarray:
    return frame if isinstance(frame, np.ndarray) else frame.cpu().numpy()


def num_segments(frames: int, k: int) -> int:
    return -(-frames // k)


def concat(segment_paths: list[str], out_path: str) -> None:
    """Join segments into one mp4 without re-encoding."""
    if len(segment_paths) == 1:
        with open(segment_paths[0], "rb") as src, open(out_path, "wb") as dst:
            dst.write(src.read())
        return
    listing = out_path + ".txt"
    with open(listing, "w") as fh:
        for p in segment_paths:
            fh.write("file '" + os.path.abspath(p).replace("'", "'\\''") + "'\n")
    try:
        subprocess.run(
            [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i", listing,
             "-c", "copy", "-movflags", "+faststart", out_path],
            check=True, capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"joining video segments failed: {exc.stderr.decode(errors='replace').strip()}") from None
    finally:
        os.unlink(listing)


def count_frames(path: str) -> int:
    """Decode the whole video and count its frames (what a viewer would see)."""
    proc = subprocess.run([ffmpeg_exe(), "-nostats", "-i", path, "-map", "0:v:0", "-f", "null", "-"],
                          capture_output=True, text=True, check=True)
    frames = [line for line in proc.stderr.splitlines() if line.startswith("frame=")]
    return int(frames[-1].split("frame=")[1].split()[0]) if frames else 0


def decode_frames(path: str, width: int, height: int, channels: int) -> np.ndarray:
    """All frames of a video as (n, h, w, c) uint8 (cropped back to the frame size)."""
    pad_w, pad_h = width + width % 2, height + height % 2
    pix = "gray" if channels == 1 else "rgb24"
    proc = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", pix, "-"],
                          capture_output=True, check=True)
    a = np.frombuffer(proc.stdout, np.uint8).reshape(-1, pad_h, pad_w, channels)
    return a[:, :height, :width]

"""Filming the training: a frame of the field every `video.every_n_steps` steps
(and after the last step), scored against the target at frame size, streamed into the
video's segments.

A frame smaller than the input is an image of the field at frame size, each pixel the
box-filtered average over the input pixels it covers (`render.render_image`), not a
point sample of it; it is scored against the target shrunk once with the same filter
(kept on the device), so every frame of any image is scored.

On CUDA a frame is drawn on its own stream from a copy of the averaged weights
(`FilmStream`): the training steps queued after it wait only for that copy, not for the
frame, its scores or its copy to pinned host memory, so filming overlaps training.

Closed segments are durable where the checkpoints live before a checkpoint that
counts on them is written: fsynced in OUTPUT/checkpoints/video/ on a local
output, uploaded there on a remote store (this module is the one place that decides). The
frames of the open segment travel in the checkpoint, so a resumed run re-encodes
exactly the same segment.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch

from imgfit_batch import storage, video
from imgfit_batch.checkpoint import made_by_job
from imgfit_batch.data import Pixels
from imgfit_batch.metrics import SSIM_EVERY_N_FRAMES, score
from imgfit_batch.rendering import box_shrink, frame_dtype, render_image
from imgfit_batch.spec import VideoSpec
from imgfit_batch.tensorboard_log import EventLog, should_log_frame


class Filmer:
    def __init__(self, cfg: VideoSpec, pixels: Pixels, device: torch.device, local_dir: str, segments_uri: str | None):
        self.cfg, self.pixels, self.device = cfg, pixels, device
        self.width, self.height = video.frame_size(pixels.width, pixels.height, cfg.max_side)
        self.dtype = frame_dtype(cfg.precision, device)  # bf16 where native: ~2x cheaper frames
        self.local_dir, self.segments_uri = local_dir, segments_uri  # segments_uri: on a remote store, else None
        self.frames = 0
        self._target: torch.Tensor | None = None  # the target at frame size (uint8, on the device)
        self.events: EventLog | None = None  # gets a few frames as images
        self._pending: np.ndarray | None = None  # open-segment frames from a checkpoint
        self._writer: video.SegmentWriter | None = None
        self._stream: FilmStream | None = None  # CUDA: where frames are drawn

    # ------------------------------------------------------------ filming

    def maybe_film(
        self, model: torch.nn.Module, step: int, last: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Film a frame if one is due after `step`; returns its (PSNR, SSIM against the target at
        frame size; SSIM on every SSIM_EVERY_N_FRAMES-th frame and the last, else None)."""
        every = self.cfg.every_n_steps
        assert every is not None  # the spec sets it, or derives it for the image (JobSpec.for_image)
        if step % every and not last:
            return None, None
        writer = self.writer
        self.frames += 1
        with_ssim = self.frames % SSIM_EVERY_N_FRAMES == 0 or last
        frame: torch.Tensor | HostFrame
        if self.device.type == "cuda":
            if self._stream is None:
                self._stream = FilmStream(self.device)
            frame, scores = self._stream.film(model, lambda m: self._draw(m, with_ssim))
        else:
            frame, scores = self._draw(model, with_ssim)
        writer.add(frame)  # a fresh tensor per frame; the writer thread copies it to the host
        if self.events is not None and should_log_frame(self.frames, last):
            self.events.frame(step, frame)
        return scores

    def _draw(self, model: torch.nn.Module, with_ssim: bool) -> tuple[torch.Tensor, tuple]:
        frame = render_image(
            model,
            self.pixels.width,
            self.pixels.height,
            self.width,
            self.height,
            self.device,
            autocast_dtype=self.dtype,
            filter=self.cfg.filter,
        )  # (h, w, C) uint8
        return frame, score(frame, self.target, with_ssim=with_ssim)

    @property
    def target(self) -> torch.Tensor:
        """The target as a frame shows it: the input, shrunk with the frames' box filter."""
        if self._target is None:
            self._target = box_shrink(self.pixels.image(), self.width, self.height)
        return self._target

    @property
    def writer(self) -> video.SegmentWriter:
        if self._writer is None:
            self._writer = video.SegmentWriter(
                os.path.join(self.local_dir, "video"),
                self.width,
                self.height,
                self.pixels.channels,
                self.cfg.fps,
                self.cfg.crf,
                self.cfg.preset,
                start_frame=self.frames,
                pending=self._pending,
                on_closed=self._persist,
            )
            self._pending = None
        return self._writer

    def _persist(self, j: int, path: str) -> None:
        """Writer thread: make a finished segment durable where the checkpoints live."""
        if self.segments_uri is not None:
            storage.upload_file(path, storage.join(self.segments_uri, video.segment_name(j)))
        else:
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Waits until every closed segment is durable: the checkpoint counts on them."""
        self.writer.sync()
        return {"frames": self.frames, "open_segment": torch.from_numpy(self.writer.open_frames())}

    def load_state_dict(self, state: dict) -> None:
        if self._writer is not None:
            raise RuntimeError("load_state_dict must come before the first frame")
        self.frames, self._pending = int(state["frames"]), state["open_segment"].numpy()

    # ------------------------------------------------------------ the end

    def abandon(self) -> None:
        """Stop encoding without closing the open segment (its frames live in the checkpoint)."""
        if self._writer is not None:
            self._writer.abandon()

    def finish(self, out_path: str) -> int:
        """Close the last segment and join all of them into `out_path`, which is then checked to
        decode to exactly `self.frames` frames (else it raises); returns the segment count."""
        self.writer.finish()
        paths = []
        for j in range(video.num_segments(self.frames, self.writer.k)):
            path = os.path.join(self.local_dir, "video", video.segment_name(j))
            if not os.path.exists(path):  # written by an earlier run on another machine
                assert self.segments_uri is not None  # a local output keeps every segment in local_dir
                storage.download_file(
                    storage.join(self.segments_uri, video.segment_name(j)), path, what="video segment"
                )
            paths.append(path)
        if paths:
            video.concat(paths, out_path, self.frames)
        return len(paths)

    def delete_segments(self) -> None:
        """Once video.mp4 is published the segments are no longer needed."""
        if self.segments_uri is not None:
            for j in range(video.num_segments(self.frames, self.writer.k)):
                storage.delete(storage.join(self.segments_uri, video.segment_name(j)))
        storage.discard_local(os.path.join(self.local_dir, "video"), lambda name: made_by_job(f"video/{name}"))


class FilmStream:
    """CUDA: frames drawn on a side stream, overlapping the training steps queued after them.

    Each frame first copies the weights into a model of its own on the side stream (after
    the step that wrote them); the main stream waits for that copy alone before its next
    step may change them. The frame is then drawn, scored and copied to pinned host memory
    on the side stream. Readers of its results wait for the side stream: the writer thread
    on the frame's event (`HostFrame.cpu`), the loss log's one host sync on the whole device
    (`losslog.LossLog.flush`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.copy: torch.nn.Module | None = None

    def film(self, model: torch.nn.Module, draw) -> tuple[HostFrame, tuple]:
        main = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(main)  # the weights this frame shows are written
        with torch.cuda.stream(self.stream):
            if self.copy is None:
                self.copy = copy.deepcopy(model)
            else:  # the previous frame's reads of the copy were queued before this, on the same stream
                with torch.no_grad():
                    torch._foreach_copy_(list(self.copy.state_dict().values()), list(model.state_dict().values()))
            copied = torch.cuda.Event()
            copied.record(self.stream)
            frame, scores = draw(self.copy)
            host = HostFrame(frame, self.stream)
        main.wait_event(copied)  # the next step may now change the weights
        return host, scores


class HostFrame:
    """A frame on its way to pinned host memory on the film stream; `cpu()` waits for it."""

    def __init__(self, frame: torch.Tensor, stream: torch.cuda.Stream):
        self.shape = frame.shape
        self._host = torch.empty(frame.shape, dtype=frame.dtype, pin_memory=True)
        self._host.copy_(frame, non_blocking=True)
        self._done = torch.cuda.Event()
        self._done.record(stream)

    def cpu(self) -> torch.Tensor:
        self._done.synchronize()
        return self._host

"""Every file a job, a study or a report writes, by name, and the JSON ones as types.

The names below are the only place an output file is named. The JSON files are
pydantic models: the job writes them through these models and every reader (status,
report, compare, render, a rerun) reads them through the same ones, so a renamed or
retyped field is one change here, seen by mypy at every use.

Reading is lenient, field by field: these files may be hand-edited, truncated or
foreign, and a field of the wrong type reads as None (absent) rather than failing
the whole file; keys this version does not know are kept. What is not lenient is the
file's `format`: a summary.json or spec.json written in another format (a newer or an
older imgfit-batch) is refused with one line (`OutputFormatError`, exit 3). Files from
before the format was recorded are format 1: their keys are the same.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from imgfit_batch import storage
from imgfit_batch.errors import UnavailableError

if TYPE_CHECKING:  # the binary files' writers import them when called: readers of the JSON need neither
    import numpy as np
    import torch

    from imgfit_batch.train import Parts

# ---------------------------------------------------------------- the files

SUMMARY = "summary.json"  # a completed job's result (Summary)
SPEC = "spec.json"  # what the newest run of a job ran with (JobRecord); rewritten by every run
VIDEO = "video.mp4"
LOSS = "loss.csv"
FINAL = "final.png"
MODEL = "model.pt"  # the weights and what rebuilds them (model_bytes)
PROGRESS = "progress.png"
CHECKPOINTS = "checkpoints"  # folder: checkpoints, their markers (Marker), video segments, loss-log chunks
TENSORBOARD = "tensorboard"  # folder: event files (imgfit_batch.tensorboard_log)
LEASE = ".imgfit-lease.json"  # who is running the job now (LeaseRecord)
RESULTS = "results.csv"  # report: one row a task
INDEX = "index.html"  # report: the page

# What a job writes at its output location (besides checkpoints/); --restart deletes these and nothing else.
JOB_FILES = (SUMMARY, VIDEO, LOSS, FINAL, MODEL, SPEC, PROGRESS)

MODEL_FORMAT = "imgfit-batch/model/1"
JSON_FORMAT = 1  # summary.json and spec.json; a change a reader of the old keys would misread bumps it

# ---------------------------------------------------------------- lenient field types


# The largest integer a lenient field reads: every count and size this tool writes is far
# below it, and any int up to it converts to a float (a 400-digit one would raise OverflowError).
MAX_WHOLE = 1 << 53


def _finite(value: Any) -> Any:
    """A number (not a bool, not NaN or infinite, not an int past MAX_WHOLE), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return value if -MAX_WHOLE <= value <= MAX_WHOLE else None
    return value if math.isfinite(value) else None


def _whole(value: Any) -> Any:
    return value if isinstance(value, int) and _finite(value) is not None else None


def whole(value: Any) -> int | None:
    """`value` as a lenient whole-number field reads it: an int within MAX_WHOLE, else None."""
    return _whole(value)


def _of(kind: type | tuple[type, ...]) -> Any:
    return lambda value: value if isinstance(value, kind) else None


Number = Annotated[int | float | None, BeforeValidator(_finite)]
Whole = Annotated[int | None, BeforeValidator(_whole)]
Text = Annotated[str | None, BeforeValidator(_of(str))]
Mapping = Annotated[dict[str, Any] | None, BeforeValidator(_of(dict))]
Flag = Annotated[bool, BeforeValidator(lambda value: value is True)]


class Record(BaseModel):
    """A JSON object this tool writes: unknown keys kept, so a reader passes them on."""

    model_config = ConfigDict(extra="allow")

    def to_bytes(self) -> bytes:
        return json_bytes(self.model_dump(mode="json"))


class TaskRecord(Record):
    """The task of a list or sweep spec (imgfit_batch.study.Task.record), in summary.json and spec.json."""

    index: Whole = None
    count: Whole = None
    image: Text = None
    label: Text = None
    overrides: Annotated[dict[str, Any], BeforeValidator(lambda v: v if isinstance(v, dict) else {})] = {}


Task = Annotated[TaskRecord | None, BeforeValidator(_of((dict, TaskRecord)))]


class VideoRecord(Record):
    """summary.json's `video`: what video.mp4 is. H.264 in yuv420p needs even sizes, so an
    odd-sized frame is padded on the right and bottom: width and height are the stream's
    (what a player or ffprobe sees), frame_width and frame_height the picture in its top-left
    corner (the rest is padding). Records from before the frame's size was kept have only
    width and height, and those were the frame's."""

    width: Number = None
    height: Number = None
    frame_width: Number = None
    frame_height: Number = None
    fps: Number = None
    segments: Number = None

    @classmethod
    def of_frames(cls, width: int, height: int, fps: Any, segments: Any) -> VideoRecord:
        return cls(
            width=width + width % 2,
            height=height + height % 2,
            frame_width=width,
            frame_height=height,
            fps=fps,
            segments=segments,
        )

    def frame_size(self) -> tuple[int, int] | None:
        """The picture's size inside the stream, from either kind of record; None when unknown."""
        w = self.frame_width if self.frame_width is not None else self.width
        h = self.frame_height if self.frame_height is not None else self.height
        return None if w is None or h is None else (int(w), int(h))


class Summary(Record):
    """summary.json: a completed job, as the README's "Outputs" table documents it."""

    status: Text = None
    steps: Number = None
    epochs: Number = None
    frames: Number = None
    psnr_db: Number = None  # null when exact (JSON has no infinity)
    exact: Flag = False  # final.png equals the input, pixel for pixel
    ssim: Number = None
    final_loss: Number = None
    wall_seconds: Number = None
    train_seconds: Number = None
    step: Mapping = None  # {graphed, capture_failed}
    film_wait_seconds: Number = None
    checkpoint_wait_seconds: Number = None
    tensorboard_seconds: Number = None  # null: log.tensorboard off
    resumes: Number = None
    device: Text = None
    peak_memory_mb: Mapping = None
    stopped_by: Text = None
    image: Text = None
    width: Number = None
    height: Number = None
    color: Text = None
    model: Text = None
    parameters: Number = None  # the model's size: its learned parameters (model.pt holds them at fp32)
    bits_per_pixel: Number = None  # parameters x 32 bits / the image's pixels: the rate at fp32
    derived: Mapping = None
    recipe: Mapping = None
    task: Task = None
    planned_steps: Number = None
    video: Annotated[VideoRecord | None, BeforeValidator(_of((dict, VideoRecord)))] = None
    files: Mapping = None  # {name: bytes} of each file published with it (imgfit_batch.completion)
    version: Text = None
    format: int = JSON_FORMAT

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @classmethod
    def from_run(cls, parts: Parts, run: RunFacts) -> Summary:
        """A completed job's summary: from the training parts, and the run's own facts."""
        budget, log, filmer = parts.budget, parts.log, parts.filmer
        return cls(
            status="completed",
            steps=budget.step,
            epochs=parts.sampler.epochs_done,
            frames=filmer.frames,
            psnr_db=round(run.psnr, 4) if run.psnr != float("inf") else None,  # JSON has no infinity
            exact=run.psnr == float("inf"),  # final.png equals the input, pixel for pixel
            ssim=round(run.ssim, 5),
            final_loss=log.last_loss,
            wall_seconds=round(run.wall_seconds, 3),
            train_seconds=round(budget.train_seconds, 3),
            # of train_seconds, the loop's wait on filming (render, score, hand-over to the encoder)
            # and on periodic checkpoints (snapshot, and a previous write still in flight)
            # on CUDA the step is one CUDA graph (imgfit_batch.graphed) unless capture failed
            step={
                "graphed": bool(getattr(parts.step_fn, "graphed", False)),
                "capture_failed": getattr(parts.step_fn, "failed", None),
            },
            film_wait_seconds=round(budget.waited["film"], 3),
            checkpoint_wait_seconds=round(budget.waited["checkpoint"], 3),
            # this run's time writing TensorBoard events (null: log.tensorboard off)
            tensorboard_seconds=None if log.events is None else round(log.events.seconds, 3),
            resumes=run.resumes,
            device=run.device,
            peak_memory_mb=run.peak_memory_mb,
            stopped_by=run.stopped_by,
            image=run.image,
            width=run.width,
            height=run.height,
            color=parts.cfg.color,
            model=run.model,
            parameters=(size := model_size(parts.model, run.width * run.height))[0],
            bits_per_pixel=size[1],
            derived=run.derived,  # spec values that followed the image's size (and the device's speed)
            recipe=run.recipe,  # what decided them: the image, a calibration on the device, or the checkpoint
            task=run.task,  # index, count, image, label, overrides (null: a lone image)
            planned_steps=budget.total_steps if budget.planned else None,
            video=VideoRecord.of_frames(filmer.width, filmer.height, filmer.cfg.fps, run.segments),
            files=run.files,  # what proves the job complete with spec.json (imgfit_batch.completion)
            version=run.version,
        )


def model_size(model: Any, pixels: int) -> tuple[int, float]:
    """A model's size: its learned parameters, and the bits per pixel of the image they take
    at fp32 (as model.pt holds them): the rate that a fit's PSNR is read against."""
    parameters = sum(p.numel() for p in model.parameters())
    return parameters, round(32 * parameters / max(pixels, 1), 4)


@dataclass
class RunFacts:
    """What a summary takes from the run rather than from the training parts."""

    image: str
    width: int
    height: int
    model: str  # the model's kind
    device: str  # its name
    peak_memory_mb: dict | None
    derived: dict
    recipe: dict
    task: dict | None
    resumes: int
    wall_seconds: float
    stopped_by: str
    psnr: float  # of final.png against the input (inf: exact)
    ssim: float
    segments: int  # the video's segments (0: no video)
    files: dict[str, int]  # {name: bytes} of the files published with the summary
    version: str


class JobRecord(Record):
    """spec.json: the resolved spec the newest run trains with, and what it was derived from."""

    spec: Mapping = None
    derived: Mapping = None
    recipe: Mapping = None
    image: Text = None
    task: Task = None
    result_fields: Mapping = None
    fingerprint: Text = None
    width: Number = None
    height: Number = None
    device: Text = None
    format: int = JSON_FORMAT


class Marker(Record):
    """A checkpoint's marker (checkpoints/ckpt-*.json): it counts the checkpoint once its
    data is whole (bytes, sha256), and carries what `status` shows without loading it."""

    step: Whole = None
    bytes: Whole = None
    sha256: Text = None
    created: Number = None
    total_steps: Number = None
    epoch: Number = None
    frames: Number = None
    loss: Number = None
    psnr_db: Number = None
    resumes: Number = None
    train_seconds: Number = None
    reason: Text = None
    recipe: Mapping = None


class LeaseRecord(BaseModel):
    """The lease (LEASE): strict, since a malformed one is taken over (imgfit_batch.lease.Lease)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    id: str
    host: str
    pid: Annotated[int, BeforeValidator(lambda v: v if isinstance(v, int) and abs(v) < 1 << 31 else None)]
    beat: Annotated[float, BeforeValidator(lambda v: float(v) if _finite(v) is not None else None)]


class OutputFormatError(UnavailableError):
    """A summary.json or spec.json in a format this version does not read."""


JSON_MAX_BYTES = 4 << 20  # summary.json, spec.json and markers are a few KB; more is not ours


def _json_kind(value: Any) -> str:
    """What a JSON value is, in a user's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    return "a number"


def _check_format(obj: dict, uri: str) -> None:
    """Raise OutputFormatError unless the file's `format` is JSON_FORMAT (absent: format 1)."""
    fmt = obj.get("format", JSON_FORMAT)  # files from before the format was recorded are format 1
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt == JSON_FORMAT:
        return
    if isinstance(fmt, bool) or not isinstance(fmt, (int, float)):
        shown = json.dumps(fmt)[:40] + " " if isinstance(fmt, (str, bool)) or fmt is None else ""
        raise OutputFormatError(
            f'{uri}: its "format" is {shown}({_json_kind(fmt)} where a number belongs: this imgfit-batch '
            f'reads output format {JSON_FORMAT}, written {{"format": {JSON_FORMAT}}}); the file was edited '
            "or not written by imgfit-batch: restore it, or rerun the job with --restart"
        )
    version = obj.get("version")
    by = f"imgfit-batch {version[:40]}" if isinstance(version, str) else "another imgfit-batch"
    shown = str(fmt) if isinstance(fmt, int) and _finite(fmt) is not None else json.dumps(fmt)[:40]
    raise OutputFormatError(
        f"{uri}: written by {by} in output format {shown}, and this imgfit-batch reads format "
        f"{JSON_FORMAT}; read it with the version that wrote it, or rerun the job with --restart"
    )


def parse(kind: type[Record], raw: bytes, uri: str) -> Any:
    """`raw` as a `kind` (Summary, JobRecord, Marker), or None when it is not a JSON object
    (garbage, a list, not UTF-8, nested past the parser's depth). Never raises for a
    value inside it: a field of the wrong type or out of range reads as absent. Raises
    OutputFormatError for another format (or a `format` that is not a number)."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; so is an int of 4300+ digits
        return None
    if not isinstance(obj, dict):
        return None
    if "format" in kind.model_fields:
        _check_format(obj, uri)
    try:
        return kind.model_validate(obj)
    except (ValidationError, RecursionError):  # every field reads leniently: nothing else can fail
        return None


def load(kind: type[Record], uri: str) -> tuple[Any, str | None]:
    """(the record, what is wrong with the file): (None, None) when there is none; (None, why)
    when something is there but not a JSON object this tool wrote (garbage, a list, too large,
    a folder, a FIFO, unreadable). Reads at most JSON_MAX_BYTES. Raises OutputFormatError for
    another format, and the store's errors other than "not there" or "not a file"."""
    foreign = f"{uri}: not a {uri.rsplit('/', 1)[-1]} this tool wrote"
    try:
        raw = storage.read_bytes(uri, max_bytes=JSON_MAX_BYTES)
    except storage.LinkOutside:
        raise
    except UnavailableError as exc:  # not there (or gone since a listing), or there and not a readable file
        if not storage.exists(uri):
            return None, None
        return None, f"{foreign} ({str(exc).removeprefix(uri + ': ')[:200]})"
    if len(raw) > JSON_MAX_BYTES:
        return None, f"{foreign} (over {JSON_MAX_BYTES >> 20} MiB)"
    record = parse(kind, raw, uri)
    return record, None if record is not None else foreign


def read(kind: type[Record], uri: str, warn: Callable[[str], None] | None = None) -> Any:
    """The `kind` at `uri`, or None when absent or not a JSON object this tool wrote (then
    `warn` hears what is there instead). See `load`."""
    record, wrong = load(kind, uri)
    if wrong and warn is not None:
        warn(f"{wrong}; reading it as absent")
    return record


LEASE_MAX_BYTES = 1 << 16  # a lease is ~150 bytes


def parse_lease(raw: bytes) -> LeaseRecord | None:
    """A lease this tool wrote, else None (whatever the bytes hold)."""
    if len(raw) > LEASE_MAX_BYTES:
        return None
    try:
        return LeaseRecord.model_validate_json(raw)
    except (ValidationError, ValueError, RecursionError):
        return None


# ---------------------------------------------------------------- the binary files


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    img = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels, "L" if pixels.shape[2] == 1 else "RGB")
    buf = io.BytesIO()
    # zlib's fastest level for huge images: a gigapixel final.png encodes in seconds, not minutes (lossless either way)
    img.save(buf, format="PNG", **({"compress_level": 1} if pixels.size > FAST_PNG_VALUES else {}))
    return buf.getvalue()


FAST_PNG_VALUES = 1 << 27  # 134 M values: a 45 MP RGB image


def model_bytes(model: torch.nn.Module, model_spec: dict, color: str, width: int, height: int) -> bytes:
    """model.pt: the state_dict plus what is needed to rebuild and render it; readable
    with torch.load(path, weights_only=True)."""
    import torch

    buf = io.BytesIO()
    torch.save(
        {
            "format": MODEL_FORMAT,
            "model": model_spec,
            "color": color,
            "out_features": 1 if color == "gray" else 3,
            "width": width,
            "height": height,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        buf,
    )
    return buf.getvalue()


def json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()

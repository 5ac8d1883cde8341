"""Checkpoints under OUTPUT/checkpoints/ (the lease that keeps two runs from
sharing one output is imgfit_batch.lease).

A checkpoint is `ckpt-<step>.pt` (torch.save of tensors and plain values only)
plus `ckpt-<step>.json`, its marker, written last: it holds the data file's
size and SHA-256. Only checkpoints whose marker exists and matches count, and
they are read with `torch.load(weights_only=True)` so nothing beyond tensors
and plain containers is ever unpickled. The newest `keep` are kept; older ones
are deleted only after a newer one is complete.

Writes happen in the background and may fail on a storage fault: a periodic
checkpoint that fails transiently is a warning (the previous one still counts,
training goes on, the next step tries again); one that must succeed (on a stop
signal, at the end) ends the job retryably. A marker that is foreign, garbled,
or whose data file is gone is skipped like a corrupt checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from imgfit_batch import outputs, signals, storage
from imgfit_batch.errors import NodeLocalError, SpecError, TransientError, UnavailableError
from imgfit_batch.spec import changed_fields

# A checkpoint records its format, and resume reads only its own: another version's is
# refused with one line (exit 3). Within a format, a training part added later resumes an
# older checkpoint from the part's documented default, or the resume is refused
# (train.Parts.load_state_dict).
FORMAT_FAMILY = "imgfit-batch/checkpoint/"
FORMAT = FORMAT_FAMILY + "2"  # /2: the union of the training parts' states


@dataclass
class Loaded:
    state: dict[str, Any]
    name: str
    skipped: list[str]  # newer checkpoints that were unusable, with why


# What a job writes under OUTPUT/checkpoints/, by name: checkpoints and their markers,
# the video's closed segments (video.segment_name), the loss log's sealed chunks
# (losslog.chunk_name), and the temp files of interrupted writes. --restart and the
# end-of-job cleanups delete these and nothing else.
_MADE_BY_JOB = re.compile(r"ckpt-\d+\.(pt|json)|video/seg-\d+\.mp4|log/loss-\d+\.csv|((video|log)/)?\.tmp-[^/]*")


def made_by_job(name: str) -> bool:
    """Whether `name` (relative to OUTPUT/checkpoints/) is a file the job made."""
    return _MADE_BY_JOB.fullmatch(name) is not None


def _data_name(step: int) -> str:
    return f"ckpt-{step:010d}.pt"


def _marker_name(step: int) -> str:
    return f"ckpt-{step:010d}.json"


class CheckpointStore:
    """Where checkpoints live: the newest complete one (`load`), writing one with its marker
    last (`save`, `save_in_background`), keeping the newest `keep` (at least 2: the newest
    may be the one being written)."""

    def __init__(self, folder: str, keep: int, warn: Callable[[str], None]):
        self.folder, self.keep, self.warn = folder, keep, warn
        self._thread: threading.Thread | None = None  # the background write in flight
        self._error: BaseException | None = None  # its failure

    def _steps(self, names: list[str] | None = None) -> list[int]:
        steps = []
        for name in storage.list_names(self.folder) if names is None else names:
            if name.startswith("ckpt-") and name.endswith(".json"):
                try:
                    steps.append(int(name[5:-5]))
                except ValueError:
                    pass
        return sorted(steps)

    def load(self) -> Loaded | None:
        """The newest complete, readable checkpoint; unusable newer ones are reported and skipped."""
        skipped = []
        steps = self._steps()
        for step in reversed(steps):
            name = _data_name(step)
            try:
                state = self._read(step)
            except (UnavailableError, TransientError):  # the marker cannot be read, or storage is having trouble
                raise
            except Exception as exc:  # corrupt, truncated, tampered with, data file gone: fall back
                reason = f"{name}: {exc}"
                skipped.append(reason)
                self.warn(f"checkpoint {storage.join(self.folder, name)} is unusable ({exc}); trying the previous one")
                continue
            return Loaded(state, name, skipped)
        if steps:
            raise UnavailableError(
                f"{self.folder}: no usable checkpoint ({'; '.join(skipped)}); rerun with --restart to start over"
            )
        return None

    def _read(self, step: int) -> dict:
        uri = storage.join(self.folder, _marker_name(step))
        marker: outputs.Marker | None = outputs.parse(
            outputs.Marker, storage.read_bytes(uri, what="checkpoint marker"), uri
        )
        if marker is None or marker.bytes is None or marker.sha256 is None:
            raise ValueError("its marker is not an imgfit-batch checkpoint marker")
        try:
            data = storage.read_bytes(storage.join(self.folder, _data_name(step)), what="checkpoint")
        except storage.LinkOutside:
            raise
        except UnavailableError as exc:  # missing or unreadable: the older checkpoint may still do
            raise ValueError(f"its data file cannot be read ({exc})") from None
        if len(data) != marker.bytes:
            raise ValueError(f"truncated: {len(data)} bytes, marker says {marker.bytes}")
        if hashlib.sha256(data).hexdigest() != marker.sha256:
            raise ValueError("contents do not match the marker's SHA-256")
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"refused to load: {str(exc).splitlines()[0][:200]}") from None
        fmt = state.get("format") if isinstance(state, dict) else None
        if isinstance(fmt, str) and fmt.startswith(FORMAT_FAMILY) and fmt != FORMAT:
            # every checkpoint of this job has that format: falling back would not help
            raise UnavailableError(
                f"{storage.join(self.folder, _data_name(step))}: a checkpoint of format {fmt[:60]!r}, and this "
                f"imgfit-batch reads {FORMAT!r}; resume with the imgfit-batch version that wrote it, or rerun with "
                "--restart to start over"
            )
        if fmt != FORMAT:
            raise ValueError("not an imgfit-batch checkpoint")
        return state

    def save(self, state: dict[str, Any], summary: dict | None = None) -> tuple[str, int]:
        """Write data then marker; prune old ones. Returns (name, bytes).
        `summary` (plain values) goes into the marker, for `status` to read cheaply."""
        step = int(state["parts"]["budget"]["step"])
        buf = io.BytesIO()
        torch.save({"format": FORMAT, **state}, buf)
        data = buf.getvalue()
        storage.write_bytes(storage.join(self.folder, _data_name(step)), data)
        marker = outputs.Marker(
            step=step, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), created=time.time(), **(summary or {})
        )
        storage.write_bytes(storage.join(self.folder, _marker_name(step)), marker.model_dump_json().encode())
        self._prune()
        return _data_name(step), len(data)

    def save_in_background(
        self,
        state: dict[str, Any],
        summary: dict | None = None,
        done: Callable[[str, int, float], None] | None = None,
    ) -> None:
        """Snapshot `state` to host memory now, serialise and write it in a thread.

        Never two in flight: waits for the previous one first. `done(name, bytes,
        seconds)` runs in the thread once the marker is written.
        """
        self.wait()
        snapshot = _to_host(state)
        t0 = time.monotonic()

        def write() -> None:
            try:
                name, size = self.save(snapshot, summary)
                if done:
                    done(name, size, time.monotonic() - t0)
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=write, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the checkpoint being written (if any) is complete; re-raise its failure."""
        error = self.join()
        if error is not None:
            raise error

    def join(self) -> BaseException | None:
        """Block until the checkpoint being written (if any) is complete; its failure, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        return error

    def failed(self) -> bool:
        """The background write has ended, in failure (without waiting)."""
        return self._thread is not None and not self._thread.is_alive() and self._error is not None

    def _prune(self) -> None:
        names = storage.list_names(self.folder)
        steps = self._steps(names)
        for step in steps[: -self.keep]:
            storage.delete(storage.join(self.folder, _marker_name(step)))  # uncount it first
            storage.delete(storage.join(self.folder, _data_name(step)))
        for step in _orphans(names, steps):
            storage.delete(storage.join(self.folder, _data_name(step)))

    def latest_marker(self) -> outputs.Marker | None:
        steps = self._steps()
        if not steps:
            return None
        uri = storage.join(self.folder, _marker_name(steps[-1]))
        try:
            marker: outputs.Marker | None = outputs.parse(outputs.Marker, storage.read_bytes(uri), uri)
        except storage.LinkOutside:  # not this job's to read (status refuses it)
            raise
        except Exception:
            return None
        return marker


class CheckpointPolicy:
    """When a checkpoint is due, and whether one may be resumed.

    A checkpoint holds the training parts' states (`parts.state_dict()`) and the
    job's own fields (`job_state()`: resumes, wall time, ...), plus the spec fields
    that change the result: resuming under a different spec is refused, naming
    the fields. Its marker carries what `status` shows (`parts.marker()`). Saves are
    snapshotted in the caller's thread and written in the background (by the store),
    never two in flight.
    """

    def __init__(
        self,
        store: CheckpointStore,
        every_n_steps: int | None,
        every_seconds: float | None,
        result_fields: dict,
        job_state: Callable[[], dict],
        event: Callable[..., None],
    ):
        self.store, self.every_n_steps, self.every_seconds = store, every_n_steps, every_seconds
        self.folder, self.warn = store.folder, store.warn
        self.result_fields, self.job_state, self.event = result_fields, job_state, event
        self.last_step = -1  # the newest checkpoint's step, once its write is on its way
        self._saved_step: int | None = None  # the newest one known complete (None: none yet)
        self._writing: tuple[int, str] | None = None  # (step, reason) of the write in flight
        self._last_time = time.monotonic()

    def resume(self, loaded: Loaded | None) -> tuple[str, dict] | None:
        """The (name, state) of `loaded` (what the store read, once, before anything was built),
        or None to start fresh. Refused when it was made under a spec whose result fields differ."""
        if loaded is None:
            return None
        changed = changed_fields(json.loads(loaded.state["result_fields"]), self.result_fields)
        if changed:
            raise SpecError(
                f"{self.folder.rsplit('/checkpoints', 1)[0]} holds a job made with a different spec (changed: "
                f"{', '.join(changed)}); "
                "restore those fields, use another output, or --restart to discard its progress"
            )
        self.last_step = self._saved_step = int(loaded.state["parts"]["budget"]["step"])
        return loaded.name, loaded.state

    def due(self, step: int) -> bool:
        by_steps = self.every_n_steps is not None and step % self.every_n_steps == 0
        by_time = self.every_seconds is not None and time.monotonic() - self._last_time >= self.every_seconds
        return by_steps or by_time or self.store.failed()  # a failed write: try again now

    def save(self, parts: Any, reason: str, wait: bool = False) -> None:
        """Snapshot now, write in the background; `wait`: return once it is complete
        (this one must succeed: its failure raises)."""
        self._settle(must_succeed=False)
        t0 = time.monotonic()
        step = parts.budget.step
        state = {
            "parts": parts.state_dict(),
            "result_fields": json.dumps(self.result_fields, sort_keys=True),
            **self.job_state(),
        }
        marker = {  # read before the parts are built (status, a resume's recipe)
            **parts.marker(),
            "resumes": state.get("resumes"),
            "reason": reason,
            **({"recipe": state["recipe"]} if state.get("recipe") else {}),
        }
        paused = time.monotonic() - t0

        def done(name: str, size: int, seconds: float) -> None:
            signals.checkpoint_saved()
            self.event(
                "checkpoint",
                f"saved {name} ({size / 1e6:.1f} MB, {reason}): training paused {paused:.2f}s, "
                f"written in {seconds:.2f}s",
                step=step,
                checkpoint=name,
                bytes=size,
                reason=reason,
                paused_seconds=round(paused, 3),
                write_seconds=round(seconds, 3),
            )

        self.store.save_in_background(state, marker, done)
        self.last_step, self._last_time, self._writing = step, time.monotonic(), (step, reason)
        if wait:
            self.wait()

    def wait(self) -> None:
        """Block until the checkpoint being written is complete; its failure raises."""
        self._settle(must_succeed=True)

    def _settle(self, must_succeed: bool) -> None:
        """Wait for the write in flight. A transient failure of a periodic checkpoint (the
        store throttling or unreachable) is a warning: the previous one still counts and
        the next step tries again. A full disk on this node ends the job (69)."""
        error = self.store.join()
        writing, self._writing = self._writing, None
        if writing is not None and error is None:
            self._saved_step = writing[0]
        if error is None:
            return
        self.last_step = -1 if self._saved_step is None else self._saved_step
        step, reason = writing if writing is not None else (None, "")
        if not isinstance(error, TransientError) or isinstance(error, NodeLocalError):
            raise error  # a full disk will not have room at the next step either: stop now, retryably
        detail = getattr(error, "detail", str(error))
        if must_succeed:
            rerun = (
                "it starts over"
                if self._saved_step is None
                else f"it resumes from the checkpoint at step {self._saved_step}"
            )
            raise TransientError(
                f"the checkpoint at step {step} ({reason}) was not saved: {detail}; a transient fault "
                f"of the store or the network: run the job again, {rerun}"
            ) from None
        kept = (
            "none was saved before it"
            if self._saved_step is None
            else f"the one at step {self._saved_step} still counts"
        )
        self.warn(f"checkpoint at step {step} was not saved: {detail}; {kept}, and the next step checkpoints again")


def _orphans(names: list[str], steps: list[int]) -> list[int]:
    """Steps of data files without a marker, older than the newest checkpoint: writes
    that failed before their marker (a newer checkpoint is complete, so none is in flight)."""
    orphans = []
    for name in names:
        digits = name[len("ckpt-") : -len(".pt")]
        if (
            digits.isdigit()
            and name == _data_name(int(digits))
            and steps
            and int(digits) < steps[-1]
            and _marker_name(int(digits)) not in names
        ):
            orphans.append(int(digits))
    return orphans


def _to_host(obj: Any) -> Any:
    """A deep copy with every tensor cloned to the CPU (the live ones keep training)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_host(v) for v in obj)
    return obj

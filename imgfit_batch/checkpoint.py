"""Checkpoints under OUTPUT/checkpoints/, and the lease that keeps two runs
from sharing one output.

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
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from imgfit_batch import outputs, signals, storage
from imgfit_batch.errors import Busy, Interrupted, NodeLocalError, SpecError, TransientError, UnavailableError
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


class CheckpointManager:
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


class Checkpointer:
    """When a checkpoint is due, what goes in it, and whether one may be resumed.

    A checkpoint holds the training parts' states (`parts.state_dict()`) and the
    job's own fields (`job_state()`: resumes, wall time, ...), plus the spec fields
    that change the result: resuming under a different spec is refused, naming
    the fields. Saves are snapshotted in the caller's thread and written in the
    background, never two in flight.
    """

    def __init__(
        self,
        folder: str,
        every_n_steps: int | None,
        every_seconds: float | None,
        keep: int,
        result_fields: dict,
        job_state: Callable[[], dict],
        event: Callable[..., None],
        warn: Callable[[str], None],
    ):
        self.folder, self.every_n_steps, self.every_seconds = folder, every_n_steps, every_seconds
        self.result_fields, self.job_state, self.event = result_fields, job_state, event
        self.manager = CheckpointManager(folder, keep, warn)
        self.warn = warn
        self.last_step = -1  # the newest checkpoint's step, once its write is on its way
        self._saved_step: int | None = None  # the newest one known complete (None: none yet)
        self._writing: tuple[int, str] | None = None  # (step, reason) of the write in flight
        self._last_time = time.monotonic()

    def load(self, *read: Loaded | None) -> tuple[str, dict] | None:
        """The newest usable checkpoint's (name, state), or None to start fresh. `read`: what
        CheckpointManager.load already returned (the job reads it before building anything)."""
        loaded = read[0] if read else self.manager.load()
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
        return by_steps or by_time or self.manager.failed()  # a failed write: try again now

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
        marker = {
            "total_steps": parts.budget.total_steps,
            "epoch": parts.sampler.epoch,
            "frames": parts.filmer.frames,
            "loss": parts.log.last_loss,
            "psnr_db": parts.log.last_psnr,
            "resumes": state.get("resumes"),
            "train_seconds": round(parts.budget.train_seconds, 3),
            "reason": reason,
            **({"recipe": state["recipe"]} if state.get("recipe") else {}),
        }  # read before the parts are built
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

        self.manager.save_in_background(state, marker, done)
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
        error = self.manager.join()
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


class Lease:
    """A heartbeat file at OUTPUT/.imgfit-lease.json naming the run that owns the output.

    A new run waits while another live run holds it (a replacement pod may start
    while the old one is still checkpointing), then takes it over; a lease whose
    heartbeat is older than `stale_after` seconds, or whose process is gone from
    this host, is free. So is one that is malformed (not written by this tool) or
    whose heartbeat lies more than `stale_after` in the future (a skewed clock or a
    forgery would otherwise block every run forever): both with a warning.
    """

    MAX_BYTES = outputs.LEASE_MAX_BYTES
    SILENT_BEATS = 3  # heartbeats missed before `gone` calls the holder stopped

    def __init__(
        self,
        output: str,
        heartbeat_seconds: float = 10,
        stale_after: float = 45,
        wait_seconds: float = 90,
        log: Callable[[str], None] = lambda m: None,
        warn: Callable[[str], None] = lambda m: None,
    ):
        self.uri = storage.join(output, outputs.LEASE)
        self.owner: dict[str, Any] = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self.heartbeat_seconds, self.stale_after, self.wait_seconds, self.log = (
            heartbeat_seconds,
            stale_after,
            wait_seconds,
            log,
        )
        self.warn = warn
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def live(self, holder: outputs.LeaseRecord, now: float | None = None) -> bool:
        """Whether a (parsed) lease's heartbeat is recent: neither stale nor from the future."""
        age = (time.time() if now is None else now) - holder.beat
        return -self.stale_after <= age <= self.stale_after

    def gone(self, holder: outputs.LeaseRecord, now: float | None = None) -> str | None:
        """For `status` and `report`, which only look: why a lease's holder is not running
        any more, as soon as that can be told (None: it may be). Its process is gone from
        this host, or it missed SILENT_BEATS heartbeats (a killed run never renews its lease;
        a live one renews it every heartbeat_seconds, each write retried for at most that
        long). Taking the lease over still waits for `stale_after` (acquire)."""
        age = (time.time() if now is None else now) - holder.beat
        if age < -self.stale_after:
            return f"its lease's heartbeat lies {-age:.0f}s in the future (a skewed clock, or forged)"
        if age > self.stale_after:
            return f"its run (host {holder.host}, pid {holder.pid}) last renewed its lease {age:.0f}s ago"
        if holder.host == self.owner["host"] and not _pid_alive(holder.pid):
            return f"its run (pid {holder.pid} on this host) is gone"
        if age > self.SILENT_BEATS * self.heartbeat_seconds:
            return (
                f"its run (host {holder.host}, pid {holder.pid}) stopped renewing its lease {age:.0f}s ago "
                f"(it renews it every {self.heartbeat_seconds:.0f}s)"
            )
        return None

    def _holder(self) -> outputs.LeaseRecord | None:
        try:
            raw = storage.read_bytes(self.uri, what="lease", max_bytes=self.MAX_BYTES)
        except UnavailableError:
            return None
        holder = outputs.parse_lease(raw)
        if holder is None:
            self.warn(f"{self.uri} is malformed (not a lease this tool wrote); treating it as stale and taking it over")
            return None
        if holder.id == self.owner["id"]:
            return None
        ahead = holder.beat - time.time()
        if ahead > self.stale_after:
            self.warn(
                f"{self.uri}: its heartbeat is {ahead:.0f}s in the future (a skewed clock, or forged); "
                "treating it as stale and taking it over"
            )
            return None
        if not self.live(holder):
            return None
        if holder.host == self.owner["host"] and not _pid_alive(holder.pid):
            return None
        return holder

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_seconds
        announced = False
        while (holder := self._holder()) is not None:
            if signals.requested():
                raise Interrupted(f"by {signals.requested()} while waiting for {self.uri}")
            if time.monotonic() >= deadline:
                raise Busy(
                    f"{self.uri}: another run (host {holder.host}, pid {holder.pid}) is using this "
                    "output; "
                    "not starting a second one. Retry when it has stopped"
                )
            if not announced:
                self.log(
                    f"another run (host {holder.host}, pid {holder.pid}) holds this output; waiting "
                    f"up to {self.wait_seconds:.0f}s"
                )
                announced = True
            time.sleep(1.0)
        self._beat()
        self._thread = threading.Thread(target=self._loop, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        storage.write_bytes(self.uri, outputs.LeaseRecord(**self.owner, beat=time.time()).model_dump_json().encode())

    def _loop(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                with storage.patience(self.heartbeat_seconds):  # the next beat is the retry
                    self._beat()
            except Exception:
                pass  # a missed beat only makes the lease look older

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        try:
            with storage.patience(5):  # best effort: a lease left behind goes stale on its own
                storage.delete(self.uri)
        except Exception:
            pass


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still "exists"; treat it as gone
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True

"""The loss log: one row per step (step, epoch, loss, lr, psnr_db, ssim), and loss.csv.

A GPU run makes millions of steps, so nothing here grows with the steps except
files written once. Rows are recorded as device tensors and become numbers in one
host sync per `flush()`; flushed rows fill the open chunk (numpy columns of
`chunk_rows` rows). A full chunk is sealed: written once as an immutable CSV file
without a header, OUTPUT/checkpoints/log/loss-000000.csv, loss-000001.csv, ...,
durable where the checkpoints live (fsynced on a local output, uploaded to a remote store)
before a checkpoint that counts on it is written. A checkpoint carries only the
open chunk's rows and the number of sealed chunks, so its size does not grow with
the steps.

loss.csv is the header, the sealed chunks in order, then the open rows: streamed
to a temp file and uploaded whole (object stores have no append; a local output is replaced
atomically). The same bytes whether the run was interrupted or not, and whatever
the chunk size. While the job runs it is republished on a cadence whose total cost
stays linear in the steps (`LiveCsv`).
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from imgfit_batch import storage
from imgfit_batch.checkpoint import made_by_job
from imgfit_batch.errors import NodeLocalError, TransientError, UnavailableError

if TYPE_CHECKING:
    from imgfit_batch.tensorboard_log import EventLog

CHUNK_ROWS = 1 << 16  # ~4 MB of CSV per sealed chunk; at most 3 MB of open rows in a checkpoint
CHUNK_ROWS_ENV = "IMGFIT_LOG_CHUNK_ROWS"  # hidden knob: tests cut a tiny job's log into several chunks

COLUMNS = ("step", "epoch", "loss", "lr", "psnr_db", "ssim")
_DTYPES = (np.int64, np.int64, np.float64, np.float64, np.float64, np.float64)
HEADER = (",".join(COLUMNS) + "\n").encode()


def default_chunk_rows() -> int:
    value = os.environ.get(CHUNK_ROWS_ENV, "").strip()
    return max(1, int(value)) if value else CHUNK_ROWS


def chunk_name(j: int) -> str:
    return f"loss-{j:06d}.csv"


def is_chunk_name(name: str) -> bool:
    return name.startswith("loss-") and name.endswith(".csv") and name[5:-4].isdigit()


def csv_rows(step, epoch, loss, lr, psnr_db, ssim) -> bytes:
    """CSV lines (no header) for columns of equal length. PSNR and SSIM are empty where not scored (NaN)."""
    psnr = ["" if v != v else f"{v:.4f}" for v in psnr_db.tolist()]
    ssim = ["" if v != v else f"{v:.5f}" for v in ssim.tolist()]
    return "".join(
        f"{s},{e},{l!r},{r!r},{p},{q}\n"
        for s, e, l, r, p, q in zip(step.tolist(), epoch.tolist(), loss.tolist(), lr.tolist(), psnr, ssim)
    ).encode()


class LogChunks:
    """The sealed chunks: `local_dir` holds them (on a local output it is
    OUTPUT/checkpoints/log itself); on a remote store they are also uploaded under `uri`, and
    a later run on another machine downloads the ones it needs into `local_dir`."""

    def __init__(self, local_dir: str, uri: str | None = None):
        self.local_dir, self.uri = local_dir, uri
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _where(self, j: int) -> str:
        return storage.join(self.uri, chunk_name(j)) if self.uri else os.path.join(self.local_dir, chunk_name(j))

    def seal(self, j: int, columns: Sequence[np.ndarray]) -> None:
        """Format chunk j and make it durable, in a thread (never two in flight)."""
        self.sync()

        def write() -> None:
            try:
                data = csv_rows(*columns)
                path = os.path.join(self.local_dir, chunk_name(j))
                if self.uri is None:
                    storage.write_bytes(path, data)  # atomic and fsynced: durable where the checkpoints are
                    return
                os.makedirs(self.local_dir, exist_ok=True)
                with open(path, "wb") as fh:  # a cache: the durable copy is the upload
                    fh.write(data)
                storage.write_bytes(self._where(j), data)
            except BaseException as exc:  # surfaced to the trainer by sync()
                self._error = exc

        self._thread = threading.Thread(target=write, name="loss-log-writer", daemon=True)
        self._thread.start()

    def sync(self) -> None:
        """Wait until every sealed chunk is durable. A failed write is raised here, and
        again at every later call: no checkpoint may ever count on that chunk."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    def check(self, count: int) -> None:
        """Fail now, not at the end, if a checkpoint counts on chunks that are gone."""
        if count == 0:
            return
        names = set(storage.list_names(self.uri if self.uri else self.local_dir))
        missing = [chunk_name(j) for j in range(count) if chunk_name(j) not in names]
        if missing:
            raise UnavailableError(
                f"{self._where(0).rsplit('/', 1)[0]}: the newest checkpoint counts on loss log chunks that are missing "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); rerun with --restart to start over"
            )

    def read(self, j: int, rows: int) -> bytes:
        """Sealed chunk j, checked to hold `rows` rows."""
        path = os.path.join(self.local_dir, chunk_name(j))
        if self.uri is not None and not os.path.exists(path):  # written by an earlier run on another machine
            storage.download_file(self._where(j), path, what="loss log chunk")
        data = storage.read_bytes(path, what="loss log chunk")
        found = data.count(b"\n")
        if found != rows:
            raise UnavailableError(
                f"{self._where(j)}: damaged loss log chunk ({found} rows, expected {rows}); "
                "rerun with --restart to start over"
            )
        return data

    def delete(self) -> None:
        if self.uri is not None:
            for name in storage.list_names(self.uri):
                if is_chunk_name(name):
                    storage.delete(storage.join(self.uri, name))
        storage.discard_local(self.local_dir, lambda name: made_by_job(f"log/{name}"))  # a user's files there stay


class LossLog:
    """One row per step. Values recorded as device tensors and turned into numbers
    in one host sync per `flush()`; see the module's docstring for where rows live."""

    COLUMNS = COLUMNS

    def __init__(self, chunks: LogChunks, chunk_rows: int | None = None):
        self.chunks = chunks
        self.chunk_rows = chunk_rows or default_chunk_rows()
        self.sealed = 0  # chunks written, each of chunk_rows rows
        self._open = self._columns()
        self._n = 0  # rows in the open chunk
        self._pending: list[tuple] = []  # (step, epoch, lr, loss, psnr or None, ssim or None)
        self._last_loss: float | None = None
        self._last_psnr: float | None = None
        self.events: EventLog | None = None  # gets every flushed row (not those loaded from a checkpoint)

    def _columns(self) -> list[np.ndarray]:
        return [np.empty(self.chunk_rows, dtype) for dtype in _DTYPES]

    def record(
        self,
        step: int,
        epoch: int,
        loss: torch.Tensor,
        lr: float,
        psnr: torch.Tensor | None = None,
        ssim: torch.Tensor | None = None,
    ) -> None:
        self._pending.append((step, epoch, lr, loss, psnr, ssim))

    def __len__(self) -> int:
        """Rows recorded (no sync)."""
        return self.sealed * self.chunk_rows + self._n + len(self._pending)

    def flush(self) -> int:
        """Turn the rows recorded since the last flush into numbers (one host sync); returns how many."""
        if not self._pending:
            return 0
        scalars = [t for *_, loss, p, s in self._pending for t in (loss, p, s) if t is not None]
        if scalars[0].is_cuda:  # frames are scored on the film's own stream (film.FilmStream): wait for it too
            torch.cuda.synchronize(scalars[0].device)
        values = iter(torch.stack([t.float().reshape(()) for t in scalars]).double().tolist())  # the sync point
        rows = [
            (
                step,
                epoch,
                next(values),
                lr,
                next(values) if p is not None else math.nan,
                next(values) if s is not None else math.nan,
            )
            for step, epoch, lr, _, p, s in self._pending
        ]
        self._pending.clear()
        columns = [np.asarray(column, dtype) for column, dtype in zip(zip(*rows), _DTYPES)]
        self._append(columns)
        if self.events is not None:
            self.events.rows(columns)
        return len(rows)

    def _append(self, columns: list[np.ndarray]) -> None:
        """Copy rows into the open chunk, sealing each chunk that fills up."""
        total, done = len(columns[0]), 0
        while done < total:
            take = min(self.chunk_rows - self._n, total - done)
            for mine, theirs in zip(self._open, columns):
                mine[self._n : self._n + take] = theirs[done : done + take]
            self._n, done = self._n + take, done + take
            if self._n == self.chunk_rows:
                full, self._open = self._open, self._columns()  # the writer thread owns the full columns now
                self.chunks.seal(self.sealed, full)
                self.sealed, self._n = self.sealed + 1, 0
        if total:
            self._last_loss = float(columns[2][-1])
            scored = np.flatnonzero(~np.isnan(columns[4]))
            if len(scored):
                self._last_psnr = float(columns[4][scored[-1]])

    @property
    def last_loss(self) -> float | None:
        self.flush()
        return self._last_loss

    @property
    def last_psnr(self) -> float | None:
        self.flush()
        return self._last_psnr

    # ------------------------------------------------------------ loss.csv

    def write_csv(self, fh: BinaryIO) -> None:
        """loss.csv into `fh`: the header, the sealed chunks, the open rows."""
        self.flush()
        self.chunks.sync()
        fh.write(HEADER)
        for j in range(self.sealed):
            fh.write(self.chunks.read(j, self.chunk_rows))
        fh.write(csv_rows(*(column[: self._n] for column in self._open)))

    def csv(self) -> bytes:
        """loss.csv as bytes (whole in memory: for small logs and tests)."""
        buf = io.BytesIO()
        self.write_csv(buf)
        return buf.getvalue()

    def publish(self, uri: str) -> int:
        """Write loss.csv to `uri` (streamed through a temp file, uploaded once); returns its size."""
        tmp = self.snapshot()
        try:
            storage.upload_file(tmp, uri)
            return os.path.getsize(tmp)
        finally:
            os.unlink(tmp)

    def snapshot(self) -> str:
        """loss.csv as it is now, in a local temp file (the caller uploads and deletes it)."""
        os.makedirs(self.chunks.local_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-loss-", suffix=".csv", dir=self.chunks.local_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                self.write_csv(fh)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def plot_series(self, max_points: int = 20_000) -> tuple[list[int], list[float], list[int], list[float]]:
        """(steps, loss, psnr_steps, psnr_db) for the progress plot: the loss of evenly
        spaced rows (about `max_points`, always the last) and the PSNR of the scored
        rows (thinned the same way if there are more); read back from the chunks."""
        self.flush()
        self.chunks.sync()
        total = len(self)
        stride = max(1, math.ceil(total / max_points))

        def picks(offset: int, rows: int) -> list[int]:  # a block's rows on the global stride, and the last row
            idx = list(range(-offset % stride, rows, stride))
            if offset + rows == total and rows and (not idx or idx[-1] != rows - 1):
                idx.append(rows - 1)
            return idx

        steps, losses, psnr_steps, psnrs = [], [], [], []
        for j in range(self.sealed):
            lines = self.chunks.read(j, self.chunk_rows).split(b"\n")
            for i in picks(j * self.chunk_rows, self.chunk_rows):
                step_text, _, loss_text, _ = lines[i].split(b",", 3)
                steps.append(int(step_text))
                losses.append(float(loss_text))
            for line in lines[:-1]:
                if not line.endswith(b",,"):  # a scored row: PSNR (and maybe SSIM)
                    fields = line.split(b",")
                    if fields[4]:
                        psnr_steps.append(int(fields[0]))
                        psnrs.append(float(fields[4]))
        step, _, loss, _, psnr, _ = (column[: self._n] for column in self._open)
        idx = picks(self.sealed * self.chunk_rows, self._n)
        steps += step[idx].tolist()
        losses += loss[idx].tolist()
        scored = ~np.isnan(psnr)
        psnr_steps += step[scored].tolist()
        psnrs += psnr[scored].tolist()
        every = max(1, math.ceil(len(psnrs) / max_points))
        keep = list(range(0, len(psnrs), every))
        if psnrs and keep[-1] != len(psnrs) - 1:
            keep.append(len(psnrs) - 1)
        return steps, losses, [psnr_steps[i] for i in keep], [psnrs[i] for i in keep]

    def delete_chunks(self) -> None:
        """Once loss.csv is published whole (and the job marked complete) the chunks are no longer needed."""
        self.chunks.sync()
        self.chunks.delete()

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """The open chunk's rows and the count of sealed chunks; waits until every
        sealed chunk is durable, because the checkpoint counts on them."""
        self.flush()
        self.chunks.sync()
        if self.events is not None:  # TensorBoard's copy of the rows is durable before the checkpoint counts on it
            self.events.sync()
        state: dict[str, float | torch.Tensor] = {
            "chunk_rows": self.chunk_rows,
            "sealed": self.sealed,
            "last_loss": math.nan if self._last_loss is None else self._last_loss,
            "last_psnr": math.nan if self._last_psnr is None else self._last_psnr,
        }
        state.update({name: torch.from_numpy(column[: self._n].copy()) for name, column in zip(COLUMNS, self._open)})
        return state

    def load_state_dict(self, state: dict) -> None:
        # a checkpoint from before chunks (no "sealed") holds every row: they are
        # appended like new rows, and full chunks are sealed and written on the way
        self._pending.clear()
        self.chunk_rows = int(state.get("chunk_rows", self.chunk_rows))  # the chunking the job started with
        self.sealed, self._n, self._open = int(state.get("sealed", 0)), 0, self._columns()
        self.chunks.check(self.sealed)
        last_loss, last_psnr = float(state.get("last_loss", math.nan)), float(state.get("last_psnr", math.nan))
        self._last_loss = None if math.isnan(last_loss) else last_loss
        self._last_psnr = None if math.isnan(last_psnr) else last_psnr
        self._append([state[name].numpy().astype(dtype) for name, dtype in zip(COLUMNS, _DTYPES)])


class LiveCsv:
    """loss.csv at the output while the job runs, for `status` and people watching.

    `maybe_publish` is called after every step; at a checkpoint, or once
    `every_seconds` have passed, loss.csv is republished if the log has new rows
    and is either small (at most SMALL_ROWS rows: no more than a checkpoint's own
    open chunk) or has grown by GROWTH since it was last published. So while small
    it costs at most one small file per checkpoint or interval, and after that the
    published sizes grow geometrically: all publications together stay under
    (1 + 1/GROWTH) x the final file. Each publication replaces the whole file, so
    it is always a complete CSV and a prefix of the final one (a resumed run
    writes the same rows again).

    The file is written locally on the training thread (its rows as they are at that
    step) and uploaded in a thread, never two at once: a store that is slow or down
    costs training nothing. A transient failure (the store throttling or unreachable
    past the retry window) is a warning and the next publication tries again; a live
    view is not worth a job. Anything else (a full disk, access denied) raises at the
    next step, as a checkpoint's would. At a checkpoint the upload in flight is waited
    for first. `close()` waits for the upload in flight: before the job's final,
    strict publish (so an older one never lands after it) and when it stops.
    """

    SMALL_ROWS = CHUNK_ROWS
    GROWTH = 0.25

    def __init__(self, log: LossLog, uri: str, every_seconds: float, warn=lambda message: None):
        self.log, self.uri, self.every_seconds, self.warn = log, uri, every_seconds, warn
        self.rows = len(log)  # what the output is taken to hold: the rows this run starts from
        self._time = time.monotonic()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def should_publish(self, checkpointed: bool) -> bool:
        if not checkpointed and time.monotonic() - self._time < self.every_seconds:
            return False
        rows = len(self.log)
        return rows > self.rows and (rows <= self.SMALL_ROWS or rows - self.rows >= self.GROWTH * self.rows)

    def maybe_publish(self, checkpointed: bool) -> bool:
        """Start a publication if one is due; True if started. At a checkpoint the one in
        flight is waited for first (as the checkpoint writer waits for its previous
        write), so loss.csv keeps up with the checkpoints; otherwise a publication due
        while one is in flight waits for the next step."""
        self._settle(block=checkpointed)
        if self._thread is not None or not self.should_publish(checkpointed):
            return False
        rows, tmp = len(self.log), self.log.snapshot()
        self._time = time.monotonic()

        def upload() -> None:
            try:
                storage.upload_file(tmp, self.uri)
                self.rows = rows
            except BaseException as exc:
                self._error = exc
            finally:
                os.unlink(tmp)

        self._thread = threading.Thread(target=upload, name="loss-csv-publisher", daemon=True)
        self._thread.start()
        return True

    def close(self) -> None:
        """Wait for the publication in flight (a transient failure of it is a warning)."""
        self._settle(block=True)

    def _settle(self, block: bool) -> None:
        thread = self._thread
        if thread is None or (thread.is_alive() and not block):
            return
        thread.join()
        self._thread, error, self._error = None, self._error, None
        if error is None:
            return
        if not isinstance(error, TransientError) or isinstance(error, NodeLocalError):
            raise error
        detail = getattr(error, "detail", str(error))
        self.warn(
            f"{self.uri} (the live copy of the loss log) was not republished: {detail}; training goes on, "
            "the next publication tries again, and the job's end publishes it whole"
        )

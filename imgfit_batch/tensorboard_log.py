"""TensorBoard event logs: OUTPUT/tensorboard/, the loss log's scalars at every step and a
few frames as images, so `tensorboard --logdir OUTPUT` of a study shows every task's
curves side by side (each task's OUTPUT/.../tensorboard/ is a run of its own).

The event format is small and stable (TFRecord framing of `Event` protocol buffers:
wall time, step, a summary of tagged values), so it is written here without
TensorBoard or protobuf installed; the tests read it back with TensorBoard's own reader.

Files are written whole and never appended to: the events since the last write are one
new file, written at every checkpoint (before the checkpoint counts on them, like the
loss log's chunks) and at the end, locally or to the store alike. A resumed run's
first file begins with a `SessionLog START` at its first step: TensorBoard drops every
earlier value at that step or later, so the steps the killed run logged after its newest
checkpoint, which the resumed run takes again, appear once.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time
from collections.abc import Sequence

import numpy as np

from imgfit_batch import storage

FOLDER = "tensorboard"
SCALARS = ("loss", "lr", "psnr_db", "ssim")  # tags, from the loss log's columns 2-5
FRAME_TAG = "frame"


def is_event_file(name: str) -> bool:
    """The files this module writes (what --restart deletes)."""
    return name.startswith("events.out.tfevents.") and "/" not in name


# ---------------------------------------------------------------- the encoding


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord frames its records."""
    crc, table = 0xFFFFFFFF, _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked(crc32c(length))) + data + struct.pack("<I", _masked(crc32c(data)))


_NP_TABLE = np.array(_CRC_TABLE, dtype=np.uint32)


def _crc32c_many(items: list[bytes]) -> np.ndarray:
    """crc32c of each item, computed for all of them at once (a step's event is ~50 bytes:
    one numpy pass per byte position instead of a Python loop per byte and event)."""
    lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    width = int(lengths.max()) if len(items) else 0
    buf = np.zeros((len(items), width), dtype=np.uint8)
    flat = np.frombuffer(b"".join(items), dtype=np.uint8)
    rows = np.repeat(np.arange(len(items)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    buf[rows, cols] = flat
    crc = np.full(len(items), 0xFFFFFFFF, dtype=np.uint32)
    for k in range(width):
        step = _NP_TABLE[(crc ^ buf[:, k]) & 0xFF] ^ (crc >> 8)
        crc = np.where(k < lengths, step, crc)
    return crc ^ np.uint32(0xFFFFFFFF)


def _masked_many(crc: np.ndarray) -> np.ndarray:
    c = crc.astype(np.uint64)
    return ((((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF).astype("<u4")


def records(items: list[bytes]) -> bytes:
    """`record` of each item, joined (CRCs computed together for many items)."""
    if len(items) < 64:  # numpy's per-call cost outweighs the loop's
        return b"".join(map(record, items))
    lengths = [struct.pack("<Q", len(d)) for d in items]
    length_crcs = _masked_many(_crc32c_many(lengths)).tobytes()
    data_crcs = _masked_many(_crc32c_many(items)).tobytes()
    return b"".join(
        b"".join((n, length_crcs[4 * i : 4 * i + 4], d, data_crcs[4 * i : 4 * i + 4]))
        for i, (n, d) in enumerate(zip(lengths, items))
    )


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def event(
    wall_time: float, step: int, *, summary: bytes = b"", file_version: str = "", session_start: bool = False
) -> bytes:
    """An `Event` message: wall_time (1, double), step (2), file_version (3), summary (5),
    session_log (7) with status START (1)."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _int_field(2, step)
    if file_version:
        out += _bytes_field(3, file_version.encode())
    if summary:
        out += _bytes_field(5, summary)
    if session_start:
        out += _bytes_field(7, _int_field(1, 1))
    return out


def scalar_value(tag: str, value: float) -> bytes:
    """A `Summary.Value` with tag (1) and simple_value (2, float)."""
    return _bytes_field(1, _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))


def image_value(tag: str, png: bytes, height: int, width: int, channels: int) -> bytes:
    """A `Summary.Value` with an image (4): height, width, colorspace, the encoded PNG."""
    image = _int_field(1, height) + _int_field(2, width) + _int_field(3, channels) + _bytes_field(4, png)
    return _bytes_field(1, _bytes_field(1, tag.encode()) + _bytes_field(4, image))


# ---------------------------------------------------------------- the log


def should_log_frame(frame: int, last: bool) -> bool:
    """A few frames over any length of film: the 1st, 2nd, 4th, 8th, ... and the last."""
    return last or (frame & (frame - 1)) == 0


class EventLog:
    """The events of one run of the job, written as new files under `folder_uri`.

    `first_step`: the first step this run logs (a resumed run's purge point)."""

    def __init__(self, folder_uri: str, first_step: int):
        self.folder_uri = folder_uri
        self.first_step = first_step
        self._host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:64] or "host"
        self._files = 0
        self._records: list[bytes] = []
        self.seconds = 0.0  # this run's time spent encoding and writing events (on the training thread)

    def rows(self, columns: Sequence[np.ndarray]) -> None:
        """The loss log's new rows (numpy columns step, epoch, loss, lr, psnr_db, ssim), one
        event a step with the values it has (PSNR and SSIM only where scored)."""
        started = time.perf_counter()
        now = time.time()
        steps = columns[0].tolist()
        values = [column.tolist() for column in columns[2:6]]
        events = [
            event(
                now,
                int(step),
                summary=b"".join(scalar_value(tag, v[i]) for tag, v in zip(SCALARS, values) if v[i] == v[i]),
            )
            for i, step in enumerate(steps)
        ]
        self._records.append(records(events))
        self.seconds += time.perf_counter() - started

    def frame(self, step: int, frame) -> None:
        """A rendered frame ((h, w, C) uint8, any device) as an image at `step`."""
        from imgfit_batch.outputs import png_bytes

        started = time.perf_counter()
        pixels = frame.cpu().numpy() if hasattr(frame, "cpu") else np.asarray(frame)
        h, w, c = pixels.shape
        summary = image_value(FRAME_TAG, png_bytes(pixels), h, w, c)
        self._records.append(record(event(time.time(), int(step), summary=summary)))
        self.seconds += time.perf_counter() - started

    def sync(self) -> None:
        """Write the events since the last sync as one new file (atomic, locally or on the
        store). They are kept for the next try if it fails."""
        if not self._records and self._files:
            return
        started = time.perf_counter()
        head = [record(event(time.time(), 0, file_version="brain.Event:2"))]
        if self._files == 0:  # drop what an earlier run logged from here on (a killed run's steps after its checkpoint)
            head.append(record(event(time.time(), self.first_step, session_start=True)))
        buf = io.BytesIO()
        for r in head + self._records:
            buf.write(r)
        # zero-padded nanoseconds first: the files of a job sort in the order they were written
        name = f"events.out.tfevents.{time.time_ns():020d}.{self._host}.{os.getpid()}.{self._files:06d}"
        storage.write_bytes(storage.join(self.folder_uri, name), buf.getvalue())
        self._files += 1
        self._records = []
        self.seconds += time.perf_counter() - started

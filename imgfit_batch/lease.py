"""The lease that keeps two runs from sharing one output: a heartbeat file at
OUTPUT/.imgfit-lease.json naming the run that owns it (outputs.LeaseRecord)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from imgfit_batch import outputs, signals, storage
from imgfit_batch.errors import Busy, Interrupted, UnavailableError


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

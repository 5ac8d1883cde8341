"""The retry window every remote store shares.

A transient failure (throttling, a 5xx, a dropped or timed-out connection, a body
cut short) is retried as a whole call (an upload, a download, a read of the whole
body) with exponential backoff and jitter for a bounded window
(`storage.retry_seconds`, default 60 s; IMGFIT_S3_RETRY_SECONDS overrides it), then
becomes a TransientError (exit 69: run again later). A permanent failure (not found,
denied, bad credentials) is an UnavailableError (exit 3) at once. A stop signal ends
the retrying early enough to exit within the grace period.

Each backend brings its own `diagnose(uri, action, exc)`: a Retryable, a permanent
ImgfitError, or None (not a store failure: let it through, e.g. a local disk filling up).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from imgfit_batch import signals
from imgfit_batch.errors import SpecError, TransientError

DEFAULT_RETRY_SECONDS = 60.0
RETRY_SECONDS_ENV = "IMGFIT_S3_RETRY_SECONDS"  # the name predates the other stores; it sets the window of every one
FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 0.2, 8.0
STOP_MARGIN_SECONDS = 15.0  # after a stop, retrying ends this long before the grace period does

settings: dict = {"endpoint_url": None, "region": None, "retry_seconds": None}
_window_cap: contextvars.ContextVar[float | None] = contextvars.ContextVar("retry_cap", default=None)
T = TypeVar("T")


class Retryable(Exception):
    """A failed call that another try may get past; `reason` says what happened."""

    def __init__(self, reason: str, hint: str = ""):
        super().__init__(reason)
        self.reason, self.hint = reason, hint


def configure(endpoint_url: str | None = None, region: str | None = None, retry_seconds: float | None = None) -> None:
    settings.update(endpoint_url=endpoint_url, region=region, retry_seconds=retry_seconds)


def retry_seconds() -> float:
    """How long transient store failures are retried: IMGFIT_S3_RETRY_SECONDS, else the
    spec's storage.retry_seconds, else 60 s (capped in a `patience` block)."""
    raw = os.environ.get(RETRY_SECONDS_ENV, "").strip()
    if raw:
        try:
            window = float(raw)
        except ValueError:
            window = -1.0
        if not (0 <= window < math.inf):
            raise SpecError(f"{RETRY_SECONDS_ENV}={raw!r}: expected a number of seconds (0 or more)")
    else:
        window = settings["retry_seconds"] if settings["retry_seconds"] is not None else DEFAULT_RETRY_SECONDS
    cap = _window_cap.get()
    return window if cap is None else min(window, cap)


@contextlib.contextmanager
def patience(seconds: float) -> Iterator[None]:
    """Retry store calls in this block (this thread) for at most `seconds`: for
    best-effort calls (a lease heartbeat) that must not hold anything up."""
    token = _window_cap.set(seconds)
    try:
        yield
    finally:
        _window_cap.reset(token)


def call(
    uri: str, action: str, fn: Callable[[], T], diagnose: Callable[[str, str, BaseException], BaseException | None]
) -> T:
    """`fn()` (one whole store operation), retried while it fails transiently, with
    exponential backoff and jitter, for retry_seconds(); then a TransientError. A
    permanent failure raises at once; after a stop signal, retrying ends in time to
    exit within the grace period."""
    window, start, backoff, tries = retry_seconds(), time.monotonic(), FIRST_BACKOFF_SECONDS, 0
    while True:
        tries += 1
        try:
            return fn()
        except Exception as exc:
            failure = exc if isinstance(exc, Retryable) else diagnose(uri, action, exc)
            if failure is None:
                raise
            if not isinstance(failure, Retryable):
                raise failure from None
        end = start + window
        left = _retry_end(end) - time.monotonic()
        pause = min(
            left, backoff / 2 + random.uniform(0, backoff / 2)
        )  # "equal jitter": never a burst of instant retries
        if left <= 0 or not _sleep_before_retry(pause, end):
            raise _gave_up(uri, action, failure, tries, time.monotonic() - start) from None
        backoff = min(2 * backoff, MAX_BACKOFF_SECONDS)


def _retry_end(end: float) -> float:
    """When retrying must stop: the window's end, or after a stop signal, early enough
    that the job still exits within its grace period (a stop checkpoint that meets a
    short SlowDown is still worth saving)."""
    stop_by = signals.deadline()
    if stop_by is None:
        return end
    return min(end, stop_by - min(STOP_MARGIN_SECONDS, 0.25 * signals.grace()))


def _sleep_before_retry(seconds: float, end: float) -> bool:
    """Sleep `seconds`; False as soon as retrying must stop (see _retry_end)."""
    wake = time.monotonic() + seconds
    while True:
        now = time.monotonic()
        if now >= _retry_end(end):
            return False
        if now >= wake:
            return True
        time.sleep(min(wake - now, 0.1))


def _gave_up(uri: str, action: str, failure: Retryable, tries: int, seconds: float) -> TransientError:
    stop = signals.requested()
    why = f"not retrying: stopped by {stop}" if stop else f"still failing after {tries} tries over {seconds:.0f}s"
    hint = f"; {failure.hint}" if failure.hint else ""
    error = TransientError(
        f"{uri}: {action} failed ({failure.reason}), {why}{hint}; "
        "a transient fault of the store or the network: run the job again (it resumes)"
    )
    error.detail = (
        f"{uri}: {action} failed ({failure.reason}), {why}{hint}"  # without the advice, for callers that add their own
    )
    return error

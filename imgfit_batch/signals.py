"""Stop signals (SIGTERM from Kubernetes/Docker/Slurm, SIGUSR1 from Slurm's
--signal warning, SIGINT from a terminal) are recorded, never acted on in the
handler: the trainer finishes its step, checkpoints, and exits 75.

Installed first thing in the CLI, so a signal during start-up (imports, image
download) is not lost to Python's default handler either.

A recorded stop is a promise to be gone soon: the scheduler kills the process
after its grace period (Kubernetes' terminationGracePeriodSeconds, Slurm's
--signal=USR1@120) whatever it is doing. So the console entry point arms a
watchdog: once a stop is recorded, the process ends within `grace` seconds even
if the main thread is stuck in a read that cannot be interrupted (a dead
connection, a device that never answers). It exits 69 (retryable; the previous
checkpoint stands) or 75 if a checkpoint was saved after the stop.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import TypedDict

NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT", signal.SIGUSR1: "SIGUSR1"}
DEFAULT_GRACE_SECONDS = 90.0  # under the 120 s that k8s/job.yaml and slurm/train.sh give
_received: list[str] = []
_stopped = threading.Event()


class _State(TypedDict):
    grace: float  # seconds a stopped process may take
    at: float | None  # time.monotonic() of the first stop signal
    saved: bool  # a checkpoint was completed after the stop


_state: _State = {"grace": DEFAULT_GRACE_SECONDS, "at": None, "saved": False}


def _record(signum, _frame) -> None:
    if _received and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
    if not _received:
        _state["at"] = time.monotonic()
    _received.append(NAMES.get(signum, str(signum)))
    _stopped.set()


def install() -> None:
    try:
        for s in NAMES:
            signal.signal(s, _record)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass


def requested() -> str | None:
    """The first stop signal received, if any."""
    return _received[0] if _received else None


def deadline() -> float | None:
    """The time.monotonic() by which a stopped process must be gone (None: no stop yet).
    Waits and retries should not last past it."""
    return None if _state["at"] is None else _state["at"] + _state["grace"]


def grace() -> float:
    return _state["grace"]


def set_grace(seconds: float) -> None:
    """How long a stopped process may take to checkpoint and exit (the spec's
    checkpoint.stop_grace_seconds; the IMGFIT_STOP_GRACE_SECONDS variable wins)."""
    env = os.environ.get("IMGFIT_STOP_GRACE_SECONDS", "").strip()
    try:
        _state["grace"] = float(env) if env else float(seconds)
    except ValueError:
        _state["grace"] = float(seconds)


def checkpoint_saved() -> None:
    """A checkpoint is complete; after a stop it makes the exit a clean 75."""
    if _received:
        _state["saved"] = True


def arm_watchdog() -> None:
    """Console runs only (an embedding program keeps control of its own process)."""
    set_grace(_state["grace"])
    threading.Thread(target=_watch, name="stop-watchdog", daemon=True).start()


def _watch() -> None:
    from imgfit_batch.errors import EXIT_INTERRUPTED, EXIT_RETRYABLE

    _stopped.wait()
    while True:  # the grace may change while we wait
        end = deadline()
        assert end is not None  # _record sets "at" before it sets _stopped
        if (left := end - time.monotonic()) <= 0:
            break
        time.sleep(min(left, 1.0))
    saved = _state["saved"]
    what = (
        "a checkpoint was saved; exiting"
        if saved
        else "could not save a checkpoint in time; exiting without one (the previous checkpoint stands)"
    )
    try:
        sys.stderr.write(
            f"stopped: by {requested()}, still busy after {_state['grace']:.0f}s: {what}; "
            "run the same command again to continue\n"
        )
        sys.stderr.flush()
    finally:
        os._exit(EXIT_INTERRUPTED if saved else EXIT_RETRYABLE)


def reset() -> None:
    _received.clear()
    _stopped.clear()
    _state.update({"at": None, "saved": False})

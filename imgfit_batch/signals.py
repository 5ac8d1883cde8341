"""Stop signals (SIGTERM from Kubernetes/Docker/Slurm, SIGUSR1 from Slurm's
--signal warning, SIGINT from a terminal) are recorded, never acted on in the
handler: the trainer finishes its step, checkpoints, and exits 75.

Installed first thing in the CLI, so a signal during start-up (imports, image
download) is not lost to Python's default handler either.
"""

from __future__ import annotations

import signal
from typing import Optional

NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT", signal.SIGUSR1: "SIGUSR1"}
_received: list[str] = []


def _record(signum, _frame) -> None:
    if _received and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
    _received.append(NAMES.get(signum, str(signum)))


def install() -> None:
    try:
        for s in NAMES:
            signal.signal(s, _record)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass


def requested() -> Optional[str]:
    """The first stop signal received, if any."""
    return _received[0] if _received else None


def reset() -> None:
    _received.clear()

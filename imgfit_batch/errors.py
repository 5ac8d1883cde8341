"""Domain errors: the failure taxonomy, in one place. Each error carries the exit
code the contract gives it; the CLI turns them into one line on stderr and that
code (cli.main).

    0   completed
    1   unexpected failure (a bug): retry, counting against the retry budget
    2   invalid spec or usage: the same on every node; fail, do not retry
    3   input permanently unavailable (missing, denied, corrupt): fail, do not retry
    69  transient or node-local fault (S3 throttling/5xx/timeouts/dropped connections
        after our retries, local disk or inodes full, CUDA asked for but unusable on
        this node, the video encoder crashed): retry, ideally elsewhere or later;
        bounded by the scheduler's retry budget. 69 is sysexits' EX_UNAVAILABLE
        ("a service is unavailable"); 75 (EX_TEMPFAIL) is kept for a clean stop
        so that schedulers can retry it without counting it.
    75  stopped by a signal after saving a checkpoint (or waiting on another run's
        lease): restart; the next run resumes
"""

from __future__ import annotations

import errno
from typing import TypeGuard

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_RETRYABLE = 69
EXIT_INTERRUPTED = 75

# Local storage errors that say "this node, now", not "this input, ever".
NODE_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO})


class ImgfitError(Exception):
    exit_code = EXIT_FAILURE


class SpecError(ImgfitError):
    """Invalid spec or usage: fail, do not retry."""

    exit_code = EXIT_USAGE


class UnavailableError(ImgfitError):
    """Input or environment unavailable (missing/unreadable image, S3 denied,
    output not writable, CUDA asked for but absent): fail, do not retry."""

    exit_code = EXIT_UNAVAILABLE


class TransientError(ImgfitError):
    """A fault that another try (later, or on another node) can get past: retry."""

    exit_code = EXIT_RETRYABLE
    detail: str  # set only where storage.retry gave up: the message without its advice (read with getattr)


class NodeLocalError(TransientError):
    """A fault of this node's own resources (disk or inodes full, its GPU absent or
    broken): retry, but going on here is pointless (training without room for a
    checkpoint risks hours of work), so the job ends at once."""


class Interrupted(ImgfitError):
    """Stopped by a signal after saving a checkpoint: restart, the next run resumes."""

    exit_code = EXIT_INTERRUPTED


class Busy(ImgfitError):
    """Another run holds the output location: try again later (same code as a
    checkpointed stop, so schedulers simply retry)."""

    exit_code = EXIT_INTERRUPTED


class ImgfitWarning(RuntimeWarning):
    """A warning of the job's own (not a library's): the one kind of Python warning that
    reaches stderr, as a `warning: ...` line (imgfit_batch.stderr)."""


def is_node_local(exc: BaseException) -> TypeGuard[OSError]:
    """An OSError of this node's own resources (disk or inodes full, out of file handles)."""
    return isinstance(exc, OSError) and exc.errno in NODE_LOCAL_ERRNOS

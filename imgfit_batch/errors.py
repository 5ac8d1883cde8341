"""Domain errors. Each carries the exit code the contract gives it; the CLI turns
them into one line on stderr and that code, in one place."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 75


class ImgfitError(Exception):
    exit_code = EXIT_FAILURE


class SpecError(ImgfitError):
    """Invalid spec or usage: fail, do not retry."""

    exit_code = EXIT_USAGE


class UnavailableError(ImgfitError):
    """Input or environment unavailable (missing/unreadable image, S3 denied,
    output not writable, CUDA asked for but absent): fail, do not retry."""

    exit_code = EXIT_UNAVAILABLE


class Interrupted(ImgfitError):
    """Stopped by a signal after saving a checkpoint: restart, the next run resumes."""

    exit_code = EXIT_INTERRUPTED


class Busy(ImgfitError):
    """Another run holds the output location: try again later (same code as a
    checkpointed stop, so schedulers simply retry)."""

    exit_code = EXIT_INTERRUPTED

"""What reaches stderr: our own lines, nothing else.

A command's stderr carries the job's warnings (`warning: ...`), its one error line
(cli.main) and the stop watchdog's line. The libraries it calls have voices of their
own: gcsfs logs a traceback for each failed call, azure-core a warning for an answer
it did not expect, aiohttp and asyncio complain about sessions and tasks at exit from
fsspec's own event-loop thread, and any of them may raise a Python warning. `hold`
takes all of that off stderr for the whole process, every command, every thread:

    logging             every logger's records dropped (logging.disable)
    warnings            ours (ImgfitWarning) as one `warning: ...` line; a library's dropped
    a thread's uncaught exception, an exception ignored in __del__ (unraisable): dropped

With --debug (`hold(debug=True)`) they come back, on stderr and redacted: the
libraries' log records from INFO up (DEBUG would print request headers), their
warnings, and the tracebacks of threads.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections.abc import Callable

from imgfit_batch.errors import ImgfitWarning
from imgfit_batch.redact import redact

DEBUG_LEVEL = logging.INFO
_warnings_log = logging.getLogger("py.warnings")


class _Redacted(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _ToStderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is when a record comes (tests swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_Redacted("%(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_handler = _ToStderr()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, ImgfitWarning):
        print(f"warning: {redact(' '.join(str(message).split()))}", file=sys.stderr, flush=True)
    else:  # a library's: with its logs (dropped unless --debug)
        _warnings_log.warning("%s", warnings.formatwarning(message, category, filename, lineno, line).rstrip())


def _thread_failed(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    logging.getLogger("imgfit_batch.threads").error("uncaught exception in %s", name, exc_info=args.exc_value)


def _unraisable(args) -> None:
    logging.getLogger("imgfit_batch.unraisable").error(
        "%s: %r",
        args.err_msg or "exception ignored",
        args.object,
        exc_info=args.exc_value,
    )


def hold(debug: bool = False) -> Callable[[], None]:
    """From now on only our lines reach stderr (with `debug`, the libraries' too,
    redacted). Returns what puts everything back as it was (in-process callers: the
    tests' `cli`, an embedding program); the console script never calls it, so the
    libraries stay quiet through the interpreter's exit as well."""
    root = logging.getLogger()
    saved = (
        logging.root.manager.disable,
        root.level,
        _handler in root.handlers,
        warnings.showwarning,
        threading.excepthook,
        sys.unraisablehook,
    )
    warnings.showwarning = _show_warning
    threading.excepthook = _thread_failed
    sys.unraisablehook = _unraisable
    if debug:
        logging.disable(logging.NOTSET)
        root.setLevel(DEBUG_LEVEL)
        if _handler not in root.handlers:
            root.addHandler(_handler)
    else:
        logging.disable(logging.CRITICAL)  # every record of every logger, whatever handlers it has

    def restore() -> None:
        disable, level, had_handler, show, threads, unraisable = saved
        logging.disable(disable)
        root.setLevel(level)
        if not had_handler and _handler in root.handlers:
            root.removeHandler(_handler)
        warnings.showwarning, threading.excepthook, sys.unraisablehook = show, threads, unraisable

    return restore

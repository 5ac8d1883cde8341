"""Local folders and S3 behind one small set of functions on URI strings.

Locations stay strings (a Path would mangle s3://). Local writes are atomic
(temp file in the same folder, fsync, rename); S3 objects appear whole by
nature. Every failure becomes an error naming the URI and what to do.

S3 calls ride out short faults: a transient failure (throttling, a 5xx, a
dropped or timed-out connection, a body cut short) is retried as a whole call
(an upload, a download, a read of the whole body) with exponential backoff and
jitter for a bounded window (`storage.retry_seconds`, default 60 s; the
environment variable IMGFIT_S3_RETRY_SECONDS overrides it), then becomes a
TransientError (exit 69: run again later). boto3's own retries are off, so the
window is ours alone. A permanent failure (not found, denied, bad credentials)
is an UnavailableError (exit 3) at once. A stop signal ends the retrying.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import random
import re
import shutil
import stat
import tempfile
import time
from functools import lru_cache
from typing import Callable, Iterator, Optional, TypeVar

from imgfit_batch import signals
from imgfit_batch.errors import ImgfitError, NodeLocalError, SpecError, TransientError, UnavailableError, is_node_local

DEFAULT_RETRY_SECONDS = 60.0
RETRY_SECONDS_ENV = "IMGFIT_S3_RETRY_SECONDS"
FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 0.2, 8.0

_settings: dict = {"endpoint_url": None, "region": None, "retry_seconds": None}
_window_cap: contextvars.ContextVar[Optional[float]] = contextvars.ContextVar("s3_retry_cap", default=None)
_UMASK = os.umask(0o022)
os.umask(_UMASK)
T = TypeVar("T")


def configure(endpoint_url: Optional[str] = None, region: Optional[str] = None,
              retry_seconds: Optional[float] = None) -> None:
    _settings.update(endpoint_url=endpoint_url, region=region, retry_seconds=retry_seconds)


def retry_seconds() -> float:
    """How long transient S3 failures are retried: IMGFIT_S3_RETRY_SECONDS, else the
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
        window = _settings["retry_seconds"] if _settings["retry_seconds"] is not None else DEFAULT_RETRY_SECONDS
    cap = _window_cap.get()
    return window if cap is None else min(window, cap)


@contextlib.contextmanager
def patience(seconds: float) -> Iterator[None]:
    """Retry S3 calls in this block (this thread) for at most `seconds`: for
    best-effort calls (a lease heartbeat) that must not hold anything up."""
    token = _window_cap.set(seconds)
    try:
        yield
    finally:
        _window_cap.reset(token)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# The characters of AWS's rules, widened to what older buckets and S3-compatible stores
# (Ceph, MinIO) still allow (upper case, underscores, up to 255 characters): a real bucket
# is never refused; a space, a slash-less typo or a URL's punctuation is.
_BUCKET = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,253}[A-Za-z0-9])?")


def check_uri(uri: str, need_key: bool = False) -> str:
    """`uri` in canonical form, or ValueError saying what is wrong with it.

    Schemes are matched in any case and written in lower case (S3://b/k is s3://b/k, as
    other S3 tools read it). Only local paths, file:// and s3:// are accepted; an S3 URI
    needs a valid bucket, and with `need_key` (an object to read) a key that is not a folder.
    """
    if "\x00" in uri:
        raise ValueError(f"{uri!r} contains a NUL character, which no path or key can hold")
    m = _SCHEME.match(uri)
    if m is None:
        if uri[:3].lower() == "s3:":
            raise ValueError(f"{uri!r} is not an S3 URI; did you mean s3://{uri[3:].lstrip('/')}?")
        return uri
    scheme, rest = m.group(1).lower(), uri[m.end():]
    if scheme == "file":
        return "file://" + rest
    if scheme != "s3":
        raise ValueError(f"{uri}: the scheme {m.group(1)}:// is not supported; use a local path, file:// or s3://bucket/key")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket; expected s3://bucket/{'key' if need_key else 'prefix'}")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"{uri}: {bucket!r} is not a valid S3 bucket name (letters, digits, dots and hyphens, starting and ending with a letter or digit)")
    if need_key and (not key or key.endswith("/")):
        raise ValueError(f"{uri}: names a bucket or folder, not an object; expected s3://bucket/key")
    return "s3://" + rest


def contains(outer: str, inner: str) -> bool:
    """Whether location `inner` is `outer` itself or anywhere under it: on S3 the same
    bucket and a key under the prefix; locally by absolute path and by resolved path
    (symlinks followed), so no spelling of a path slips past."""
    if is_s3(outer) != is_s3(inner):
        return False
    if is_s3(outer):
        (out_bucket, out_key), (in_bucket, in_key) = split_s3(outer), split_s3(inner)
        out_key = out_key.rstrip("/")
        return out_bucket == in_bucket and (not out_key or in_key == out_key or in_key.startswith(out_key + "/"))
    o, i = local_path(outer), local_path(inner)
    for a, b in ((os.path.abspath(o), os.path.abspath(i)), (os.path.realpath(o), os.path.realpath(i))):
        if b == a or b.startswith(a.rstrip("/") + "/"):
            return True
    return False


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/") if base not in ("/", "") else base
    for part in parts:
        out = f"{out}/{part.strip('/')}" if out else part
    return out


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UnavailableError(f"{uri}: not an S3 URI (expected s3://bucket/key)")
    return bucket, key


# ---------------------------------------------------------------- S3


@lru_cache(maxsize=8)
def _client(endpoint_url: Optional[str], region: Optional[str]):
    import boto3
    from botocore.config import Config

    # one attempt per call: _s3_call retries, over its own window
    config = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=10, read_timeout=60)
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def s3():
    return _client(_settings["endpoint_url"], _settings["region"])


# Error codes S3 (and S3-compatible stores) answer when another try may pass.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "OperationAborted",
    "429", "500", "502", "503", "504",
})


class _Retryable(Exception):
    """A failed S3 call that another try may get past; `reason` says what happened."""

    def __init__(self, reason: str, hint: str = ""):
        super().__init__(reason)
        self.reason, self.hint = reason, hint


STOP_MARGIN_SECONDS = 15.0  # after a stop, retrying ends this long before the grace period does


def _s3_call(uri: str, action: str, call: Callable[[], T]) -> T:
    """`call()` (one whole S3 operation), retried while it fails transiently, with
    exponential backoff and jitter, for retry_seconds(); then a TransientError. A
    permanent failure raises at once; after a stop signal, retrying ends in time to
    exit within the grace period."""
    window, start, backoff, tries = retry_seconds(), time.monotonic(), FIRST_BACKOFF_SECONDS, 0
    while True:
        tries += 1
        try:
            return call()
        except Exception as exc:
            failure = _diagnose(uri, action, exc)
            if failure is None:
                raise
            if not isinstance(failure, _Retryable):
                raise failure from None
        end = start + window
        left = _retry_end(end) - time.monotonic()
        pause = min(left, backoff / 2 + random.uniform(0, backoff / 2))  # "equal jitter": never a burst of instant retries
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


def _gave_up(uri: str, action: str, failure: _Retryable, tries: int, seconds: float) -> TransientError:
    stop = signals.requested()
    why = (f"not retrying: stopped by {stop}" if stop else
           f"still failing after {tries} tries over {seconds:.0f}s")
    hint = f"; {failure.hint}" if failure.hint else ""
    error = TransientError(f"{uri}: {action} failed ({failure.reason}), {why}{hint}; "
                           "a transient fault of the store or the network: run the job again (it resumes)")
    error.detail = f"{uri}: {action} failed ({failure.reason}), {why}{hint}"  # without the advice, for callers that add their own
    return error


def _diagnose(uri: str, action: str, exc: BaseException):
    """What a failed S3 call means: a _Retryable, a permanent ImgfitError, or None
    (not an S3 failure: let it through, e.g. a local disk filling up)."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import (
        BotoCoreError, ChecksumError, ClientError, ConnectionError as BotoConnectionError, EndpointConnectionError,
        HTTPClientError, IncompleteReadError, NoCredentialsError, PartialCredentialsError,
    )
    import http.client

    import urllib3.exceptions

    if isinstance(exc, ImgfitError):
        return exc
    if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:  # download_file's own give-up
        return _diagnose(uri, action, exc.last_exception)
    if isinstance(exc, S3UploadFailedError):  # upload_file wraps the ClientError (implicitly chained)
        if isinstance(exc.__context__, ClientError):
            return _diagnose(uri, action, exc.__context__)
        found = re.search(r"An error occurred \(([^)]+)\)", str(exc))
        return _code_failure(uri, action, found.group(1) if found else "UploadFailed", None)
    if isinstance(exc, ClientError):
        err, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
        return _code_failure(uri, action, str(err.get("Code", "")), meta.get("HTTPStatusCode"))
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return UnavailableError(
            f"{uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or a web identity (IRSA)")
    if isinstance(exc, EndpointConnectionError):
        endpoint = getattr(exc, "kwargs", {}).get("endpoint_url", "")
        return _Retryable(f"cannot reach the S3 endpoint {endpoint}",
                          "check AWS_ENDPOINT_URL / storage.endpoint_url and the network")
    if isinstance(exc, (HTTPClientError, BotoConnectionError, IncompleteReadError, ChecksumError)):
        return _Retryable(type(exc).__name__)  # dropped/closed/timed out, or a body cut short
    if isinstance(exc, (urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError, TimeoutError)):
        return _Retryable(type(exc).__name__)  # the same, surfacing beneath botocore (mid-body reads)
    if isinstance(exc, BotoCoreError):
        return UnavailableError(f"{uri}: S3 {action} failed: {type(exc).__name__}")
    return None


def _code_failure(uri: str, action: str, code: str, status: Optional[int]):
    if code in TRANSIENT_CODES or (status is not None and (status >= 500 or status == 429)):
        return _Retryable(f"{code or status}" + (f", HTTP {status}" if status and str(status) != code else ""))
    return _client_error(uri, action, code)


def _client_error(uri: str, action: str, code: str) -> UnavailableError:
    if code in ("NoSuchKey", "404", "NotFound"):
        return UnavailableError(f"{uri}: not found in S3; check the bucket and key")
    if code == "NoSuchBucket":
        return UnavailableError(f"{uri}: the bucket does not exist")
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
        return UnavailableError(f"{uri}: access denied for {action}; check the credentials' permissions")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        return UnavailableError(f"{uri}: S3 rejected the credentials ({code}); check them")
    return UnavailableError(f"{uri}: S3 {action} failed ({code or 'unknown error'})")


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    # num_download_attempts=1: a cut-short download is retried whole by _s3_call
    return TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024,
                          num_download_attempts=1)


# ---------------------------------------------------------------- local


@contextlib.contextmanager
def _local_errors(uri: str, action: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        where = "" if os.path.isabs(local_path(uri)) else f" (relative to the current folder {os.getcwd()})"
        raise UnavailableError(f"{uri}: not found{where}") from None
    except IsADirectoryError:
        raise UnavailableError(f"{uri}: is a folder, expected a file") from None
    except NotADirectoryError:
        raise UnavailableError(f"{uri}: a part of this path is a file, not a folder") from None
    except PermissionError:
        raise UnavailableError(f"{uri}: permission denied ({action}); check the path's owner and mode") from None
    except OSError as exc:
        if is_node_local(exc):
            raise NodeLocalError(f"{uri}: cannot {action}: {exc.strerror or exc} on this node; "
                                 "free space (or run elsewhere) and run again: it resumes") from None
        raise UnavailableError(f"{uri}: cannot {action}: {exc.strerror or exc}") from None


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_local_write(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


# ---------------------------------------------------------------- the interface


_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


# ---------------------------------------------------------------- links out of a location


class LinkOutside(UnavailableError):
    """A path inside a location that a command reads (report's, status's, render's,
    compare's) that resolves, through a symlink, to somewhere outside it."""


_confined: list[tuple[str, str, str]] = []  # (the location as given, its absolute path, its real path)


@contextlib.contextmanager
def confined(*locations: str) -> Iterator[None]:
    """While inside: a local path under one of `locations` is read only if it resolves,
    through every symlink, to a path under that location's own real path (the location
    itself may be a link). S3 has no links; a path outside every location is not checked."""
    added = [(uri, os.path.abspath(local_path(uri)), os.path.realpath(local_path(uri)))
             for uri in locations if not is_s3(uri)]
    _confined.extend(added)
    try:
        yield
    finally:
        for item in added:
            _confined.remove(item)


def _is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def outside(uri: str, resolved: Optional[str] = None) -> Optional[tuple[str, str]]:
    """(the location, the real path) when the local `uri` lies in a confined location but
    resolves (or, given, `resolved` is) outside it; None otherwise."""
    if is_s3(uri) or not _confined:
        return None
    path = os.path.abspath(local_path(uri))
    for location, given, real in _confined:
        if _is_under(path, given):
            target = resolved or os.path.realpath(path)
            if not _is_under(target, real):
                return location, target
    return None


def check_inside(uri: str, resolved: Optional[str] = None) -> None:
    """Raises LinkOutside when `uri` is a link out of the location being read."""
    found = outside(uri, resolved)
    if found is not None:
        location, target = found
        raise LinkOutside(f"{uri}: a link to {target}, outside {location}; nothing outside the location is read "
                          "(put the file itself there instead of a link)")


def _check_opened(uri: str, fd: int) -> None:
    """check_inside on what was really opened (a link swapped in after the check)."""
    if not _confined or is_s3(uri):
        return
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (macOS): the check before the open stands
        return
    check_inside(uri, opened)


def open_local(uri: str, what: str = "file"):
    """A local file opened for reading, refusing anything but a regular file (a FIFO
    would block forever, /dev/zero never ends). Opened non-blocking, so a FIFO without
    a writer cannot block the open itself, and checked on the open descriptor, so
    nothing can be swapped in between. Raises OSError for _local_errors to explain."""
    check_inside(uri)
    fd = os.open(local_path(uri), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        _check_opened(uri, fd)
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(uri)
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
            hint = "; to pipe a spec in, use - (stdin)" if what == "spec" else ""
            raise UnavailableError(f"{uri}: is {kind}, not a regular file; the {what} must be a file{hint}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(uri: str, what: str = "file", max_bytes: Optional[int] = None) -> bytes:
    """The whole object; with `max_bytes`, at most that many plus one (callers refuse
    what is larger without ever holding more)."""
    limit = -1 if max_bytes is None else max_bytes + 1
    if is_s3(uri):
        bucket, key = split_s3(uri)
        # the body is read inside the call: a read cut short mid-body is retried whole
        return _s3_call(uri, f"reading the {what}", lambda: s3().get_object(Bucket=bucket, Key=key)["Body"].read(
            *(() if limit < 0 else (limit,))))
    with _local_errors(uri, f"read the {what}"):
        with open_local(uri, what) as fh:
            return fh.read(limit)


def size(uri: str, what: str = "file") -> int:
    """The object's size in bytes, from stat (a regular file only) or HEAD, nothing read."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            return int(_s3_call(uri, f"reading the {what}",
                                lambda: s3().head_object(Bucket=bucket, Key=key))["ContentLength"])
        except UnavailableError:  # a HEAD's answer has no body, so no error code: a GET names the cause
            read_head(uri, 1, what)
            raise
    with _local_errors(uri, f"read the {what}"):
        with open_local(uri, what) as fh:
            return os.fstat(fh.fileno()).st_size


def read_head(uri: str, num_bytes: int, what: str = "file") -> bytes:
    """The first `num_bytes` of the object (fewer if it is shorter); on S3 a ranged GET,
    so the rest is never sent."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return _s3_call(uri, f"reading the {what}", lambda: s3().get_object(
            Bucket=bucket, Key=key, Range=f"bytes=0-{num_bytes - 1}")["Body"].read(num_bytes))
    with _local_errors(uri, f"read the {what}"):
        with open_local(uri, what) as fh:
            return fh.read(num_bytes)


def write_bytes(uri: str, data: bytes) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _s3_call(uri, "writing", lambda: s3().put_object(Bucket=bucket, Key=key, Body=data))
        return
    with _local_errors(uri, "write"):
        _atomic_local_write(local_path(uri), lambda fh: fh.write(data))


def upload_file(path: str, uri: str) -> None:
    """Copy a local file to `uri` (atomic locally; multipart on S3 for large files)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _s3_call(uri, "uploading", lambda: s3().upload_file(path, bucket, key, Config=_transfer_config()))
        return
    dest = local_path(uri)
    if os.path.abspath(dest) == os.path.abspath(path):
        return
    with _local_errors(uri, "write"):
        with open(path, "rb") as src:
            _atomic_local_write(dest, lambda fh: shutil.copyfileobj(src, fh, 1 << 20))


def download_file(uri: str, path: str, what: str = "file") -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        _s3_call(uri, f"downloading the {what}", lambda: s3().download_file(bucket, key, path, Config=_transfer_config()))
        return
    src = local_path(uri)
    if os.path.abspath(src) == os.path.abspath(path):
        return
    check_inside(uri)
    with _local_errors(uri, f"read the {what}"):
        with open(src, "rb") as fh:
            _atomic_local_write(path, lambda out: shutil.copyfileobj(fh, out, 1 << 20))


def exists(uri: str) -> bool:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                s3().head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
            return True

        return _s3_call(uri, "checking", head)
    return os.path.exists(local_path(uri))


def list_names(prefix: str) -> list[str]:
    """Names of the files directly inside the folder/prefix `prefix` (sorted)."""
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""

        def listing() -> list[str]:
            pages = s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key, Delimiter="/")
            return [obj["Key"][len(key):] for page in pages for obj in page.get("Contents", [])]

        return sorted(_s3_call(prefix, "listing", listing))
    path = local_path(prefix)
    if not os.path.isdir(path):
        return []
    with _local_errors(prefix, "list"):
        return sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))


def list_files(prefix: str, max_depth: int) -> list[str]:
    """Paths (relative to the folder/prefix `prefix`, `/`-separated) of the files under it
    at most `max_depth` folders down (`a/b/c.json` is 2 down), sorted. On S3 one paginated
    listing of the whole prefix; locally a walk that goes no deeper and follows no folder
    symlinks. A folder below `prefix` that vanishes or cannot be read meanwhile is left out;
    `prefix` itself unreadable is an error (a missing local folder lists nothing)."""
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""

        def listing() -> list[str]:
            pages = s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            return [obj["Key"][len(key):] for page in pages for obj in page.get("Contents", [])]

        return sorted(p for p in _s3_call(prefix, "listing", listing) if p and p.count("/") <= max_depth)
    root = local_path(prefix)
    if not os.path.isdir(root):
        return []
    found: list[str] = []

    def walk(folder: str, rel: str, depth: int) -> None:
        try:
            with os.scandir(folder) as entries:
                entries = list(entries)
        except OSError:
            if not rel:
                raise
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if depth < max_depth:
                        walk(entry.path, f"{rel}{entry.name}/", depth + 1)
                elif entry.is_file():
                    found.append(rel + entry.name)
            except OSError:  # vanished meanwhile
                continue

    with _local_errors(prefix, "list"):
        walk(root, "", 0)
    return sorted(found)


def delete(uri: str) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _s3_call(uri, "deleting", lambda: s3().delete_object(Bucket=bucket, Key=key))
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(local_path(uri))


def delete_matching(prefix: str, made_by_us: Callable[[str], bool]) -> None:
    """Delete the files under a folder/prefix whose path relative to it (`video/seg-000001.mp4`)
    `made_by_us` accepts, and nothing else: --restart clears the job's checkpoints, never
    a file a user keeps beside them. Emptied local folders go too."""
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""

        def delete_all() -> None:  # a retry starts over: what was deleted is no longer listed
            for page in s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                objs = [{"Key": o["Key"]} for o in page.get("Contents", []) if made_by_us(o["Key"][len(key):])]
                if objs:
                    s3().delete_objects(Bucket=bucket, Delete={"Objects": objs})

        _s3_call(prefix, "deleting", delete_all)
        return
    root = local_path(prefix)
    with _local_errors(prefix, "delete"):
        for folder, _, names in os.walk(root, topdown=False):
            for name in names:
                path = os.path.join(folder, name)
                if made_by_us(os.path.relpath(path, root).replace(os.sep, "/")):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            with contextlib.suppress(OSError):  # not empty: a user's files remain
                os.rmdir(folder)


def discard_local(folder: str, made_by_us: Callable[[str], bool]) -> None:
    """Best-effort cleanup of the job's own leftovers in a local folder, by name (see
    delete_matching): a user's files stay, and a failure only leaves files behind."""
    with contextlib.suppress(Exception):
        delete_matching(folder, made_by_us)


def check_writable(folder: str) -> None:
    """Fail before training if the output location cannot be written."""
    probe = join(folder, f".imgfit-write-probe-{os.getpid()}")
    if not is_s3(folder):
        try:
            os.makedirs(local_path(folder), exist_ok=True)
        except OSError as exc:
            if is_node_local(exc):  # no inode left for the folder: this node, now
                raise NodeLocalError(f"{folder}: cannot create the output folder ({exc.strerror or exc}) on this node; "
                                     "free space (or run elsewhere) and run again") from None
            raise UnavailableError(f"{folder}: cannot create the output folder ({exc.strerror or exc}); "
                                   "check the path and its permissions") from None
    write_bytes(probe, b"ok")
    delete(probe)

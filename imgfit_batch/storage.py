"""Local folders and S3 behind one small set of functions on URI strings.

Locations stay strings (a Path would mangle s3://). Local writes are atomic
(temp file in the same folder, fsync, rename); S3 objects appear whole by
nature. Every failure becomes an UnavailableError naming the URI and what to do.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from functools import lru_cache
from typing import Callable, Iterator, Optional

from imgfit_batch.errors import TransientError, UnavailableError, is_node_local

_settings = {"endpoint_url": None, "region": None}
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def configure(endpoint_url: Optional[str] = None, region: Optional[str] = None) -> None:
    _settings["endpoint_url"], _settings["region"] = endpoint_url, region


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

    config = Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=10, read_timeout=60)
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def s3():
    return _client(_settings["endpoint_url"], _settings["region"])


@contextlib.contextmanager
def _s3_errors(uri: str, action: str) -> Iterator[None]:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from boto3.exceptions import S3UploadFailedError

    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        raise _client_error(uri, action, code) from None
    except S3UploadFailedError as exc:
        text = str(exc)
        code = next((c for c in ("AccessDenied", "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch") if c in text), "")
        raise _client_error(uri, action, code or "UploadFailed") from None
    except (NoCredentialsError, PartialCredentialsError):
        raise UnavailableError(
            f"{uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or a web identity (IRSA)"
        ) from None
    except EndpointConnectionError as exc:
        raise UnavailableError(f"{uri}: cannot reach the S3 endpoint {getattr(exc, 'kwargs', {}).get('endpoint_url', '')}; "
                               "check AWS_ENDPOINT_URL / storage.endpoint_url and the network") from None
    except BotoCoreError as exc:
        raise UnavailableError(f"{uri}: S3 {action} failed: {type(exc).__name__}") from None


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

    return TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024)


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
            raise TransientError(f"{uri}: cannot {action}: {exc.strerror or exc} on this node; "
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


def open_local(uri: str, what: str = "file"):
    """A local file opened for reading, refusing anything but a regular file (a FIFO
    would block forever, /dev/zero never ends). Opened non-blocking, so a FIFO without
    a writer cannot block the open itself, and checked on the open descriptor, so
    nothing can be swapped in between. Raises OSError for _local_errors to explain."""
    fd = os.open(local_path(uri), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
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
        with _s3_errors(uri, f"reading the {what}"):
            return s3().get_object(Bucket=bucket, Key=key)["Body"].read(*(() if limit < 0 else (limit,)))
    with _local_errors(uri, f"read the {what}"):
        with open_local(uri, what) as fh:
            return fh.read(limit)


def write_bytes(uri: str, data: bytes) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "writing"):
            s3().put_object(Bucket=bucket, Key=key, Body=data)
        return
    with _local_errors(uri, "write"):
        _atomic_local_write(local_path(uri), lambda fh: fh.write(data))


def upload_file(path: str, uri: str) -> None:
    """Copy a local file to `uri` (atomic locally; multipart on S3 for large files)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "uploading"):
            s3().upload_file(path, bucket, key, Config=_transfer_config())
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
        with _s3_errors(uri, f"downloading the {what}"):
            s3().download_file(bucket, key, path, Config=_transfer_config())
        return
    src = local_path(uri)
    if os.path.abspath(src) == os.path.abspath(path):
        return
    with _local_errors(uri, f"read the {what}"):
        with open(src, "rb") as fh:
            _atomic_local_write(path, lambda out: shutil.copyfileobj(fh, out, 1 << 20))


def exists(uri: str) -> bool:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        from botocore.exceptions import ClientError

        try:
            with _s3_errors(uri, "checking"):
                try:
                    s3().head_object(Bucket=bucket, Key=key)
                except ClientError as exc:
                    if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                        return False
                    raise
        except UnavailableError:
            raise
        return True
    return os.path.exists(local_path(uri))


def list_names(prefix: str) -> list[str]:
    """Names of the files directly inside the folder/prefix `prefix` (sorted)."""
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        names = []
        with _s3_errors(prefix, "listing"):
            paginator = s3().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=key, Delimiter="/"):
                names += [obj["Key"][len(key):] for obj in page.get("Contents", [])]
        return sorted(names)
    path = local_path(prefix)
    if not os.path.isdir(path):
        return []
    with _local_errors(prefix, "list"):
        return sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))


def delete(uri: str) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "deleting"):
            s3().delete_object(Bucket=bucket, Key=key)
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
        with _s3_errors(prefix, "deleting"):
            paginator = s3().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                objs = [{"Key": o["Key"]} for o in page.get("Contents", []) if made_by_us(o["Key"][len(key):])]
                if objs:
                    s3().delete_objects(Bucket=bucket, Delete={"Objects": objs})
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
            raise UnavailableError(f"{folder}: cannot create the output folder ({exc.strerror or exc}); "
                                   "check the path and its permissions") from None
    write_bytes(probe, b"ok")
    delete(probe)

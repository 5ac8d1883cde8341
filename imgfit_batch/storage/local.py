"""Local folders (and file://): atomic writes (temp file in the same folder, fsync,
rename), reads that refuse anything but a regular file, and the confinement of
symlinks inside a location being read (storage.confined)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator

from imgfit_batch.errors import NodeLocalError, UnavailableError, is_node_local
from imgfit_batch.storage.base import Store

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


@contextlib.contextmanager
def errors(uri: str, action: str) -> Iterator[None]:
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
            raise NodeLocalError(
                f"{uri}: cannot {action}: {exc.strerror or exc} on this node; "
                "free space (or run elsewhere) and run again: it resumes"
            ) from None
        raise UnavailableError(f"{uri}: cannot {action}: {exc.strerror or exc}") from None


def fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str, write) -> None:
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
    fsync_dir(folder)


# ---------------------------------------------------------------- links out of a location


class LinkOutside(UnavailableError):
    """A path inside a location that a command reads (report's, status's, render's,
    compare's) that resolves, through a symlink, to somewhere outside it."""


_confined: list[tuple[str, str, str]] = []  # (the location as given, its absolute path, its real path)


@contextlib.contextmanager
def confined(*locations: str) -> Iterator[None]:
    """See storage.confined (which hands over only the local locations)."""
    added = [(uri, os.path.abspath(local_path(uri)), os.path.realpath(local_path(uri))) for uri in locations]
    _confined.extend(added)
    try:
        yield
    finally:
        for item in added:
            _confined.remove(item)


def _is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def outside(uri: str, resolved: str | None = None) -> tuple[str, str] | None:
    if not _confined:
        return None
    path = os.path.abspath(local_path(uri))
    for location, given, real in _confined:
        if _is_under(path, given):
            target = resolved or os.path.realpath(path)
            if not _is_under(target, real):
                return location, target
    return None


def check_inside(uri: str, resolved: str | None = None) -> None:
    found = outside(uri, resolved)
    if found is not None:
        location, target = found
        raise LinkOutside(
            f"{uri}: a link to {target}, outside {location}; nothing outside the location is read "
            "(put the file itself there instead of a link)"
        )


def _check_opened(uri: str, fd: int) -> None:
    """check_inside on what was really opened (a link swapped in after the check)."""
    if not _confined:
        return
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (macOS): the check before the open stands
        return
    check_inside(uri, opened)


_NOT_REGULAR = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def open_local(uri: str, what: str = "file"):
    """A local file opened for reading, refusing anything but a regular file (a FIFO
    would block forever, /dev/zero never ends). Opened non-blocking, so a FIFO without
    a writer cannot block the open itself, and checked on the open descriptor, so
    nothing can be swapped in between. Raises OSError for `errors` to explain."""
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


# ---------------------------------------------------------------- the store


class LocalStore(Store):
    def read(self, uri: str, what: str, max_bytes: int | None) -> bytes:
        with errors(uri, f"read the {what}"):
            with open_local(uri, what) as fh:
                if max_bytes is None:
                    return fh.read()
                # read(n) allocates n bytes up front: ask for what the file holds (+1 shows a file
                # over the bound), not for the bound, which can be tens of GB (a node's memory)
                size = os.fstat(fh.fileno()).st_size
                data = fh.read(min(size, max_bytes) + 1)
                if size < len(data) <= max_bytes:  # it grew while we read: the rest, up to the bound
                    data += fh.read(max_bytes + 1 - len(data))
                return data

    def read_head(self, uri: str, num_bytes: int, what: str) -> bytes:
        with errors(uri, f"read the {what}"):
            with open_local(uri, what) as fh:
                return fh.read(num_bytes)

    def read_tail(self, uri: str, num_bytes: int, what: str) -> bytes:
        with errors(uri, f"read the {what}"):
            with open_local(uri, what) as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - num_bytes))
                return fh.read(num_bytes)

    def size(self, uri: str, what: str) -> int:
        with errors(uri, f"read the {what}"):
            with open_local(uri, what) as fh:
                return os.fstat(fh.fileno()).st_size

    def write(self, uri: str, data: bytes) -> None:
        with errors(uri, "write"):
            atomic_write(local_path(uri), lambda fh: fh.write(data))

    def upload(self, path: str, uri: str) -> None:
        dest = local_path(uri)
        if os.path.abspath(dest) == os.path.abspath(path):
            return
        with errors(uri, "write"):
            with open(path, "rb") as src:
                atomic_write(dest, lambda fh: shutil.copyfileobj(src, fh, 1 << 20))

    def download(self, uri: str, path: str, what: str) -> None:
        src = local_path(uri)
        if os.path.abspath(src) == os.path.abspath(path):
            return
        check_inside(uri)
        with errors(uri, f"read the {what}"):
            with open(src, "rb") as fh:
                atomic_write(path, lambda out: shutil.copyfileobj(fh, out, 1 << 20))

    def exists(self, uri: str) -> bool:
        return os.path.exists(local_path(uri))

    def list_names(self, prefix: str) -> list[str]:
        path = local_path(prefix)
        if not os.path.isdir(path):
            return []
        with errors(prefix, "list"):
            return sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))

    def list_files(self, prefix: str, max_depth: int) -> list[str]:
        """A walk that goes no deeper and follows no folder symlinks; a folder below
        `prefix` that vanishes or cannot be read meanwhile is left out."""
        root = local_path(prefix)
        if not os.path.isdir(root):
            return []
        found: list[str] = []

        def walk(folder: str, rel: str, depth: int) -> None:
            try:
                with os.scandir(folder) as scan:
                    entries = list(scan)
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

        with errors(prefix, "list"):
            walk(root, "", 0)
        return sorted(found)

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local_path(uri))

    def delete_matching(self, prefix: str, made_by_us: Callable[[str], bool]) -> None:
        root = local_path(prefix)
        with errors(prefix, "delete"):
            for folder, _, names in os.walk(root, topdown=False):
                for name in names:
                    path = os.path.join(folder, name)
                    if made_by_us(os.path.relpath(path, root).replace(os.sep, "/")):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
                with contextlib.suppress(OSError):  # not empty: a user's files remain
                    os.rmdir(folder)

    def prepare_output(self, folder: str) -> None:
        try:
            os.makedirs(local_path(folder), exist_ok=True)
        except OSError as exc:
            if is_node_local(exc):  # no inode left for the folder: this node, now
                raise NodeLocalError(
                    f"{folder}: cannot create the output folder ({exc.strerror or exc}) on this node; "
                    "free space (or run elsewhere) and run again"
                ) from None
            raise UnavailableError(
                f"{folder}: cannot create the output folder ({exc.strerror or exc}); check the path and its permissions"
            ) from None

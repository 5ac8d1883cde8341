"""Object stores reached through fsspec (GCS through gcsfs, Azure Blob through adlfs):
one Store for all of them; a backend module (gcs.py, azure.py) names its protocol,
makes its filesystem from the platform's own credential chain, and says what its
own failures mean.

Every call runs inside the shared retry window (retry.py). Objects appear whole by
the stores' nature (a single-request or committed upload), so a write is atomic;
a download lands in a temp file beside its target and is renamed on success.
Listings are never cached: another process (a resumed run) writes the same prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Callable

from imgfit_batch.errors import ImgfitError, UnavailableError
from imgfit_batch.storage import retry
from imgfit_batch.storage.base import Store


class FsspecStore(Store):
    name = "the store"  # for messages: "GCS", "Azure Blob Storage"
    credentials_hint = ""  # what to set when credentials are missing or rejected

    def filesystem(self):
        """The fsspec filesystem, from the environment's credentials (cached by the subclass)."""
        raise NotImplementedError

    def classify_own(self, uri: str, action: str, exc: BaseException):
        """The backend's own exception types; None when it does not know `exc`."""
        return None

    # ------------------------------------------------------------ failure kinds

    def classify(self, uri: str, action: str, exc: BaseException):
        if isinstance(exc, ImgfitError):
            return exc
        own = self.classify_own(uri, action, exc)
        if own is not None:
            return own
        if isinstance(exc, FileNotFoundError):
            return UnavailableError(f"{uri}: not found in {self.name}; check the bucket/container and key")
        if isinstance(exc, PermissionError) or (
            isinstance(exc, OSError) and exc.errno is None and str(exc).startswith("Forbidden")
        ):
            return UnavailableError(f"{uri}: access denied for {action}; check the credentials' permissions")
        if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
            return retry.Retryable(type(exc).__name__)
        with contextlib.suppress(ImportError):
            import aiohttp

            if isinstance(exc, aiohttp.ClientResponseError):
                if exc.status == 429 or exc.status >= 500:
                    return retry.Retryable(f"HTTP {exc.status}")
                return UnavailableError(f"{uri}: {self.name} {action} failed (HTTP {exc.status})")
            if isinstance(exc, aiohttp.ClientError):  # dropped, refused, a body cut short
                return retry.Retryable(type(exc).__name__)
        return None  # e.g. this node's disk full during a download: the caller's to explain

    def _call(self, uri: str, action: str, fn):
        self._fs(uri)  # the library imported and the client made before the window's clock starts
        return retry.call(uri, action, fn, self.classify)

    extra = ""  # the package extra that brings the backend's library

    def _fs(self, uri: str):
        try:
            return self.filesystem()
        except ImportError as exc:
            raise UnavailableError(
                f"{uri}: {self.name} needs {exc.name or 'its library'}, which is not installed: "
                f"pip install 'imgfit-batch[{self.extra}]' (the Docker image has it)"
            ) from None
        except Exception as exc:
            failure = self.classify(uri, "connecting", exc)
            if failure is None or isinstance(failure, retry.Retryable):
                raise UnavailableError(
                    f"{uri}: cannot connect to {self.name} ({type(exc).__name__}); {self.credentials_hint}"
                ) from None
            raise failure from None

    def _path(self, uri: str) -> str:
        return self._fs(uri)._strip_protocol(uri)

    # ------------------------------------------------------------ the contract

    def _info(self, uri: str) -> dict:
        info = self._fs(uri).info(uri)
        if info.get("type") != "file":
            raise FileNotFoundError(uri)  # a "folder" (prefix), not an object
        return info

    def size(self, uri: str, what: str) -> int:
        return int(self._call(uri, f"reading the {what}", lambda: self._info(uri))["size"])

    def read(self, uri: str, what: str, max_bytes: int | None) -> bytes:
        def read() -> bytes:
            fs = self._fs(uri)
            if max_bytes is None:
                return fs.cat_file(uri)
            size = int(self._info(uri)["size"])
            limit = max_bytes + 1
            return fs.cat_file(uri, start=0, end=min(size, limit))[:limit] if size else b""

        return self._call(uri, f"reading the {what}", read)

    def read_head(self, uri: str, num_bytes: int, what: str) -> bytes:
        def head() -> bytes:
            size = int(self._info(uri)["size"])
            return self._fs(uri).cat_file(uri, start=0, end=min(size, num_bytes)) if size else b""

        return self._call(uri, f"reading the {what}", head)

    def read_tail(self, uri: str, num_bytes: int, what: str) -> bytes:
        def tail() -> bytes:
            size = int(self._info(uri)["size"])
            return self._fs(uri).cat_file(uri, start=max(0, size - num_bytes), end=size) if size else b""

        return self._call(uri, f"reading the {what}", tail)

    def write(self, uri: str, data: bytes) -> None:
        self._call(uri, "writing", lambda: self._fs(uri).pipe_file(uri, data))

    def upload(self, path: str, uri: str) -> None:
        self._call(uri, "uploading", lambda: self._fs(uri).put_file(path, uri))

    def download(self, uri: str, path: str, what: str) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)

        def download() -> None:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
            os.close(fd)
            try:
                self._fs(uri).get_file(uri, tmp)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

        self._call(uri, f"downloading the {what}", download)

    def exists(self, uri: str) -> bool:
        def check() -> bool:
            try:
                self._info(uri)
            except FileNotFoundError:
                return False
            return True

        return self._call(uri, "checking", check)

    def _find(self, prefix: str) -> list[str]:
        """Every object's path under the folder/prefix, relative to it."""
        fs = self._fs(prefix)
        fs.invalidate_cache()
        root = self._path(prefix).rstrip("/") + "/"
        try:
            found = fs.find(root.rstrip("/"), withdirs=False)
        except FileNotFoundError:
            return []
        return [p[len(root) :] for p in found if p.startswith(root) and len(p) > len(root)]

    def list_names(self, prefix: str) -> list[str]:
        return sorted(p for p in self._call(prefix, "listing", lambda: self._find(prefix)) if "/" not in p)

    def list_files(self, prefix: str, max_depth: int) -> list[str]:
        return sorted(p for p in self._call(prefix, "listing", lambda: self._find(prefix)) if p.count("/") <= max_depth)

    def delete(self, uri: str) -> None:
        def delete() -> None:
            with contextlib.suppress(FileNotFoundError):
                self._fs(uri).rm_file(uri)

        self._call(uri, "deleting", delete)

    def delete_matching(self, prefix: str, made_by_us: Callable[[str], bool]) -> None:
        root = self._path(prefix).rstrip("/")

        def delete_all() -> None:  # a retry starts over: what was deleted is no longer listed
            doomed = [f"{root}/{rel}" for rel in self._find(prefix) if made_by_us(rel)]
            fs = self._fs(prefix)
            for path in doomed:
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(path)

        self._call(prefix, "deleting", delete_all)

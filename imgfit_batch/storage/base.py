"""The contract every store keeps (local folders, S3, GCS, Azure Blob).

Locations are URI strings; a backend is handed only URIs of its own schemes
(storage/__init__.py chooses). Every method turns the store's own failures into
our errors: UnavailableError (exit 3: missing, denied, bad credentials),
TransientError (exit 69, after the shared retry window: throttling, 5xx, dropped
connections) or NodeLocalError (exit 69: this node's disk is full) — `classify`
is where a backend says which a failure is.
"""

from __future__ import annotations

from collections.abc import Callable


class Store:
    def read(self, uri: str, what: str, max_bytes: int | None) -> bytes:
        """The whole object; with `max_bytes`, at most that many plus one."""
        raise NotImplementedError

    def read_head(self, uri: str, num_bytes: int, what: str) -> bytes:
        """The first `num_bytes` (fewer if shorter), nothing more sent."""
        raise NotImplementedError

    def read_tail(self, uri: str, num_bytes: int, what: str) -> bytes:
        """The last `num_bytes` (all of it if shorter), nothing before them sent."""
        raise NotImplementedError

    def size(self, uri: str, what: str) -> int:
        raise NotImplementedError

    def write(self, uri: str, data: bytes) -> None:
        """Atomically: a reader sees the old object, the new one whole, or none."""
        raise NotImplementedError

    def upload(self, path: str, uri: str) -> None:
        """A local file copied to `uri`, atomically."""
        raise NotImplementedError

    def download(self, uri: str, path: str, what: str) -> None:
        raise NotImplementedError

    def exists(self, uri: str) -> bool:
        raise NotImplementedError

    def list_names(self, prefix: str) -> list[str]:
        """Names of the files directly inside the folder/prefix, sorted."""
        raise NotImplementedError

    def list_files(self, prefix: str, max_depth: int) -> list[str]:
        """`/`-separated paths relative to `prefix`, at most `max_depth` folders down, sorted."""
        raise NotImplementedError

    def delete(self, uri: str) -> None:
        """Gone afterwards; deleting what is not there is no error."""
        raise NotImplementedError

    def delete_matching(self, prefix: str, made_by_us: Callable[[str], bool]) -> None:
        raise NotImplementedError

    def prepare_output(self, folder: str) -> None:
        """Whatever must exist before `folder` can be written (a local folder); nothing on object stores."""

    def classify(self, uri: str, action: str, exc: BaseException):
        """A failure's kind: a retry.Retryable (transient), an ImgfitError (permanent or
        node-local), or None (not this store's failure: let it through)."""
        return None

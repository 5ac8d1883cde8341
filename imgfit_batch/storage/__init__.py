"""Every store behind one small set of functions on URI strings.

Locations stay strings (a Path would mangle s3://). The backend is chosen by the
URI's scheme here and nowhere else (SCHEMES); each keeps the contract in base.py:

    path, file://              local.py   atomic writes: temp file, fsync, rename
    s3://bucket/key            s3.py      boto3; AWS's credential chain
    gs://bucket/key            gcs.py     gcsfs; Google's application default credentials
    az://, abfs://container/k  azure.py   adlfs; connection string, account key, or DefaultAzureCredential

Remote calls ride out short faults: a transient failure is retried as a whole call
for a bounded window (`storage.retry_seconds`, default 60 s; IMGFIT_S3_RETRY_SECONDS
overrides it), then becomes a TransientError (exit 69: run again later). A permanent
failure (not found, denied, bad credentials) is an UnavailableError (exit 3) at
once. A stop signal ends the retrying (retry.py).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from collections.abc import Callable

from imgfit_batch.storage import local, retry
from imgfit_batch.storage.base import Store
from imgfit_batch.storage.local import LinkOutside, local_path, open_local
from imgfit_batch.storage.retry import DEFAULT_RETRY_SECONDS, RETRY_SECONDS_ENV, configure, patience, retry_seconds
from imgfit_batch.storage.s3 import _client, s3  # noqa: F401  (tests clear the client cache)

# scheme -> (the backend's module and class, imported when first used; the scheme written in
# canonical URIs; the store's name; what its buckets are called). A new fsspec store is one
# module (like gcs.py: a FsspecStore that makes its filesystem) and one line here.
SCHEMES: dict[str, tuple[str, str, str, str]] = {
    "s3": ("s3:S3Store", "s3", "S3", "bucket"),
    "gs": ("gcs:GCSStore", "gs", "GCS", "bucket"),
    "gcs": ("gcs:GCSStore", "gs", "GCS", "bucket"),
    "az": ("azure:AzureStore", "az", "Azure", "container"),
    "abfs": ("azure:AzureStore", "abfs", "Azure", "container"),
    "abfss": ("azure:AzureStore", "abfss", "Azure", "container"),
}
_LOCAL = local.LocalStore()
_stores: dict[str, Store] = {}


def _scheme(uri: str) -> str | None:
    head, sep, _ = uri.partition("://")
    return head.lower() if sep and head.lower() in SCHEMES else None


def backend(uri: str) -> Store:
    """The store that holds `uri`: by its scheme, else the local one."""
    scheme = _scheme(uri)
    if scheme is None:
        return _LOCAL
    where = SCHEMES[scheme][0]
    if where not in _stores:
        module, _, name = where.partition(":")
        _stores[where] = getattr(importlib.import_module(f"{__name__}.{module}"), name)()
    return _stores[where]


def is_remote(uri: str) -> bool:
    """On an object store (anything but a local path or file://): its files are
    uploaded there, and a local working folder stands in for it meanwhile."""
    return _scheme(uri) is not None


# ---------------------------------------------------------------- URIs


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# Bucket and container names, by the rules of their store, so a name the store would refuse
# fails `validate` naming the field, not the job an hour later. S3: the characters of AWS's
# rules widened to what older buckets and S3-compatible stores (Ceph, MinIO) still allow
# (upper case, underscores, up to 255 characters): a real bucket is never refused; a space,
# a slash-less typo or a URL's punctuation is. GCS: 3 to 63 lower-case characters (222 with
# dots, 63 between two). Azure: 3 to 63 lower-case letters, digits and single hyphens (or
# one of its own $root, $web, $logs); a URI may name its account: container@account.host.
_NAMES: dict[str, tuple[re.Pattern, str]] = {
    "S3": (
        re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,253}[A-Za-z0-9])?"),
        "letters, digits, dots and hyphens, starting and ending with a letter or digit",
    ),
    "GCS": (
        re.compile(r"(?=.{3,222}$)(?!goog)[a-z0-9](?:[a-z0-9_-]|\.(?=[a-z0-9])){0,220}[a-z0-9](?<!\.)"),
        "3 to 63 lower-case letters, digits, hyphens and underscores (dots between parts of at most 63), "
        "starting and ending with a letter or digit, not starting with goog",
    ),
    "Azure": (
        re.compile(r"\$root|\$web|\$logs|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}"),
        "3 to 63 lower-case letters, digits and hyphens, starting and ending with a letter or digit, "
        "no two hyphens together",
    ),
}
_AZURE_ACCOUNT = re.compile(r"@[a-z0-9]{3,24}(\.[A-Za-z0-9-]+)*")


def _bad_name(store: str, name: str, account: str) -> str | None:
    """What is wrong with a bucket (container) name by its store's rules; None: nothing."""
    pattern, rules = _NAMES[store]
    if not pattern.fullmatch(name) or (store == "GCS" and any(len(part) > 63 for part in name.split("."))):
        return rules
    if account and not _AZURE_ACCOUNT.fullmatch(account):
        return "its account (after @) 3 to 24 lower-case letters and digits, then the account's host"
    return None


def check_uri(uri: str, need_key: bool = False) -> str:
    """`uri` in canonical form, or ValueError saying what is wrong with it.

    Schemes are matched in any case and written in lower case (S3://b/k is s3://b/k, as
    other tools read it; gcs:// is gs://). Accepted: local paths, file://, and the
    SCHEMES; a remote URI needs a valid bucket (container), and with `need_key` (an
    object to read) a key that is not a folder.
    """
    if "\x00" in uri:
        raise ValueError(f"{uri!r} contains a NUL character, which no path or key can hold")
    m = _SCHEME.match(uri)
    if m is None:
        for scheme in ("s3", "gs", "az"):
            if uri[: len(scheme) + 1].lower() == scheme + ":":
                raise ValueError(
                    f"{uri!r} is not a {scheme}:// URI; did you mean {scheme}://{uri[len(scheme) + 1 :].lstrip('/')}?"
                )
        return uri
    scheme, rest = m.group(1).lower(), uri[m.end() :]
    if scheme == "file":
        return "file://" + rest
    if scheme not in SCHEMES:
        raise ValueError(
            f"{uri}: the scheme {m.group(1)}:// is not supported; use a local path, file://, "
            "s3://bucket/key, gs://bucket/key or az://container/key"
        )
    _, canonical, store, word = SCHEMES[scheme]
    bucket, _, key = rest.partition("/")
    name = bucket.partition("@")[0] if word == "container" else bucket
    account = bucket[len(name) :]
    if not name:
        raise ValueError(f"{uri}: no {word}; expected {canonical}://{word}/{'key' if need_key else 'prefix'}")
    bad = _bad_name(store, name, account)
    if bad:
        raise ValueError(f"{uri}: {bucket!r} is not a valid {store} {word} name ({bad})")
    if need_key and (not key or key.endswith("/")):
        raise ValueError(f"{uri}: names a {word} or folder, not an object; expected {canonical}://{word}/key")
    return f"{canonical}://{rest}"


def split(uri: str) -> tuple[str, str, str]:
    """(the store's canonical scheme, the bucket or container, the key) of a remote URI."""
    scheme = _scheme(uri)
    if scheme is None:
        raise ValueError(f"{uri}: not a remote URI")
    bucket, _, key = uri.partition("://")[2].partition("/")
    return SCHEMES[scheme][1], bucket, key


def contains(outer: str, inner: str) -> bool:
    """Whether location `inner` is `outer` itself or anywhere under it: on a store the
    same bucket and a key under the prefix; locally by absolute path and by resolved path
    (symlinks followed), so no spelling of a path slips past."""
    if is_remote(outer) != is_remote(inner):
        return False
    if is_remote(outer):
        (_, out_bucket, out_key), (_, in_bucket, in_key) = split(outer), split(inner)
        out_key = out_key.rstrip("/")
        return (
            (backend(outer) is backend(inner))
            and out_bucket == in_bucket
            and (not out_key or in_key == out_key or in_key.startswith(out_key + "/"))
        )
    o, i = local_path(outer), local_path(inner)
    for a, b in ((os.path.abspath(o), os.path.abspath(i)), (os.path.realpath(o), os.path.realpath(i))):
        if b == a or b.startswith(a.rstrip("/") + "/"):
            return True
    return False


def relative(outer: str, inner: str) -> str:
    """The path of `inner` below the location `outer` (contains(outer, inner) holds)."""
    if is_remote(inner):
        return split(inner)[2][len(split(outer)[2].rstrip("/")) :].lstrip("/")
    return os.path.relpath(os.path.abspath(local_path(inner)), os.path.abspath(local_path(outer)))


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/") if base not in ("/", "") else base
    for part in parts:
        out = f"{out}/{part.strip('/')}" if out else part
    return out


# ---------------------------------------------------------------- links out of a location


def confined(*locations: str):
    """While inside: a local path under one of `locations` is read only if it resolves,
    through every symlink, to a path under that location's own real path (the location
    itself may be a link). Object stores have no links; a path outside every location is
    not checked."""
    return local.confined(*(uri for uri in locations if not is_remote(uri)))


def outside(uri: str, resolved: str | None = None) -> tuple[str, str] | None:
    """(the location, the real path) when the local `uri` lies in a confined location but
    resolves (or, given, `resolved` is) outside it; None otherwise."""
    return None if is_remote(uri) else local.outside(uri, resolved)


def check_inside(uri: str, resolved: str | None = None) -> None:
    """Raises LinkOutside when `uri` is a link out of the location being read."""
    if not is_remote(uri):
        local.check_inside(uri, resolved)


# ---------------------------------------------------------------- the contract, for any URI


def read_bytes(uri: str, what: str = "file", max_bytes: int | None = None) -> bytes:
    """The whole object; with `max_bytes`, at most that many plus one (callers refuse
    what is larger without ever holding more)."""
    return backend(uri).read(uri, what, max_bytes)


def size(uri: str, what: str = "file") -> int:
    """The object's size in bytes, from stat (a regular file only) or the store's metadata, nothing read."""
    return backend(uri).size(uri, what)


def read_head(uri: str, num_bytes: int, what: str = "file") -> bytes:
    """The first `num_bytes` of the object (fewer if it is shorter); remotely a ranged
    read, so the rest is never sent."""
    return backend(uri).read_head(uri, num_bytes, what)


def read_tail(uri: str, num_bytes: int, what: str = "file") -> bytes:
    """The last `num_bytes` of the object (all of it if it is shorter); remotely a ranged
    read, so the rest is never sent."""
    return backend(uri).read_tail(uri, num_bytes, what)


def write_bytes(uri: str, data: bytes) -> None:
    backend(uri).write(uri, data)


def upload_file(path: str, uri: str) -> None:
    """Copy a local file to `uri` (atomic locally; whole or not at all on a store)."""
    backend(uri).upload(path, uri)


def download_file(uri: str, path: str, what: str = "file") -> None:
    backend(uri).download(uri, path, what)


def exists(uri: str) -> bool:
    return backend(uri).exists(uri)


def list_names(prefix: str) -> list[str]:
    """Names of the files directly inside the folder/prefix `prefix` (sorted)."""
    return backend(prefix).list_names(prefix)


def list_files(prefix: str, max_depth: int) -> list[str]:
    """Paths (relative to the folder/prefix `prefix`, `/`-separated) of the files under it
    at most `max_depth` folders down (`a/b/c.json` is 2 down), sorted. On a store one
    listing of the whole prefix; locally a walk that goes no deeper and follows no folder
    symlinks. A folder below `prefix` that vanishes or cannot be read meanwhile is left out;
    `prefix` itself unreadable is an error (a missing local folder lists nothing)."""
    return backend(prefix).list_files(prefix, max_depth)


def delete(uri: str) -> None:
    backend(uri).delete(uri)


def delete_matching(prefix: str, made_by_us: Callable[[str], bool]) -> None:
    """Delete the files under a folder/prefix whose path relative to it (`video/seg-000001.mp4`)
    `made_by_us` accepts, and nothing else: --restart clears the job's checkpoints, never
    a file a user keeps beside them. Emptied local folders go too."""
    backend(prefix).delete_matching(prefix, made_by_us)


def discard_local(folder: str, made_by_us: Callable[[str], bool]) -> None:
    """Best-effort cleanup of the job's own leftovers in a local folder, by name (see
    delete_matching): a user's files stay, and a failure only leaves files behind."""
    with contextlib.suppress(Exception):
        _LOCAL.delete_matching(folder, made_by_us)


def check_writable(folder: str) -> None:
    """Fail before training if the output location cannot be written."""
    backend(folder).prepare_output(folder)
    probe = join(folder, f".imgfit-write-probe-{os.getpid()}")
    write_bytes(probe, b"ok")
    delete(probe)


__all__ = [
    "DEFAULT_RETRY_SECONDS",
    "RETRY_SECONDS_ENV",
    "SCHEMES",
    "LinkOutside",
    "Store",
    "backend",
    "check_inside",
    "check_uri",
    "check_writable",
    "configure",
    "confined",
    "contains",
    "delete",
    "delete_matching",
    "discard_local",
    "download_file",
    "exists",
    "is_remote",
    "join",
    "list_files",
    "list_names",
    "local_path",
    "open_local",
    "outside",
    "patience",
    "read_bytes",
    "read_head",
    "read_tail",
    "relative",
    "retry",
    "retry_seconds",
    "size",
    "split",
    "upload_file",
    "write_bytes",
]

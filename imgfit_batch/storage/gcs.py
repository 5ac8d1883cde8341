"""Google Cloud Storage (gs://bucket/key) through gcsfs.

Credentials: Google's application default credentials — GOOGLE_APPLICATION_CREDENTIALS
(a service account key file), `gcloud auth application-default login`, or the
metadata server (GKE workload identity, a GCE service account). An emulator (or a
proxy before GCS) is named by STORAGE_EMULATOR_HOST, which needs no credentials.
gcsfs's own retries (up to six tries a call, about 35 s of waiting, a logged traceback
each time) are off: one attempt per request, so the retry window (retry.py) is the only
one, as on S3 and Azure; a request gives up after REQUEST_TIMEOUT (connecting, or
waiting for the next bytes).
"""

from __future__ import annotations

import os
from functools import lru_cache

from imgfit_batch.errors import UnavailableError
from imgfit_batch.storage import retry
from imgfit_batch.storage.fsspec import FsspecStore

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


CONNECT_SECONDS, READ_SECONDS = 10, 60  # one request's timeout, as on S3 (s3.py)
# gcsfs's methods that wrap one request in its own retry loop (gcsfs.retry.retry_request)
_RETRYING = ("_request", "_get_file_request", "_get_file_concurrent")


@lru_cache(maxsize=4)
def _filesystem(emulator: str | None):
    # the JSON API's filesystem itself: gcsfs's default (ExtendedGcsFileSystem) also speaks gRPC
    # to detect zonal/hierarchical buckets, which an emulator or a plain-HTTP proxy cannot answer
    import aiohttp
    from gcsfs.core import GCSFileSystem

    # the methods themselves, without gcsfs's retry loop around them (the decorator keeps them as __wrapped__)
    once = {name: getattr(GCSFileSystem, name).__wrapped__ for name in _RETRYING if hasattr(GCSFileSystem, name)}
    OneTry = type("OneTry", (GCSFileSystem,), {**once, "retries": 1})
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_SECONDS, sock_read=READ_SECONDS)
    common = {"skip_instance_cache": True, "use_listings_cache": False, "requests_timeout": timeout}
    if emulator:
        endpoint = emulator if emulator.startswith(("http://", "https://")) else f"http://{emulator}"
        return OneTry(token="anon", endpoint_url=endpoint, project="imgfit", **common)
    return OneTry(token="google_default", **common)


class GCSStore(FsspecStore):
    name = "GCS"
    extra = "gcs"
    credentials_hint = (
        "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, run "
        "`gcloud auth application-default login`, or use workload identity"
    )

    def filesystem(self):
        return _filesystem(os.environ.get(EMULATOR_ENV) or None)

    def classify_own(self, uri: str, action: str, exc: BaseException):
        import google.auth.exceptions as auth
        import requests.exceptions
        from gcsfs.retry import HttpError

        if isinstance(exc, HttpError):
            code = int(exc.code) if str(exc.code or "").isdigit() else None
            if code is not None and (code in (408, 429) or code >= 500):
                return retry.Retryable(f"HTTP {code}")
            if code == 401:
                return UnavailableError(f"{uri}: GCS rejected the credentials; {self.credentials_hint}")
            return UnavailableError(f"{uri}: GCS {action} failed ({exc.message or code})")
        if isinstance(exc, auth.DefaultCredentialsError):
            return UnavailableError(f"{uri}: no Google credentials found; {self.credentials_hint}")
        if isinstance(exc, auth.TransportError):
            return retry.Retryable("cannot reach Google's token service")
        if isinstance(exc, auth.GoogleAuthError):
            return UnavailableError(
                f"{uri}: Google credentials rejected ({type(exc).__name__}); {self.credentials_hint}"
            )
        if isinstance(exc, requests.exceptions.RequestException):  # gcsfs raises ProxyError for a 502
            return retry.Retryable(type(exc).__name__)
        return None

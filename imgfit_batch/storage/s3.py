"""S3 and S3-compatible stores (MinIO, Ceph) through boto3.

Credentials come from boto3's own chain (AWS_* variables, profiles, IRSA web
identity, instance metadata); the endpoint from storage.endpoint_url or
AWS_ENDPOINT_URL. boto3's own retries are off, so the retry window (retry.py) is
ours alone; objects appear whole by nature (a PUT or a completed multipart upload).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from functools import lru_cache

from imgfit_batch.errors import ImgfitError, UnavailableError
from imgfit_batch.storage import retry
from imgfit_batch.storage.base import Store


@lru_cache(maxsize=8)
def _client(endpoint_url: str | None, region: str | None):
    import boto3
    from botocore.config import Config

    # one attempt per call: retry.call retries, over its own window
    config = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=10, read_timeout=60)
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def s3():
    return _client(retry.settings["endpoint_url"], retry.settings["region"])


def split(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UnavailableError(f"{uri}: not an S3 URI (expected s3://bucket/key)")
    return bucket, key


def _folder(prefix: str) -> tuple[str, str]:
    bucket, key = split(prefix)
    return bucket, key.rstrip("/") + "/" if key else ""


# Error codes S3 (and S3-compatible stores) answer when another try may pass.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "429",
        "500",
        "502",
        "503",
        "504",
    }
)


def _diagnose(uri: str, action: str, exc: BaseException):
    """What a failed S3 call means: a Retryable, a permanent ImgfitError, or None
    (not an S3 failure: let it through, e.g. a local disk filling up)."""
    import http.client

    import urllib3.exceptions
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import (
        BotoCoreError,
        ChecksumError,
        ClientError,
        EndpointConnectionError,
        HTTPClientError,
        IncompleteReadError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

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
            "AWS_PROFILE, or a web identity (IRSA)"
        )
    if isinstance(exc, EndpointConnectionError):
        endpoint = getattr(exc, "kwargs", {}).get("endpoint_url", "")
        return retry.Retryable(
            f"cannot reach the S3 endpoint {endpoint}", "check AWS_ENDPOINT_URL / storage.endpoint_url and the network"
        )
    if isinstance(exc, (HTTPClientError, BotoConnectionError, IncompleteReadError, ChecksumError)):
        return retry.Retryable(type(exc).__name__)  # dropped/closed/timed out, or a body cut short
    if isinstance(exc, (urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError, TimeoutError)):
        return retry.Retryable(type(exc).__name__)  # the same, surfacing beneath botocore (mid-body reads)
    if isinstance(exc, BotoCoreError):
        return UnavailableError(f"{uri}: S3 {action} failed: {type(exc).__name__}")
    return None


def _code_failure(uri: str, action: str, code: str, status: int | None):
    if code in TRANSIENT_CODES or (status is not None and (status >= 500 or status == 429)):
        return retry.Retryable(f"{code or status}" + (f", HTTP {status}" if status and str(status) != code else ""))
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


def _whole(response: dict, limit: int | None) -> bytes:
    """The body of a GET, at most `limit` bytes; a body cut short is a Retryable. botocore
    checks the length only of a body read to its end, not of a read of `limit` bytes."""
    data = response["Body"].read(*(() if limit is None else (limit,)))
    sent = response.get("ContentLength")
    if limit is not None and sent is not None and len(data) < min(limit, int(sent)):
        raise retry.Retryable(f"the body was cut short ({len(data)} of {min(limit, int(sent))} bytes)")
    return data


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    # num_download_attempts=1: a cut-short download is retried whole by retry.call
    return TransferConfig(
        multipart_threshold=64 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024, num_download_attempts=1
    )


class S3Store(Store):
    def classify(self, uri: str, action: str, exc: BaseException):
        return _diagnose(uri, action, exc)

    def _call(self, uri: str, action: str, fn):
        return retry.call(uri, action, fn, _diagnose)

    def read(self, uri: str, what: str, max_bytes: int | None) -> bytes:
        bucket, key = split(uri)
        limit = None if max_bytes is None else max_bytes + 1
        # the body is read inside the call: a read cut short mid-body is retried whole
        return self._call(uri, f"reading the {what}", lambda: _whole(s3().get_object(Bucket=bucket, Key=key), limit))

    def read_head(self, uri: str, num_bytes: int, what: str) -> bytes:
        bucket, key = split(uri)
        return self._call(
            uri,
            f"reading the {what}",
            lambda: _whole(s3().get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{num_bytes - 1}"), num_bytes),
        )

    def read_tail(self, uri: str, num_bytes: int, what: str) -> bytes:
        size = self.size(uri, what)  # a suffix range of an empty object is an error (416), not b""
        if size == 0:
            return b""
        bucket, key = split(uri)
        start = max(0, size - num_bytes)
        return self._call(
            uri,
            f"reading the {what}",
            lambda: _whole(s3().get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{size - 1}"), size - start),
        )

    def size(self, uri: str, what: str) -> int:
        bucket, key = split(uri)
        try:
            return int(
                self._call(uri, f"reading the {what}", lambda: s3().head_object(Bucket=bucket, Key=key))[
                    "ContentLength"
                ]
            )
        except UnavailableError:  # a HEAD's answer has no body, so no error code: a GET names the cause
            self.read_head(uri, 1, what)
            raise

    def write(self, uri: str, data: bytes) -> None:
        bucket, key = split(uri)
        self._call(uri, "writing", lambda: s3().put_object(Bucket=bucket, Key=key, Body=data))

    def upload(self, path: str, uri: str) -> None:
        bucket, key = split(uri)
        self._call(uri, "uploading", lambda: s3().upload_file(path, bucket, key, Config=_transfer_config()))

    def download(self, uri: str, path: str, what: str) -> None:
        bucket, key = split(uri)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._call(
            uri, f"downloading the {what}", lambda: s3().download_file(bucket, key, path, Config=_transfer_config())
        )

    def exists(self, uri: str) -> bool:
        bucket, key = split(uri)
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                s3().head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
            return True

        return self._call(uri, "checking", head)

    def list_names(self, prefix: str) -> list[str]:
        bucket, key = _folder(prefix)

        def listing() -> list[str]:
            pages = s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key, Delimiter="/")
            return [obj["Key"][len(key) :] for page in pages for obj in page.get("Contents", [])]

        return sorted(self._call(prefix, "listing", listing))

    def list_files(self, prefix: str, max_depth: int) -> list[str]:
        bucket, key = _folder(prefix)

        def listing() -> list[str]:
            pages = s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            return [obj["Key"][len(key) :] for page in pages for obj in page.get("Contents", [])]

        return sorted(p for p in self._call(prefix, "listing", listing) if p and p.count("/") <= max_depth)

    def delete(self, uri: str) -> None:
        bucket, key = split(uri)
        self._call(uri, "deleting", lambda: s3().delete_object(Bucket=bucket, Key=key))

    def delete_matching(self, prefix: str, made_by_us: Callable[[str], bool]) -> None:
        bucket, key = _folder(prefix)

        def delete_all() -> None:  # a retry starts over: what was deleted is no longer listed
            for page in s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                objs = [{"Key": o["Key"]} for o in page.get("Contents", []) if made_by_us(o["Key"][len(key) :])]
                if objs:
                    s3().delete_objects(Bucket=bucket, Delete={"Objects": objs})

        self._call(prefix, "deleting", delete_all)

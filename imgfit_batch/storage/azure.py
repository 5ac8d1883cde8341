"""Azure Blob Storage (az://container/key, abfs://container/key) through adlfs.

Credentials, in adlfs's order: AZURE_STORAGE_CONNECTION_STRING (an emulator such as
Azurite is a connection string with its BlobEndpoint), AZURE_STORAGE_ACCOUNT_NAME with
AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN, a service principal
(AZURE_STORAGE_CLIENT_ID/_SECRET, AZURE_STORAGE_TENANT_ID), else
DefaultAzureCredential (workload identity, managed identity, `az login`) for the
account AZURE_STORAGE_ACCOUNT_NAME. The SDK's own retries are off (one attempt per
call), so the retry window (retry.py) is the only one, as on S3, and a request gives
up after CONNECT_SECONDS / READ_SECONDS (the SDK's own wait 300 s each).

A URI may name its account (abfs://container@account.dfs.core.windows.net/key): it
must be the account the credentials are for, or the URI is refused (exit 2) — adlfs
would otherwise read the same container name in the credentials' account.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

from imgfit_batch.errors import SpecError, UnavailableError
from imgfit_batch.storage import retry
from imgfit_batch.storage.fsspec import FsspecStore

ENV = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_STORAGE_TENANT_ID",
)

CONNECT_SECONDS, READ_SECONDS = 10, 60  # one request's timeout, as on S3 (s3.py)
_USERINFO = re.compile(r"//[^/@;\s]*@")


def _settings(connection: str | None) -> dict[str, str]:
    """A connection string's settings, by lower-case name (AccountName=a;BlobEndpoint=...)."""
    pairs = (part.partition("=") for part in (connection or "").split(";") if part.strip())
    return {name.strip().lower(): value.strip() for name, _, value in pairs}


def credentials_account() -> str | None:
    """The storage account the environment's credentials are for (None: not known)."""
    settings = _settings(os.environ.get("AZURE_STORAGE_CONNECTION_STRING"))
    return settings.get("accountname") or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME") or None


def check_connection_string() -> None:
    """Refuse, without quoting it, a connection string whose endpoint URLs carry a user
    and password (the SDK fails on them mid-request, with another library's ValueError)."""
    for name, value in _settings(os.environ.get("AZURE_STORAGE_CONNECTION_STRING")).items():
        if name.endswith("endpoint") and _USERINFO.search(value):
            raise UnavailableError(
                f"AZURE_STORAGE_CONNECTION_STRING: its {name[:-8].capitalize()}Endpoint URL holds a user and "
                "password (user:password@host), which Azure does not take; give the account key as AccountKey= "
                "or a SAS token as SharedAccessSignature="
            )


def check_account(uri: str) -> None:
    """A URI that names an account (container@account.host) must name the credentials' one."""
    bucket = uri.partition("://")[2].partition("/")[0]
    container, at, host = bucket.partition("@")
    if not at:
        return
    named, have = host.partition(".")[0], credentials_account()
    if have is None or named.lower() != have.lower():
        configured = f"the credentials are for {have!r}" if have else "no account is configured"
        raise SpecError(
            f"{uri}: names the storage account {named!r}, but {configured}; this job reads only the "
            f"credentials' account: write az://{container}/... for it, or set the credentials of {named!r}"
        )


@lru_cache(maxsize=4)
def _filesystem(env: tuple):  # keyed by the credentials' variables: a changed one makes a new client
    from adlfs import AzureBlobFileSystem
    from azure.storage.blob.aio import BlobServiceClient

    class OneTry(AzureBlobFileSystem):
        """adlfs's filesystem whose client makes one attempt per call (the SDK's own
        retries wait 15 s and more): retry.call retries, over its own window."""

        service_client: BlobServiceClient  # made by adlfs's do_connect (adlfs is untyped)

        def do_connect(self):
            super().do_connect()
            made = self.service_client
            self.service_client = BlobServiceClient(
                account_url=made.url,
                credential=made.credential,
                retry_total=0,
                connection_timeout=CONNECT_SECONDS,
                read_timeout=READ_SECONDS,
            )

    check_connection_string()
    return OneTry(anon=False, skip_instance_cache=True, use_listings_cache=False)


class AzureStore(FsspecStore):
    name = "Azure Blob Storage"
    extra = "azure"
    credentials_hint = (
        "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with "
        "AZURE_STORAGE_ACCOUNT_KEY, or use a workload/managed identity (DefaultAzureCredential)"
    )

    def filesystem(self):
        return _filesystem(tuple(os.environ.get(name) for name in ENV))

    def _fs(self, uri: str):
        check_account(uri)
        return super()._fs(uri)

    def classify_own(self, uri: str, action: str, exc: BaseException):
        from azure.core import exceptions as az

        if isinstance(exc, az.ResourceNotFoundError):
            return UnavailableError(f"{uri}: not found in Azure Blob Storage; check the container and key")
        if isinstance(exc, az.ClientAuthenticationError):
            return UnavailableError(f"{uri}: Azure rejected the credentials; {self.credentials_hint}")
        if isinstance(exc, az.HttpResponseError):
            status = exc.status_code or 0
            if status == 429 or status >= 500 or status == 408:
                return retry.Retryable(f"HTTP {status}")
            if status == 403:
                return UnavailableError(f"{uri}: access denied for {action}; check the credentials' permissions")
            return UnavailableError(f"{uri}: Azure {action} failed (HTTP {status}, {exc.reason or 'error'})")
        if isinstance(exc, (az.ServiceRequestError, az.ServiceResponseError)):  # unreachable, dropped, timed out
            return retry.Retryable(type(exc).__name__)
        if isinstance(exc, ValueError) and "unable to connect" in str(exc):  # adlfs: no usable credentials
            return UnavailableError(f"{uri}: cannot connect to Azure Blob Storage; {self.credentials_hint}")
        return None

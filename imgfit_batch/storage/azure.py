"""Azure Blob Storage (az://container/key, abfs://container/key) through adlfs.

Credentials, in adlfs's order: AZURE_STORAGE_CONNECTION_STRING (an emulator such as
Azurite is a connection string with its BlobEndpoint), AZURE_STORAGE_ACCOUNT_NAME with
AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN, a service principal
(AZURE_STORAGE_CLIENT_ID/_SECRET, AZURE_STORAGE_TENANT_ID), else
DefaultAzureCredential (workload identity, managed identity, `az login`) for the
account AZURE_STORAGE_ACCOUNT_NAME. The SDK's own retries are off (one attempt per
call), so the retry window (retry.py) is the only one, as on S3.
"""

from __future__ import annotations

import os
from functools import lru_cache

from imgfit_batch.errors import UnavailableError
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
            self.service_client = BlobServiceClient(account_url=made.url, credential=made.credential, retry_total=0)

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

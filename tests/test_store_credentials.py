"""Credentials come from each platform's own chain, never from the spec, and are never
printed: missing or rejected ones are exit 3 in one line that says what to set."""

from __future__ import annotations

import base64

from conftest import AZURITE_ACCOUNT, assert_one_error_line, import_or_skip

AZURE_VARS = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_STORAGE_TENANT_ID",
)


def test_gcs_without_usable_credentials_is_exit_3_saying_what_to_set(cli, tmp_path, monkeypatch):
    import_or_skip("gcsfs", "needs gcsfs (pip install -e '.[test]')")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    result = cli("validate", "gs://some-bucket/specs/job.yaml")
    assert result.exit_code == 3, result.stderr
    assert_one_error_line(result.stderr, "gs://some-bucket/specs/job.yaml", "GOOGLE_APPLICATION_CREDENTIALS")


def test_azure_without_credentials_is_exit_3_saying_what_to_set(cli, monkeypatch):
    import_or_skip("adlfs", "needs adlfs (pip install -e '.[test]')")
    for var in AZURE_VARS:
        monkeypatch.delenv(var, raising=False)
    result = cli("validate", "az://box/specs/job.yaml")
    assert result.exit_code == 3, result.stderr
    assert_one_error_line(result.stderr, "az://box/specs/job.yaml", "AZURE_STORAGE_CONNECTION_STRING")


def test_a_rejected_azure_account_key_is_exit_3_and_never_printed(cli, azurite_endpoint, monkeypatch):
    for var in AZURE_VARS:
        monkeypatch.delenv(var, raising=False)
    wrong = base64.b64encode(b"not the account key, but secret all the same").decode()
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={wrong};BlobEndpoint={azurite_endpoint};",
    )
    monkeypatch.setenv("IMGFIT_S3_RETRY_SECONDS", "5")
    result = cli("validate", "az://box/specs/job.yaml")
    assert result.exit_code == 3, result.stderr
    assert wrong not in result.stdout + result.stderr
    assert_one_error_line(result.stderr, "az://box/specs/job.yaml")

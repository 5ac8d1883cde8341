"""Credentials in URLs never leave the process: error lines, progress events,
spec.json, summary.json and `validate` all pass through `redact`.

    http://user:secret@minio:9000       -> http://user:***@minio:9000
    https://b.s3/k?X-Amz-Signature=abc  -> https://b.s3/k?X-Amz-Signature=***
    https://a.blob.core.windows.net/c?sv=2022&sig=abc  -> ...&sig=***  (an Azure SAS token)
    DefaultEndpointsProtocol=https;AccountName=a;AccountKey=xyz==  -> ...;AccountKey=***
"""

from __future__ import annotations

import re
from typing import Any

# scheme://user:password@host — the password runs to the last @ before the path (an
# unencoded @ in a password must not leave its tail behind)
_USERINFO = re.compile(r"(//[^/@\s:'\"]*):[^/\s'\"]*@")
# query-string credentials of presigned URLs (AWS SigV4 and V2) and common token parameters
_QUERY_SECRET = re.compile(
    r"([?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|AWSAccessKeyId|Signature|sig|token|"
    r"access_token|password|secret)=)[^&#\s'\"]*",
    re.IGNORECASE,
)

# Azure's secrets outside a query string: a connection string's AccountKey= and
# SharedAccessSignature=, and a bare SAS token (sv=...&sig=...) as AZURE_STORAGE_SAS_TOKEN holds it
_KEYED_SECRET = re.compile(r"\b(AccountKey|SharedAccessSignature)=[^;\s'\"]*|\b(sig)=[^;&\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the secrets of any URLs in it replaced by ***."""
    if "//" not in text and "=" not in text:
        return text
    text = _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))
    return _KEYED_SECRET.sub(lambda m: f"{m.group(1) or m.group(2)}=***", text) if "=" in text else text


def redact_tree(obj: Any) -> Any:
    """A copy of a JSON-like tree with every string redacted (spec.json, summary.json, validate)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_tree(v) for v in obj]
    return obj

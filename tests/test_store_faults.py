"""GCS and Azure Blob Storage ride out the same faults S3 does (tests/test_s3_faults.py):
the store's real emulator behind the fault proxy (tests/faultproxy.py), which answers
503s and 500s, drops connections and cuts bodies short. Short faults are ridden out
within the retry window with nothing changed; a denial is exit 3 at once; an outage
past the window is exit 69."""

from __future__ import annotations

import pytest
from conftest import proxy_in_front

from imgfit_batch import storage
from imgfit_batch.errors import TransientError, UnavailableError

REMOTE = pytest.mark.parametrize("bucket", ["gcs", "azure"], indirect=True)  # S3: tests/test_s3_faults.py
# how each store's client writes an object: gcsfs names it in a multipart body, not the path
UPLOAD = {"gcs": ("POST", r"^/upload/"), "azure": ("PUT", r"written\.bin")}


@pytest.fixture
def proxy(bucket, request, monkeypatch):
    """The fault proxy in front of the bucket's store; the code under test goes through
    it (the bucket's own client, for checking, does not)."""
    proxy = proxy_in_front(bucket.name, request, monkeypatch)
    yield proxy
    proxy.close()


@REMOTE
def test_short_faults_are_ridden_out_and_the_bytes_are_right(bucket, proxy, monkeypatch):
    monkeypatch.setenv("IMGFIT_S3_RETRY_SECONDS", "30")
    payload = bytes(range(256)) * 512
    proxy.fault("slowdown", *UPLOAD[bucket.name], times=2)
    storage.write_bytes(bucket.uri("f/written.bin"), payload)
    assert bucket.get("f/written.bin") == payload

    proxy.fault("error500", "GET", r"read\.bin", times=2)
    proxy.fault("drop", "GET", r"read\.bin", times=1)
    proxy.fault("cut", "GET", r"read\.bin", times=1)
    bucket.put("f/read.bin", payload)
    assert storage.read_bytes(bucket.uri("f/read.bin")) == payload

    proxy.fault("drop", None, r"/f|prefix=f|f%2F", times=2)  # the listing's requests
    assert storage.list_names(bucket.uri("f")) == ["read.bin", "written.bin"]
    for kind in ("slowdown", "error500", "drop", "cut"):
        assert proxy.faulted(kind), f"{kind} never struck"


@REMOTE
def test_a_denial_is_exit_3_at_once_without_retrying(bucket, proxy, monkeypatch):
    monkeypatch.setenv("IMGFIT_S3_RETRY_SECONDS", "30")
    bucket.put("secret.png", b"x")
    proxy.fault("denied", None, r"secret\.png")
    with pytest.raises(UnavailableError) as caught:
        storage.read_bytes(bucket.uri("secret.png"))
    assert caught.value.exit_code == 3 and bucket.uri("secret.png") in str(caught.value)
    assert len(proxy.faulted("denied")) == 1, "a permanent answer is not asked again"


@pytest.mark.slow
@REMOTE
def test_an_outage_past_the_retry_window_is_exit_69(bucket, proxy, monkeypatch):
    monkeypatch.setenv("IMGFIT_S3_RETRY_SECONDS", "1")
    proxy.fault("slowdown")  # every request, until the end of the test
    with pytest.raises(TransientError) as caught:
        storage.write_bytes(bucket.uri("down.bin"), b"x")
    assert caught.value.exit_code == 69
    assert "run the job again" in str(caught.value) and bucket.uri("down.bin") in str(caught.value)
    assert bucket.keys() == [], "nothing was written"


@pytest.mark.slow
@REMOTE
def test_a_job_rides_out_faults_of_the_store_and_its_result_is_unchanged(bucket, proxy, reference, tmp_path):
    from conftest import CONTRACT_FILES, assert_same_result, cli_env, read_outputs, run_cli, write_spec

    method, uploads = UPLOAD[bucket.name]
    proxy.fault("slowdown", method, uploads if bucket.name == "gcs" else r"/checkpoints/ckpt-", after=3, times=3)
    proxy.fault("error500", method, uploads if bucket.name == "gcs" else r"/checkpoints/video/", times=2)
    proxy.fault("drop", method, uploads if bucket.name == "gcs" else r"/model\.pt", after=10, times=2)
    proxy.fault("drop", "GET", "", times=2)
    spec = write_spec(tmp_path / "spec.yaml", reference.spec_for(bucket.uri("jobs/photo")))
    proc = run_cli("run", spec, env=cli_env(IMGFIT_S3_RETRY_SECONDS="60"))
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    for kind in ("slowdown", "error500", "drop"):
        assert proxy.faulted(kind), f"{kind} never struck"
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    for name in CONTRACT_FILES:
        (fetched / name).write_bytes(bucket.get(f"jobs/photo/{name}"))
    assert_same_result(read_outputs(str(fetched)), reference.result)

"""S3 for real: a moto server on loopback speaks the S3 protocol over HTTP, so
boto3 (in this process and in a real subprocess) takes its normal path:
endpoint from AWS_ENDPOINT_URL, credentials from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import boto3
import pytest
import yaml
from conftest import (
    CONTRACT_FILES,
    FAKE_CREDENTIALS,
    _clean_aws_env,
    assert_one_error_line,
    check_outputs,
    free_port,
    import_or_skip,
    photo,
    png_bytes,
    run_cli,
    save_photo,
    tiny_spec,
    write_spec,
)


@pytest.mark.slow
def test_rgb_photo_trains_from_s3_to_s3_with_the_spec_in_s3(s3, tmp_path):
    pixels = photo(35, 19, seed=4)
    s3.put("inputs/photo.png", png_bytes(pixels))
    spec = tiny_spec(s3.uri("inputs/photo.png"), s3.uri("runs/photo"))
    s3.put("specs/job.yaml", yaml.safe_dump(spec).encode())

    proc = run_cli("run", s3.uri("specs/job.yaml"))
    assert proc.returncode == 0, proc.stderr

    keys = s3.keys("runs/photo/")
    for name in CONTRACT_FILES:
        assert f"runs/photo/{name}" in keys, name
    checkpoints = [k for k in keys if k.startswith("runs/photo/checkpoints/ckpt-")]
    assert any(k.endswith(".pt") for k in checkpoints) and any(k.endswith(".json") for k in checkpoints)
    assert not any(os.path.basename(k).startswith((".tmp", ".imgfit")) for k in keys), keys

    files = {name: s3.get(f"runs/photo/{name}") for name in CONTRACT_FILES}
    summary = check_outputs(files, pixels, tmp_path)
    assert summary["image"] == s3.uri("inputs/photo.png")
    assert "testing" not in proc.stdout + proc.stderr, "credentials never printed"


def test_local_image_with_s3_output(cli, s3, tmp_path):
    image = tmp_path / "photo.png"
    pixels = save_photo(image, 21, 15)
    result = cli("run", write_spec(tmp_path / "spec.yaml", tiny_spec(str(image), s3.uri("out"), train={"epochs": 1})))
    assert result.exit_code == 0, result.stderr
    files = {name: s3.get(f"out/{name}") for name in CONTRACT_FILES}
    check_outputs(files, pixels, tmp_path)


def test_validate_reads_the_spec_from_s3(cli, s3):
    s3.put("spec.yaml", b"image: s3://b/k.png\noutput: s3://b/out\ntrain: {epochs: 7}\n")
    result = cli("validate", s3.uri("spec.yaml"))
    assert result.exit_code == 0, result.stderr
    assert yaml.safe_load(result.stdout)["train"]["epochs"] == 7


def test_s3_spec_not_found_is_exit_3(cli, s3):
    result = cli("validate", s3.uri("missing.yaml"))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, s3.uri("missing.yaml"), "not found")


def test_s3_image_not_found_is_exit_3(cli, s3, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(s3.uri("nope.png"), str(tmp_path / "out")))
    result = cli("run", spec)
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, s3.uri("nope.png"), "not found")


def test_s3_bucket_not_found_is_exit_3(cli, s3, tmp_path):
    uri = "s3://no-such-bucket-imgfit/photo.png"
    result = cli("run", write_spec(tmp_path / "spec.yaml", tiny_spec(uri, str(tmp_path / "out"))))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, uri)


def test_s3_output_in_a_missing_bucket_fails_before_training(cli, s3, tmp_path):
    image = tmp_path / "photo.png"
    save_photo(image)
    output = "s3://no-such-bucket-imgfit/out"
    result = cli("run", write_spec(tmp_path / "spec.yaml", tiny_spec(str(image), output)))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, "no-such-bucket-imgfit")
    assert '"event": "start"' not in result.stdout


def test_unreachable_endpoint_is_retryable_after_the_retry_window(cli, s3, tmp_path, monkeypatch):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a blip, or a typo; another try may tell
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    spec = write_spec(
        tmp_path / "spec.yaml", tiny_spec(s3.uri("photo.png"), str(tmp_path / "out"), storage={"retry_seconds": 1})
    )
    result = cli("run", spec)
    assert result.exit_code == 69
    assert_one_error_line(result.stderr, s3.uri("photo.png"), "cannot reach", "tries", "run the job again")


def test_endpoint_from_the_spec_overrides_the_environment(cli, s3, tmp_path, monkeypatch):
    pixels = photo(9, 7)
    s3.put("photo.png", png_bytes(pixels))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # wrong on purpose
    spec = tiny_spec(
        s3.uri("photo.png"), str(tmp_path / "out"), train={"epochs": 1}, storage={"endpoint_url": s3.endpoint}
    )
    result = cli("run", write_spec(tmp_path / "spec.yaml", spec))
    assert result.exit_code == 0, result.stderr


# ---------------------------------------------------------------- a server that checks credentials


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A second moto server, in its own process, that enforces IAM: its first five
    requests are free (to make a user whose policy denies s3:GetObject, a bucket and an
    object); every request after that must be signed by a known key and allowed."""
    import_or_skip("moto.server", "needs moto[server] (pip install -e '.[test]')")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "5", **FAKE_CREDENTIALS}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        import socket

        while True:
            assert proc.poll() is None, "moto server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.1)
        admin = dict(
            endpoint_url=endpoint, aws_access_key_id="admin", aws_secret_access_key="admin", region_name="us-east-1"
        )
        iam, s3c = boto3.client("iam", **admin), boto3.client("s3", **admin)
        iam.create_user(UserName="reader")  # 1
        key = iam.create_access_key(UserName="reader")["AccessKey"]  # 2
        iam.put_user_policy(
            UserName="reader",
            PolicyName="no-get",
            PolicyDocument=json.dumps(
                {  # 3
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "*"},
                    ],
                }
            ),
        )
        s3c.create_bucket(Bucket="guarded")  # 4
        s3c.put_object(Bucket="guarded", Key="photo.png", Body=png_bytes(photo(9, 7)))  # 5
        yield {"endpoint": endpoint, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_s3_access_denied_is_exit_3(cli, auth_server, tmp_path, monkeypatch):
    _clean_aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", auth_server["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", auth_server["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", auth_server["secret"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    uri = "s3://guarded/photo.png"
    result = cli("run", write_spec(tmp_path / "spec.yaml", tiny_spec(uri, str(tmp_path / "out"))))
    assert result.exit_code == 3
    line = assert_one_error_line(result.stderr, uri, "access denied")
    assert auth_server["secret"] not in line


def test_s3_rejected_credentials_are_exit_3(cli, auth_server, tmp_path, monkeypatch):
    _clean_aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", auth_server["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    uri = "s3://guarded/photo.png"
    result = cli("run", write_spec(tmp_path / "spec.yaml", tiny_spec(uri, str(tmp_path / "out"))))
    assert result.exit_code == 3
    line = assert_one_error_line(result.stderr, uri, "rejected the credentials")
    assert "not-a-real-secret" not in line


def test_s3_output_without_write_permission_is_exit_3(cli, auth_server, tmp_path, monkeypatch):
    _clean_aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", auth_server["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    image = tmp_path / "photo.png"
    save_photo(image)
    result = cli("run", write_spec(tmp_path / "spec.yaml", tiny_spec(str(image), "s3://guarded/out")))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, "s3://guarded/out")
    assert '"event": "start"' not in result.stdout, "refused before training"

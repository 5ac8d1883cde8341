"""S3 faults, for real: the job (a subprocess) talks to the moto server through a
fault-injecting proxy on loopback (tests/faultproxy.py) that answers chosen
requests with 503 SlowDown, 500 InternalError or 403 AccessDenied, drops their
connections, cuts their responses short or delays them.

Short faults are ridden out and change nothing: weights, loss.csv and every
video frame equal those of an undisturbed run. Faults that outlast the retry
window end the job retryably (69) with one line, and a rerun finishes with the
same result; a permanent error is exit 3 at once; a stop signal never waits the
window out.
"""

from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace

import boto3
import pytest
from conftest import (
    CONTRACT_FILES,
    FAKE_CREDENTIALS,
    assert_one_error_line,
    assert_same_result,
    cli_env,
    events,
    photo,
    png_bytes,
    read_outputs,
    run_cli,
    start_cli,
    tiny_spec,
    write_spec,
)
from faultproxy import FaultProxy

from imgfit_batch import storage
from imgfit_batch.checkpoint import CheckpointPolicy, CheckpointStore
from imgfit_batch.errors import SpecError

BUCKET = "imgfit-faults"
IMAGE_KEY = "inputs/photo.png"
TEST_WINDOW = 10  # seconds of retries in these tests (the default is 60): outlasts every short fault below
CKPT_PUT = r"/checkpoints/ckpt-\d+\.(pt|json)$"
SEGMENT = r"/checkpoints/video/seg-\d+\.mp4$"


@pytest.fixture(scope="module")
def direct(s3_endpoint):
    """A client that talks to moto directly (never faulted): set-up and reading results."""
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=IMAGE_KEY, Body=png_bytes(photo(31, 23, seed=5)))
    return client


@pytest.fixture(scope="module")
def module_proxy(s3_endpoint):
    proxy = FaultProxy(s3_endpoint)
    yield proxy
    proxy.close()


@pytest.fixture
def proxy(module_proxy, direct):
    module_proxy.clear()
    yield module_proxy
    module_proxy.clear()


def job_env(proxy: FaultProxy, window=TEST_WINDOW) -> dict:
    """The job's environment: fake credentials, the proxy as the endpoint, the retry window."""
    env = cli_env(
        **FAKE_CREDENTIALS,
        AWS_ENDPOINT_URL=proxy.url,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE="/nonexistent/aws-config",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
    )
    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        storage.RETRY_SECONDS_ENV,
    ):
        env.pop(var, None)
    if window is not None:
        env[storage.RETRY_SECONDS_ENV] = str(window)
    return env


def job_spec(output: str, **sections) -> dict:
    """18 steps, a frame a step in segments of 10 (one closes mid-run), a checkpoint every 4 steps."""
    return tiny_spec(
        f"s3://{BUCKET}/{IMAGE_KEY}",
        f"s3://{BUCKET}/{output}",
        train={"epochs": 3},
        video={"every_n_steps": 1, "fps": 1},
        checkpoint={"every_n_steps": 4},
        **sections,
    )


def run_job(tmp_path, env: dict, output: str, **sections):
    return run_cli("run", write_spec(tmp_path / f"{output}.yaml", job_spec(output, **sections)), env=env, timeout=120)


def result_of(direct, output: str, folder) -> dict:
    os.makedirs(folder, exist_ok=True)
    for name in CONTRACT_FILES:
        direct.download_file(BUCKET, f"{output}/{name}", os.path.join(folder, name))
    return read_outputs(str(folder))


def keys(direct, prefix: str) -> list[str]:
    pages = direct.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith(("error:", "stopped:"))]


@pytest.fixture(scope="module")
def s3_reference(module_proxy, direct, tmp_path_factory) -> dict:
    """The same job, undisturbed, through the proxy (which must then be invisible)."""
    module_proxy.clear()
    proc = run_job(tmp_path_factory.mktemp("s3ref"), job_env(module_proxy), "reference")
    assert proc.returncode == 0, proc.stderr
    assert not module_proxy.faulted() and module_proxy.requests()
    result = result_of(direct, "reference", tmp_path_factory.mktemp("s3ref-out"))
    assert result["summary"]["steps"] == 18 and result["summary"]["frames"] == 18
    assert result["summary"]["video"]["segments"] == 2, "a segment must close (and be uploaded) during training"
    module_proxy.clear()
    return result


# (kind, method, path regex, options): each short enough for the 10 s window
SHORT_FAULTS = [
    # the image read: headers and half the body, then the connection closes; a 500; SlowDown for 1.5 s
    ("cut", "GET", IMAGE_KEY, {"times": 2}),
    ("error500", "GET", IMAGE_KEY, {"times": 1}),
    ("slowdown", "GET", IMAGE_KEY, {"seconds": 1.5}),
    # checkpoint writes (in the background)
    ("slowdown", "PUT", r"/checkpoints/ckpt-\d+\.pt$", {"seconds": 2}),
    ("drop", "PUT", r"/checkpoints/ckpt-\d+\.json$", {"times": 2}),
    ("error500", "PUT", CKPT_PUT, {"after": 6, "times": 2}),
    # segment uploads (in the video writer thread): one mid-run, the last at the end
    ("drop", "PUT", SEGMENT, {"times": 2}),
    ("slowdown", "PUT", SEGMENT, {"after": 1, "times": 2}),
    ("latency", "PUT", SEGMENT, {"delay": 0.5}),
    # the final publish
    ("slowdown", "PUT", r"/model\.pt$", {"times": 3}),
    ("error500", "PUT", r"/video\.mp4$", {"times": 2}),
    ("drop", "PUT", r"/summary\.json$", {"times": 1}),
    ("cut", "PUT", r"/summary\.json$", {"times": 1}),  # written, but the answer is lost
]


def test_short_faults_are_ridden_out_and_change_nothing(proxy, direct, s3_reference, tmp_path):
    for kind, method, path, options in SHORT_FAULTS:
        proxy.fault(kind, method, path, **options)
    proc = run_job(tmp_path, job_env(proxy), "short")
    assert proc.returncode == 0, proc.stderr
    assert not error_lines(proc.stderr) and "warning" not in proc.stderr, proc.stderr
    for kind, method, path, _options in SHORT_FAULTS:
        assert kind == "latency" or proxy.faulted(kind, path), f"{kind} never struck {method} {path}"
    assert_same_result(result_of(direct, "short", tmp_path / "out"), s3_reference)


def test_background_faults_past_the_window_are_warnings_and_change_nothing(proxy, direct, s3_reference, tmp_path):
    proxy.fault("slowdown", "PUT", CKPT_PUT, seconds=2.5)  # outlasts the first checkpoint's 1 s window, not the next's
    proxy.fault("slowdown", "DELETE", SEGMENT)  # for good: the segments' clean-up after summary.json
    proc = run_job(tmp_path, job_env(proxy, window=1), "background")
    assert proc.returncode == 0, proc.stderr
    assert not error_lines(proc.stderr)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    checkpoints, deletes = warnings[:-1], warnings[-1]
    assert checkpoints and all(
        "was not saved" in w and "SlowDown" in w and "checkpoints again" in w for w in checkpoints
    )
    assert "checkpoint at step 4 was not saved" in checkpoints[0], checkpoints
    saved = [e["step"] for e in events(proc.stdout) if e["event"] == "checkpoint"]
    assert saved and saved[-1] == 18, "a later checkpoint succeeds"
    assert "could not delete the video segments" in deletes and "the job is complete" in deletes, deletes
    assert events(proc.stdout)[-1]["event"] == "completed"
    assert any(k.endswith("seg-000000.mp4") for k in keys(direct, "background/checkpoints/video/"))
    assert_same_result(result_of(direct, "background", tmp_path / "out"), s3_reference)


def test_outages_longer_than_the_window_end_retryably_and_a_rerun_finishes(proxy, direct, s3_reference, tmp_path):
    env = job_env(proxy, window=None)  # the window from the spec's storage.retry_seconds

    def run(outage: str):
        proc = run_job(tmp_path, env, "outage", storage={"retry_seconds": 1})
        assert proc.returncode == 69, proc.stderr
        [line] = error_lines(proc.stderr)
        assert proc.stderr.rstrip().endswith(line), "the error is the last line"
        assert outage in line and "SlowDown" in line and "run the job again" in line, line
        assert "outage/summary.json" not in keys(direct, "outage/"), "nothing claims completion"
        return proc, line

    # checkpoints: the first (step 4) gets through, then none; the periodic ones warn, the end one must succeed
    proxy.fault("slowdown", "PUT", CKPT_PUT, after=2)
    proc, line = run("ckpt-0000000018.pt")
    assert "(end) was not saved" in line and "resumes from the checkpoint at step 4" in line, line
    assert "warning: checkpoint at step 8 was not saved" in proc.stderr, "periodic failures are warnings"

    # segment uploads (the video writer thread): the line names the segment, not "video encoder failed"
    proxy.clear()
    proxy.fault("slowdown", "PUT", SEGMENT)
    run("checkpoints/video/seg-000000.mp4")

    proxy.clear()  # the outages are over
    again = run_job(tmp_path, env, "outage", storage={"retry_seconds": 1})
    assert again.returncode == 0, again.stderr
    resumed = [e for e in events(again.stdout) if e["event"] == "resumed"]
    assert resumed and resumed[0]["step"] >= 4, again.stdout
    assert_same_result(result_of(direct, "outage", tmp_path / "out"), s3_reference)


def test_a_loss_csv_outage_past_the_window_warns_while_training_and_only_the_final_publish_fails(
    proxy, direct, s3_reference, tmp_path
):
    """loss.csv's live copy is a view, not worth a job: with every PUT of loss.csv failing
    past the retry window, training runs to its end checkpoint (each live failure one
    warning), only the final, strict publish ends the job retryably (69) with nothing
    claiming completion, and once the store is back the rerun finishes identically."""
    proxy.fault("slowdown", "PUT", r"/loss\.csv$")  # until cleared
    proc = run_job(tmp_path, job_env(proxy, window=1), "losscsv")
    assert proc.returncode == 69, proc.stderr
    [line] = error_lines(proc.stderr)
    assert "loss.csv" in line and "SlowDown" in line, line
    warned = [w for w in proc.stderr.splitlines() if w.startswith("warning:") and "was not republished" in w]
    assert warned and all("loss.csv" in w and "training goes on" in w for w in warned), proc.stderr
    saved = [e["step"] for e in events(proc.stdout) if e["event"] == "checkpoint"]
    assert saved and saved[-1] == 18, "training reached its end checkpoint through the outage"
    assert "losscsv/summary.json" not in keys(direct, "losscsv/"), "nothing claims completion"
    proxy.clear()
    again = run_job(tmp_path, job_env(proxy, window=1), "losscsv")
    assert again.returncode == 0, again.stderr
    assert_same_result(result_of(direct, "losscsv", tmp_path / "out"), s3_reference)


def test_access_denied_on_the_image_is_exit_3_without_retrying(cli, s3, proxy, monkeypatch, tmp_path):
    proxy.fault("denied", "GET", IMAGE_KEY)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv(storage.RETRY_SECONDS_ENV, "60")
    result = cli("run", write_spec(tmp_path / "spec.yaml", job_spec("denied")))
    assert result.exit_code == 3, result.stderr
    assert_one_error_line(result.stderr, f"s3://{BUCKET}/{IMAGE_KEY}", "access denied")
    assert len(proxy.requests("GET", IMAGE_KEY)) == 1, "a permanent error is not retried"


def test_sigterm_while_a_checkpoint_meets_slowdown_retries_within_the_grace_period_then_stops_retryably(
    proxy, tmp_path
):
    proxy.fault("slowdown", "PUT", CKPT_PUT, after=2)  # from the second checkpoint on, for good
    env = job_env(proxy, window=300)  # waiting it out would blow the deadline below
    env["IMGFIT_STOP_GRACE_SECONDS"] = "12"  # retrying may go on for 12 - 3 s after the signal
    proc, reader = start_cli("run", write_spec(tmp_path / "spec.yaml", job_spec("sigterm")), env=env)
    try:
        deadline = time.monotonic() + 60
        while not proxy.faulted("slowdown"):
            assert proc.poll() is None, f"the run ended before meeting SlowDown:\n{reader.rest()}{proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint met SlowDown"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        signalled, tries_before = time.monotonic(), len(proxy.requests("PUT", CKPT_PUT))
        code = proc.wait(timeout=30)  # a hang, or a wait for the 300 s window, fails here
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert code in (69, 75), stderr
    [line] = error_lines(stderr)
    assert "SIGTERM" in line and "run the job again" in line, line
    assert len(proxy.requests("PUT", CKPT_PUT)) > tries_before + 1, "a short SlowDown under SIGTERM is worth retrying"
    assert took < 12, "it stopped within the grace period, by itself"


# ---------------------------------------------------------------- parts


def test_the_retry_window_comes_from_the_environment_over_the_spec(monkeypatch):
    monkeypatch.delenv(storage.RETRY_SECONDS_ENV, raising=False)
    try:
        assert storage.retry_seconds() == storage.DEFAULT_RETRY_SECONDS == 60
        storage.configure(retry_seconds=5)
        assert storage.retry_seconds() == 5
        monkeypatch.setenv(storage.RETRY_SECONDS_ENV, "12.5")
        assert storage.retry_seconds() == 12.5
        with storage.patience(2):
            assert storage.retry_seconds() == 2
        monkeypatch.setenv(storage.RETRY_SECONDS_ENV, "soon")
        with pytest.raises(SpecError, match=storage.RETRY_SECONDS_ENV):
            storage.retry_seconds()
    finally:
        storage.configure()


def test_unusable_newer_checkpoints_are_skipped_for_the_older_good_one(s3):
    warnings = []
    manager = CheckpointStore(s3.uri("run/checkpoints"), keep=2, warn=warnings.append)
    storage.configure(s3.endpoint)
    try:
        for step in (4, 8):
            manager.save({"parts": {"budget": {"step": step}}, "note": f"at {step}"})
        s3.client.delete_object(Bucket=s3.bucket, Key="run/checkpoints/ckpt-0000000008.pt")  # its data file is gone
        s3.put("run/checkpoints/ckpt-0000000012.json", b"[1, 2, 3]")  # foreign JSON
        s3.put("run/checkpoints/ckpt-0000000016.json", b'{"bytes": "many", "sha256": 5}')  # wrong types
        s3.put("run/checkpoints/ckpt-0000000020.json", b"\xff\xfe not JSON")
        loaded = manager.load()
    finally:
        storage.configure()
    assert loaded is not None and loaded.state["note"] == "at 4"
    assert [s.split(":")[0] for s in loaded.skipped] == [f"ckpt-{n:010d}.pt" for n in (20, 16, 12, 8)]
    assert len(warnings) == 4 and all("trying the previous one" in w for w in warnings)
    assert all("not an imgfit-batch checkpoint marker" in why for why in loaded.skipped[1:3]), loaded.skipped
    assert "not found" in loaded.skipped[-1]


def stand_in_parts(step: int) -> SimpleNamespace:
    """What CheckpointPolicy.save reads of the training parts, at `step`."""
    return SimpleNamespace(
        budget=SimpleNamespace(step=step, total_steps=10, train_seconds=1.0),
        sampler=SimpleNamespace(epoch=0),
        filmer=SimpleNamespace(frames=step),
        log=SimpleNamespace(last_loss=0.1, last_psnr=None),
        state_dict=lambda: {"budget": {"step": step}},
        marker=lambda: {"total_steps": 10, "epoch": 0, "frames": step, "loss": 0.1, "psnr_db": None},
    )


def test_a_failed_background_checkpoint_is_a_warning_the_next_step_is_due_and_its_leftover_goes(s3, proxy, monkeypatch):
    monkeypatch.delenv(storage.RETRY_SECONDS_ENV, raising=False)
    proxy.fault("slowdown", "PUT", r"/ckpt-0000000005\.json$")  # its data file lands, its marker never does
    warnings, saved = [], []
    checkpointer = CheckpointPolicy(
        CheckpointStore(s3.uri("cp/checkpoints"), keep=2, warn=warnings.append),
        every_n_steps=None,
        every_seconds=3600,
        result_fields={},
        job_state=dict,
        event=lambda *a, **k: saved.append(k["step"]),
    )
    storage.configure(proxy.url, retry_seconds=0.5)
    try:
        checkpointer.save(stand_in_parts(5), "periodic")
        deadline = time.monotonic() + 30
        while not checkpointer.due(6):  # by time it is not due for an hour: the failure makes it due
            assert time.monotonic() < deadline, "a failed checkpoint never made the next one due"
            time.sleep(0.05)
        checkpointer.save(stand_in_parts(6), "periodic")
        checkpointer.wait()
    finally:
        storage.configure()
    assert len(warnings) == 1 and "checkpoint at step 5 was not saved" in warnings[0], warnings
    assert saved == [6] and checkpointer.last_step == 6
    assert s3.keys("cp/") == ["cp/checkpoints/ckpt-0000000006.json", "cp/checkpoints/ckpt-0000000006.pt"], (
        "the data file whose marker failed is deleted once a newer checkpoint is complete"
    )

"""Preemption: a real SIGTERM to a real run, then the same command again, ends bit
for bit where an uninterrupted run ends; and the ways resuming must refuse or
fall back (corrupt or malicious checkpoints, a changed spec, a second run on the
same output)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import time

import pytest
import torch
from conftest import (
    CONTRACT_FILES,
    Reference,
    assert_one_error_line,
    assert_same_result,
    events,
    read_outputs,
    run_cli,
    signal_when,
    start_cli,
    write_spec,
)

# Interrupt after the first video segment (frames 0-39, steps 1-80) is closed, so the
# resume reuses a closed segment and re-feeds the open one's frames from the checkpoint.
INTERRUPT_AFTER_STEP = 80

pytestmark = pytest.mark.slow  # real subprocesses, real signals


def interrupt(spec_path: str, sig: int = signal.SIGTERM, after_step: int = INTERRUPT_AFTER_STEP):
    """Run the job, send `sig` once a checkpoint at or after `after_step` is reported;
    return (exit code, stdout, stderr)."""
    return signal_when(spec_path, sig, lambda e: e["event"] == "checkpoint" and e["step"] >= after_step)


@pytest.fixture(scope="module")
def sigterm_run(reference: Reference, tmp_path_factory):
    """An output left by a run that got SIGTERM after step 84 (kept pristine; tests copy it)."""
    root = tmp_path_factory.mktemp("sigterm")
    output = str(root / "out")
    spec = write_spec(root / "spec.yaml", reference.spec_for(output))
    code, stdout, stderr = interrupt(spec)
    return {"output": output, "code": code, "stdout": stdout, "stderr": stderr}


@pytest.fixture
def interrupted(sigterm_run, reference, tmp_path):
    """A private copy of the SIGTERM'd output and a spec pointing at it."""
    output = tmp_path / "out"
    shutil.copytree(sigterm_run["output"], output)
    spec = write_spec(tmp_path / "spec.yaml", reference.spec_for(str(output)))
    return output, spec


def checkpoint_steps(output) -> list[int]:
    return sorted(
        int(n[5:-5]) for n in os.listdir(output / "checkpoints") if n.startswith("ckpt-") and n.endswith(".json")
    )


def test_sigterm_saves_a_checkpoint_and_exits_75(sigterm_run):
    assert sigterm_run["code"] == 75
    line = assert_one_error_line(sigterm_run["stderr"], "SIGTERM")
    assert "resume" in line
    saved = [e for e in events(sigterm_run["stdout"]) if e["event"] == "checkpoint"]
    assert saved[-1]["reason"] == "signal SIGTERM"
    assert saved[-1]["step"] >= INTERRUPT_AFTER_STEP
    assert not os.path.exists(os.path.join(sigterm_run["output"], "summary.json")), "not completed"
    with open(os.path.join(sigterm_run["output"], "loss.csv")) as fh:
        rows = fh.read().splitlines()[1:]
    assert len(rows) == saved[-1]["step"], "loss.csv is published at each checkpoint, for people watching the output"


def test_rerun_after_sigterm_is_bit_identical_to_an_uninterrupted_run(interrupted, reference):
    output, spec = interrupted
    steps_before = checkpoint_steps(output)
    proc = run_cli("run", spec, "--set", "checkpoint.every_n_steps=7")  # cadence may change between runs
    assert proc.returncode == 0, proc.stderr
    resumed = [e for e in events(proc.stdout) if e["event"] == "resumed"]
    assert resumed and resumed[0]["step"] == steps_before[-1]
    result = read_outputs(str(output))
    assert_same_result(result, reference.result)
    assert result["summary"]["resumes"] == 1


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_newest_checkpoint_warns_and_falls_back_to_the_previous(interrupted, reference):
    output, spec = interrupted
    steps = checkpoint_steps(output)
    assert len(steps) >= 2
    newest = output / "checkpoints" / f"ckpt-{steps[-1]:010d}.pt"
    truncate(newest)
    proc = run_cli("run", spec)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings and newest.name in warnings[0] and "previous" in warnings[0]
    resumed = [e for e in events(proc.stdout) if e["event"] == "resumed"]
    assert resumed[0]["step"] == steps[-2]
    assert_same_result(read_outputs(str(output)), reference.result)


class _Payload:
    """Unpickling this calls os.system(command): what a hostile checkpoint would carry."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def malicious_checkpoint(marker_file: str) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"format": "imgfit-batch/checkpoint/1", "step": 10**9, "model": _Payload(f"touch {marker_file}")}, buf)
    return buf.getvalue()


def test_the_malicious_payload_really_runs_when_unpickled_unsafely(tmp_path):
    # proves the next test's payload is live: full unpickling executes it
    marker = tmp_path / "pwned"
    import io

    torch.load(io.BytesIO(malicious_checkpoint(str(marker))), weights_only=False)
    assert marker.exists()


def test_checkpoint_with_a_pickle_payload_is_refused_without_running_it(interrupted, reference, tmp_path):
    output, spec = interrupted
    marker = tmp_path / "pwned"
    data = malicious_checkpoint(str(marker))
    real_newest = checkpoint_steps(output)[-1]
    step = real_newest + 1000  # the newest, so it is tried first
    folder = output / "checkpoints"
    (folder / f"ckpt-{step:010d}.pt").write_bytes(data)
    (folder / f"ckpt-{step:010d}.json").write_text(
        json.dumps(
            {"step": step, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "created": time.time()}
        )
    )

    proc = run_cli("run", spec)
    assert not marker.exists(), "the payload ran"
    # refused with a warning naming it, then the job falls back to the real newest
    # checkpoint and finishes exactly as the uninterrupted run did
    assert proc.returncode == 0, proc.stderr
    assert any(f"ckpt-{step:010d}.pt" in line and line.startswith("warning:") for line in proc.stderr.splitlines())
    resumed = [e for e in events(proc.stdout) if e.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] == real_newest, proc.stdout
    assert_same_result(read_outputs(str(output)), reference.result)


def test_changed_result_field_is_exit_2_naming_it_and_touches_nothing(interrupted):
    output, spec = interrupted
    before = snapshot(output)
    proc = run_cli("run", spec, "--set", "train.lr=0.002")
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "train.lr")
    after = snapshot(output)
    assert {k: v for k, v in after.items() if "lease" not in k} == before


def test_restart_discards_progress_and_starts_over(interrupted, reference):
    output, spec = interrupted
    stale = output / "checkpoints" / f"ckpt-{checkpoint_steps(output)[-1]:010d}.pt"
    assert stale.exists()
    proc = run_cli("run", spec, "--restart", "--set", "train.lr=0.002", "--set", "train.epochs=1")
    assert proc.returncode == 0, proc.stderr
    assert not any(e["event"] == "resumed" for e in events(proc.stdout))
    summary = json.loads((output / "summary.json").read_text())
    assert summary["resumes"] == 0 and summary["steps"] == 12  # the new spec's 1 epoch, from scratch
    assert not stale.exists()


def test_restart_keeps_files_that_are_not_the_jobs(interrupted):
    output, spec = interrupted
    notes = output / "notes.txt"
    notes.write_text("the user's own file, next to the outputs")
    proc = run_cli("run", spec, "--restart", "--set", "train.epochs=1")
    assert proc.returncode == 0, proc.stderr
    assert notes.exists()


def snapshot(folder) -> dict[str, tuple[int, int]]:
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            st = os.stat(path)
            out[os.path.relpath(path, folder)] = (st.st_mtime_ns, st.st_size)
    return out


@pytest.fixture
def completed(reference, tmp_path):
    output = tmp_path / "done"
    shutil.copytree(reference.output, output)
    return output, write_spec(tmp_path / "spec.yaml", reference.spec_for(str(output)))


def test_rerun_of_a_completed_job_exits_0_and_touches_nothing(completed):
    output, spec = completed
    before = snapshot(output)
    proc = run_cli("run", spec)
    assert proc.returncode == 0, proc.stderr
    assert [e["event"] for e in events(proc.stdout)] == ["completed"]
    assert snapshot(output) == before


def test_completed_job_with_a_changed_spec_is_exit_2(completed):
    output, spec = completed
    before = snapshot(output)
    proc = run_cli("run", spec, "--set", "model.fourier_order=5")
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "model.fourier_order")
    assert snapshot(output) == before


def test_resume_with_the_output_on_s3_is_bit_identical(s3, reference, tmp_path):
    prefix = "jobs/photo"
    spec = write_spec(tmp_path / "spec.yaml", reference.spec_for(s3.uri(prefix)))
    code, stdout, stderr = interrupt(spec)
    assert code == 75, stderr
    keys = s3.keys(prefix + "/")
    markers = [k for k in keys if k.startswith(f"{prefix}/checkpoints/ckpt-") and k.endswith(".json")]
    assert markers, keys
    assert f"{prefix}/checkpoints/video/seg-000000.mp4" in keys, "closed segments live with the checkpoints"
    assert f"{prefix}/summary.json" not in keys

    proc = run_cli("run", spec)
    assert proc.returncode == 0, proc.stderr
    assert any(e["event"] == "resumed" for e in events(proc.stdout))
    local = tmp_path / "fetched"
    local.mkdir()
    for name in CONTRACT_FILES:
        (local / name).write_bytes(s3.get(f"{prefix}/{name}"))
    result = read_outputs(str(local))
    assert_same_result(result, reference.result)
    assert result["summary"]["resumes"] == 1


# ---------------------------------------------------------------- two runs, one output


def test_second_run_waits_for_a_live_holder_then_exits_75_with_a_clear_line(interrupted):
    output, spec = interrupted
    # a live run on this host holds the output: this test's own process, heartbeat fresh
    lease = output / ".imgfit-lease.json"
    lease.write_text(json.dumps({"id": "other", "host": socket.gethostname(), "pid": os.getpid(), "beat": time.time()}))
    before = snapshot(output)
    proc = run_cli("run", spec, "--set", "checkpoint.lease_wait_seconds=1")
    assert proc.returncode == 75
    assert_one_error_line(proc.stderr, "another run", f"pid {os.getpid()}")
    waiting = [e for e in events(proc.stdout) if e["event"] == "waiting"]
    assert waiting and str(os.getpid()) in waiting[0]["message"]
    assert snapshot(output) == before, "the waiting run wrote nothing"


def test_lease_of_a_dead_process_is_taken_over(interrupted, reference):
    output, spec = interrupted
    lease = output / ".imgfit-lease.json"
    # a pid that is not running (the lease's owner died with SIGKILL)
    dead = 2**22 + 12345
    lease.write_text(json.dumps({"id": "gone", "host": socket.gethostname(), "pid": dead, "beat": time.time()}))
    proc = run_cli("run", spec, "--set", "checkpoint.lease_wait_seconds=0")
    assert proc.returncode == 0, proc.stderr
    assert_same_result(read_outputs(str(output)), reference.result)


def test_run_waiting_on_a_holder_that_completes_the_job_exits_0(interrupted, reference):
    output, spec = interrupted
    first, first_reader = start_cli("run", spec)
    try:
        assert first_reader.wait_for(lambda e: e["event"] == "start") is not None
        first.send_signal(signal.SIGSTOP)  # hold the lease, frozen, while the second run arrives
        second, second_reader = start_cli("run", spec)
        waiting = second_reader.wait_for(lambda e: e["event"] == "waiting")
        assert waiting is not None, second.stderr.read()
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=120) == 0, first.stderr.read()
        assert second.wait(timeout=120) == 0, second.stderr.read()
        assert second_reader.wait_for(lambda e: e["event"] == "completed") is not None
    finally:
        for p in (first, locals().get("second")):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
    assert_same_result(read_outputs(str(output)), reference.result)


def test_checkpoint_holds_the_complete_state_as_plain_tensors(sigterm_run):
    folder = os.path.join(sigterm_run["output"], "checkpoints")
    newest = sorted(n for n in os.listdir(folder) if n.endswith(".pt"))[-1]
    marker = json.loads(open(os.path.join(folder, newest[:-3] + ".json")).read())
    data = open(os.path.join(folder, newest), "rb").read()
    assert marker["bytes"] == len(data) and marker["sha256"] == hashlib.sha256(data).hexdigest()
    state = torch.load(os.path.join(folder, newest), weights_only=True)  # nothing beyond tensors and plain values
    for key in ("parts", "result_fields", "resumes", "wall_seconds"):
        assert key in state, key
    parts = state["parts"]
    for part, keys in {
        "model": (),
        "optimizer": ("state", "param_groups"),
        "sampler": ("epoch", "batch", "epoch_state"),
        "budget": ("step", "train_seconds", "total_steps"),
        "averager": ("updates",),
        "filmer": ("frames", "open_segment"),
        "log": ("step", "loss", "lr", "sealed"),
        "rng": ("cpu",),
    }.items():
        assert part in parts, part
        for key in keys:
            assert key in parts[part], f"{part}.{key}"
    assert parts["budget"]["step"] == marker["step"]
    log = parts["log"]
    assert log["sealed"] * log["chunk_rows"] + len(log["step"]) == marker["step"], (
        "the loss log so far: its sealed chunks (in checkpoints/log/) and the open chunk's rows"
    )
    assert json.loads(state["result_fields"])["train.lr"] == 0.001

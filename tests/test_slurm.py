"""slurm/train.sh on a real Slurm: munged, slurmctld and slurmd on this machine
(tests/cluster/slurm_localhost.sh), the node advertising one fake `gpu` GRES.

The preemption path end to end: USR1 warning -> the script forwards it -> the job
checkpoints and exits 75 -> the script requeues itself -> the next run resumes and
finishes with a complete video. And arrays: task i trains image i."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import skip_or_fail

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
TRAIN_SH = REPO / "slurm" / "train.sh"
CLUSTER_SH = REPO / "tests" / "cluster" / "slurm_localhost.sh"
SKIP = 77


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """Environment for Slurm clients talking to a fresh one-node cluster."""
    state = tmp_path_factory.mktemp("slurm")
    # Ports of its own: a second cluster on this machine (another engineer's test run, or the
    # same test run alone beside the suite) on the fixed defaults would have its slurmd register
    # with this cluster's controller and its teardown stop it, and this cluster's jobs would stall.
    ports = {"SLURMCTLD_PORT": str(free_port()), "SLURMD_PORT": str(free_port())}
    started = subprocess.run(
        ["bash", str(CLUSTER_SH), "start", str(state)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, **ports),
    )
    if started.returncode == SKIP:
        skip_or_fail(started.stderr.strip() or "slurm_localhost.sh cannot run here")
    assert started.returncode == 0, started.stdout + started.stderr
    env = dict(os.environ, SLURM_CONF=str(state / "slurm.conf"))
    yield env
    subprocess.run(["bash", str(CLUSTER_SH), "stop", str(state)], timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_wrapper(folder: Path) -> Path:
    """The CLI of the interpreter under test, as one executable (IMGFIT_CLI)."""
    wrapper = folder / "imgfit-batch"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m imgfit_batch "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def make_png(path: Path, width: int = 64, height: int = 48, phase: float = 0.0) -> None:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = (np.sin(x / 5 + phase) + np.cos(y / 7)) * 60 + 128
    Image.fromarray(pixels.astype("uint8")).save(path)


def write_spec(folder: Path, images: list[str], train_seconds: float) -> Path:
    """A tiny job that trains for `train_seconds` (summed over resumes) however fast
    this machine is, so a warning sent after its first checkpoint always finds it
    still training."""
    image = images[0] if len(images) == 1 else "[" + ", ".join(images) + "]"
    spec = folder / "spec.yaml"
    spec.write_text(
        f"image: {image}\n"
        "output: out\n"
        "model: {kind: fourier, fourier_order: 4, hidden_size: 16, num_hidden_layers: 2}\n"
        f"train: {{max_seconds: {train_seconds}, batch_size: 1024, device: cpu}}\n"
        "video: {every_n_steps: 10}\n"
        "checkpoint: {every_n_steps: 5}\n"
    )
    return spec


def sbatch(slurm: dict, folder: Path, *args: str) -> str:
    # the job inherits this environment (sbatch --export=ALL); one torch thread keeps
    # tiny jobs from spinning on a shared 2-core machine
    env = dict(slurm, IMGFIT_CLI=str(cli_wrapper(folder)), OMP_NUM_THREADS="1")
    result = subprocess.run(
        # --cpus-per-task=1 overrides the script's 4: this test node may have only 2 cores
        ["sbatch", "--parsable", f"--chdir={folder}", "--cpus-per-task=1", *args, str(TRAIN_SH), "spec.yaml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip().split(";")[0]


def job_records(slurm: dict, job_id: str) -> list[dict]:
    """`scontrol show job` as dicts: one per job, or one per task of an array."""
    result = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], env=slurm, capture_output=True, text=True, timeout=30
    )
    records = []
    for line in result.stdout.splitlines():
        records.append(dict(re.findall(r"(\w+)=(\S*)", line)))
    return records


def wait_for(what: str, predicate, deadline_s: float, poll_s: float = 0.2, explain=None):
    """Poll `predicate` until it is true; on time-out fail with `explain()`'s account of why
    (the scheduler's view of the jobs and the node), so a stall names its cause."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    why = f"\n{explain()}" if explain else ""
    raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}{why}")


def scheduler_view(slurm: dict, job_id: str, folder: Path) -> str:
    """The jobs' states and reasons, the node's state, and each job's log tail."""
    lines = []
    for r in job_records(slurm, job_id):
        keys = ("JobId", "ArrayTaskId", "JobState", "Reason", "Restarts", "ExitCode", "StartTime", "RunTime")
        lines.append(" ".join(f"{k}={r.get(k)}" for k in keys))
    node = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T %E %G"], env=slurm, capture_output=True, text=True)
    lines.append(f"node: {node.stdout.strip()} {node.stderr.strip()}")
    state = Path(slurm["SLURM_CONF"]).parent
    for log in ("slurmctld.log", "slurmd.log"):
        if (state / log).exists():
            tail = (state / log).read_text(errors="replace").splitlines()[-5:]
            lines.append(f"{log}: " + " | ".join(tail))
    for log in sorted(folder.glob("slurm-*.out")):
        tail = log.read_text(errors="replace").splitlines()[-3:]
        lines.append(f"{log.name}: " + " | ".join(tail))
    return "\n".join(lines)


def has_checkpoint(output: Path) -> bool:
    # a checkpoint counts once its marker (ckpt-*.json) is written
    return any((output / "checkpoints").glob("ckpt-*.json"))


def send_warning_and_release_requeued(slurm: dict, job_id: str, task_id: str) -> None:
    """What Slurm does 120 s before a time limit, then let the requeued job start now."""
    subprocess.run(["scancel", "--batch", "--signal=USR1", task_id], env=slurm, check=True, timeout=30)

    def requeued():
        records = [
            r
            for r in job_records(slurm, job_id)
            if task_id in (r.get("JobId"), f"{r.get('ArrayJobId')}_{r.get('ArrayTaskId')}")
        ]
        return records and records[0]["JobState"] == "PENDING" and int(records[0]["Restarts"]) >= 1

    wait_for(f"{task_id} to be requeued after USR1", requeued, 120)
    # A requeued job waits for a begin time a couple of minutes away; bring it forward,
    # but not to "now": slurmd refuses a launch whose credential is from the same second
    # as the revoked one ("Job credential revoked") and the job would fail.
    subprocess.run(["scontrol", "update", f"JobId={task_id}", "StartTime=now+3"], env=slurm, check=True, timeout=30)


def all_completed(slurm: dict, job_id: str, count: int):
    records = job_records(slurm, job_id)
    states = [r.get("JobState") for r in records]
    failed = [s for s in states if s in {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}]
    assert not failed, f"job {job_id}: {states}"
    return len(records) == count and all(s == "COMPLETED" for s in states) and records


def video_frame_count(video: Path) -> int:
    import imageio_ffmpeg

    result = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-stats",
            "-i",
            str(video),
            "-map",
            "0:v:0",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(re.findall(r"frame=\s*(\d+)", result.stderr)[-1])


def assert_complete_output(output: Path) -> dict:
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "completed"
    # every frame rendered, decoded from the file by ffmpeg: nothing lost at the requeue
    assert video_frame_count(output / "video.mp4") == summary["frames"] > 0
    return summary


def test_usr1_warning_checkpoints_requeues_and_resumes_to_a_complete_video(slurm, tmp_path):
    make_png(tmp_path / "pattern.png")
    write_spec(tmp_path, ["pattern.png"], train_seconds=10)
    job_id = sbatch(slurm, tmp_path)
    output = tmp_path / "out"

    wait_for("the first checkpoint", lambda: has_checkpoint(output), 180)
    assert job_records(slurm, job_id)[0]["JobState"] == "RUNNING", "the job ended before the warning could be sent"
    send_warning_and_release_requeued(slurm, job_id, job_id)
    (record,) = wait_for("the requeued job to complete", lambda: all_completed(slurm, job_id, 1), 300)

    summary = assert_complete_output(output)
    assert summary["resumes"] >= 1
    assert int(record["Restarts"]) >= 1
    # --open-mode=append: both runs' output is in the one log
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert "requeueing" in log and '"event": "completed"' in log


def test_array_trains_image_i_in_task_i_and_requeues_a_single_task(slurm, tmp_path):
    make_png(tmp_path / "waves.png", phase=0.0)
    make_png(tmp_path / "ripples.png", width=48, height=64, phase=1.5)
    write_spec(tmp_path, ["waves.png", "ripples.png"], train_seconds=6)
    job_id = sbatch(slurm, tmp_path, "--array=0-1")
    output = tmp_path / "out"

    # the node has one gpu, so the tasks run one after the other; warn task 1 mid-run
    wait_for("task 1's first checkpoint", lambda: has_checkpoint(output / "ripples"), 300)
    send_warning_and_release_requeued(slurm, job_id, f"{job_id}_1")
    records = wait_for("both tasks to complete", lambda: all_completed(slurm, job_id, 2), 300)

    waves, ripples = assert_complete_output(output / "waves"), assert_complete_output(output / "ripples")
    assert (waves["width"], waves["height"]) == (64, 48)
    assert (ripples["width"], ripples["height"]) == (48, 64)
    assert ripples["resumes"] >= 1 and waves["resumes"] == 0
    restarts = {r["ArrayTaskId"]: int(r["Restarts"]) for r in records}
    assert restarts == {"0": 0, "1": 1}


def test_a_transient_fault_requeues_a_bounded_number_of_times_then_fails_with_69(slurm, tmp_path):
    # a real node fault: the spec asks for CUDA and this node has none (exit 69)
    make_png(tmp_path / "pattern.png")
    write_spec(tmp_path, ["pattern.png"], train_seconds=5)
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec.read_text().replace("device: cpu", "device: cuda"))
    job_id = sbatch(slurm, tmp_path, "--export=ALL,IMGFIT_MAX_RETRIES=1")

    def requeued_once():
        (r,) = job_records(slurm, job_id)
        return r["JobState"] == "PENDING" and int(r["Restarts"]) == 1

    wait_for("the first run to requeue itself", requeued_once, 120)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+3"], env=slurm, check=True, timeout=30)

    def ended():
        (r,) = job_records(slurm, job_id)
        return r["JobState"] in {"FAILED", "COMPLETED", "CANCELLED"} and r

    record = wait_for("the retried run to end", ended, 180)
    assert record["JobState"] == "FAILED" and record["ExitCode"] == "69:0", record
    assert int(record["Restarts"]) == 1, "one retry, then it gives up"
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert "retry 1 of 1" in log and "after 1 retries; giving up" in log
    assert log.count("train.device: cuda was asked for") == 2


def test_an_invalid_spec_fails_at_once_without_a_requeue(slurm, tmp_path):
    make_png(tmp_path / "pattern.png")
    write_spec(tmp_path, ["pattern.png"], train_seconds=5)
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec.read_text() + "train_typo: 1\n")
    job_id = sbatch(slurm, tmp_path)

    def ended():
        (r,) = job_records(slurm, job_id)
        return r["JobState"] in {"FAILED", "COMPLETED", "CANCELLED"} and r

    record = wait_for("the run to end", ended, 120)
    assert record["JobState"] == "FAILED" and record["ExitCode"] == "2:0", record
    assert int(record["Restarts"]) == 0


def test_enroot_gets_the_gpu_index_and_s3_credentials_by_name_though_it_clears_the_environment(tmp_path):
    """enroot starts containers with a clean environment; the script must name what the
    job needs. enroot itself cannot run here: a stand-in (a mock, named as such) records
    the command line it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "enroot-args"
    (bin_dir / "enroot").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    (bin_dir / "enroot").chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        IMGFIT_CONTAINER="imgfit.sqsh",
        IMGFIT_RUNTIME="enroot",
        CUDA_VISIBLE_DEVICES="3",
        AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
        AWS_SECRET_ACCESS_KEY="s3cr3t-value",
        AWS_ENDPOINT_URL="http://minio:9000",
    )
    env.pop("AWS_SESSION_TOKEN", None)
    result = subprocess.run(
        ["bash", str(TRAIN_SH), "spec.yaml"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    args = record.read_text().splitlines()
    passed = {args[i + 1] for i, a in enumerate(args) if a == "--env"}
    assert {"CUDA_VISIBLE_DEVICES", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= passed
    assert "AWS_SESSION_TOKEN" not in passed, "only variables that are set"
    assert "s3cr3t-value" not in record.read_text(), "secrets go by name, never on a command line"
    assert args[-3:] == ["imgfit-batch", "run", "spec.yaml"]


def test_a_study_runs_as_an_array_then_its_report_step_compares_every_task(slurm, tmp_path):
    """slurm/study.sh: 2 images x 2 settings = 4 array tasks, then report.sh with
    --dependency=afterany on the array: one page and one table with every task."""
    import csv

    make_png(tmp_path / "waves.png", phase=0.0)
    make_png(tmp_path / "ripples.png", width=48, height=64, phase=1.5)
    (tmp_path / "study.yaml").write_text(
        "image: [waves.png, ripples.png]\n"
        "output: study\n"
        "model: {kind: fourier, fourier_order: 4, hidden_size: 16, num_hidden_layers: 2}\n"
        "train: {epochs: 3, batch_size: 1024, device: cpu}\n"
        "video: {every_n_steps: 2}\n"
        "sweep:\n"
        "  train.lr: [0.001, 0.01]\n"
    )
    env = dict(slurm, IMGFIT_CLI=str(cli_wrapper(tmp_path)), OMP_NUM_THREADS="1")
    submitted = subprocess.run(
        ["bash", str(REPO / "slurm" / "study.sh"), "study.yaml", "--cpus-per-task=1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    array_id, report_id = re.search(r"4 tasks in array job (\d+); report job (\d+)", submitted.stdout).groups()

    (report,) = job_records(slurm, report_id)
    assert report["Dependency"].startswith(f"afterany:{array_id}"), report
    wait_for(
        "the 4 tasks to complete",
        lambda: all_completed(slurm, array_id, 4),
        300,
        explain=lambda: scheduler_view(slurm, array_id, tmp_path),
    )
    wait_for(
        "the report step to complete",
        lambda: all_completed(slurm, report_id, 1),
        120,
        explain=lambda: scheduler_view(slurm, report_id, tmp_path),
    )

    study = tmp_path / "study"
    with open(study / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert (study / "index.html").stat().st_size > 0
    outputs = sorted(study.glob("*/lr=*/summary.json"))
    assert len(outputs) == len(rows) == 4
    for path in outputs:
        summary = json.loads(path.read_text())
        (row,) = [r for r in rows if r["label"] == summary["task"]["label"] and summary["image"].endswith(r["image"])]
        assert row["status"] == "completed" and int(row["steps"]) == summary["steps"]
        assert float(row["psnr_db"]) == summary["psnr_db"]

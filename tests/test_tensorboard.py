"""TensorBoard event logs, read back with TensorBoard's own reader (the `tensorboard`
package's EventAccumulator and EventMultiplexer): one value per step equal to loss.csv,
after an uninterrupted run, a SIGKILL and a fallback to an older checkpoint; a study's
tasks as runs; events on S3; `log.tensorboard: false`; --restart."""

from __future__ import annotations

import io
import os
import signal

import numpy as np
from conftest import import_or_skip, psnr, run_cli, save_photo, signal_when, tiny_spec, write_spec
from PIL import Image

from imgfit_batch import tensorboard_log

event_accumulator = import_or_skip(
    "tensorboard.backend.event_processing.event_accumulator",
    "the tensorboard package (test extra) reads the event files back",
)
event_multiplexer = import_or_skip(
    "tensorboard.backend.event_processing.event_multiplexer",
    "the tensorboard package (test extra) reads the event files back",
)

TRAIN = {"color": "rgb", "epochs": 8, "batch_size": 64, "device": "cpu"}  # 12 steps an epoch: 96 steps


def read_events(folder) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def loss_rows(output) -> list[list[str]]:
    return [r.split(",") for r in (output / "loss.csv").read_text().splitlines()[1:]]


def assert_events_equal_loss_csv(output) -> None:
    """Exactly one value per step and tag, each equal to loss.csv's: loss and lr as float32,
    PSNR and SSIM to the decimals loss.csv keeps (4 and 5)."""
    acc = read_events(output / "tensorboard")
    rows = loss_rows(output)
    for column, tag, decimals in ((2, "loss", None), (3, "lr", None), (4, "psnr_db", 4), (5, "ssim", 5)):
        want = [(int(r[0]), np.float32(float(r[column]))) for r in rows if r[column]]
        got = [(e.step, np.float32(e.value)) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in want], f"{tag}: steps differ (each once, in order)"
        if decimals is not None:
            got = [(s, np.float32(round(float(v), decimals))) for s, v in got]
        assert got == want, f"{tag}: values differ from loss.csv"


def spec_for(tmp_path, output, **sections) -> str:
    image = tmp_path / "photo.png"
    if not image.exists():
        save_photo(image, 31, 23, seed=3)
    return write_spec(tmp_path / "spec.yaml", tiny_spec(str(image), str(output), train=TRAIN, **sections))


def test_a_job_logs_every_step_and_a_few_frames(tmp_path):
    output = tmp_path / "out"
    proc = run_cli("run", spec_for(tmp_path, output))
    assert proc.returncode == 0, proc.stderr
    assert_events_equal_loss_csv(output)
    acc = read_events(output / "tensorboard")
    frames = acc.Images(tensorboard_log.FRAME_TAG)
    frame_steps = [int(r[0]) for r in loss_rows(output) if r[4]]  # the scored rows are the frames
    assert [e.step for e in frames] == [frame_steps[n - 1] for n in (1, 2, 4, 8, 16, 32, 48)]  # 48 frames
    last = np.asarray(Image.open(io.BytesIO(frames[-1].encoded_image_string)))
    assert last.shape == (23, 31, 3) and (frames[-1].width, frames[-1].height) == (31, 23)
    # the last frame is the final weights' image (frames may render in bf16, final.png in fp32)
    assert psnr(last, np.asarray(Image.open(output / "final.png"))) > 40


def test_sigkill_and_resume_leave_one_value_per_step(tmp_path):
    output = tmp_path / "out"
    spec = spec_for(tmp_path, output)
    code, _, _ = signal_when(spec, signal.SIGKILL, lambda e: e["event"] == "checkpoint" and e["step"] >= 40)
    assert code == -signal.SIGKILL
    proc = run_cli("run", spec)
    assert proc.returncode == 0, proc.stderr
    assert len(os.listdir(output / "tensorboard")) >= 2, "both runs wrote events"
    assert_events_equal_loss_csv(output)


def test_steps_logged_after_the_checkpoint_a_resume_falls_back_to_are_purged(tmp_path):
    output = tmp_path / "out"
    spec = spec_for(tmp_path, output)
    code, _, _ = signal_when(spec, signal.SIGTERM, lambda e: e["event"] == "checkpoint" and e["step"] >= 40)
    assert code == 75
    newest = sorted(n for n in os.listdir(output / "checkpoints") if n.endswith(".pt"))[-1]
    data = output / "checkpoints" / newest
    data.write_bytes(data.read_bytes()[:100])  # damaged: the resume falls back to the previous checkpoint
    logged = max(e.step for e in read_events(output / "tensorboard").Scalars("loss"))
    proc = run_cli("run", spec)
    assert proc.returncode == 0, proc.stderr
    resumed = next(line for line in proc.stdout.splitlines() if '"resumed"' in line)
    assert int(resumed.split('"step": ')[1].split(",")[0]) < logged, "the first run logged steps the second takes again"
    assert_events_equal_loss_csv(output)


def test_the_purge_keeps_the_resumed_runs_values(tmp_path):
    first = tensorboard_log.EventLog(str(tmp_path), first_step=1)
    first.rows(
        [
            np.arange(1, 11),
            np.zeros(10, np.int64),
            np.full(10, 1.0),
            np.full(10, 0.1),
            np.full(10, np.nan),
            np.full(10, np.nan),
        ]
    )
    first.sync()
    second = tensorboard_log.EventLog(str(tmp_path), first_step=6)
    second.rows(
        [
            np.arange(6, 13),
            np.zeros(7, np.int64),
            np.full(7, 2.0),
            np.full(7, 0.1),
            np.full(7, np.nan),
            np.full(7, np.nan),
        ]
    )
    second.sync()
    got = [(e.step, e.value) for e in read_events(tmp_path).Scalars("loss")]
    assert got == [(s, 1.0) for s in range(1, 6)] + [(s, 2.0) for s in range(6, 13)]


def test_a_studys_tasks_are_runs_of_their_own(tmp_path):
    image = tmp_path / "photo.png"
    save_photo(image, 31, 23, seed=3)
    spec = tiny_spec(str(image), str(tmp_path / "study"), train={"epochs": 2})
    spec["sweep"] = {"train.lr": [0.001, 0.01]}
    path = write_spec(tmp_path / "study.yaml", spec)
    for index in (0, 1):
        proc = run_cli("run", path, "--index", str(index))
        assert proc.returncode == 0, proc.stderr
    mux = event_multiplexer.EventMultiplexer(size_guidance={"scalars": 0})
    mux.AddRunsFromDirectory(str(tmp_path / "study"))
    mux.Reload()
    runs = sorted(mux.Runs())
    assert runs == ["photo/lr=0.001/tensorboard", "photo/lr=0.01/tensorboard"]
    for run in runs:
        assert_events_equal_loss_csv(tmp_path / "study" / run.rsplit("/", 1)[0])


def test_tensorboard_reads_a_jobs_events_straight_from_s3(s3, tmp_path, monkeypatch):
    image = tmp_path / "photo.png"
    save_photo(image, 31, 23, seed=3)
    proc = run_cli("run", write_spec(tmp_path / "spec.yaml", tiny_spec(str(image), s3.uri("run"), train=TRAIN)))
    assert proc.returncode == 0, proc.stderr
    assert [k for k in s3.keys("run/tensorboard/") if k.startswith("run/tensorboard/events.out.tfevents.")]
    monkeypatch.setenv("S3_ENDPOINT", s3.endpoint)  # TensorBoard's own S3 reader (boto3) at the loopback server
    local = tmp_path / "down"
    local.mkdir()
    (local / "loss.csv").write_bytes(s3.get("run/loss.csv"))
    acc = read_events(s3.uri("run/tensorboard"))
    rows = loss_rows(local)
    assert [(e.step, np.float32(e.value)) for e in acc.Scalars("loss")] == [
        (int(r[0]), np.float32(float(r[2]))) for r in rows
    ]


def test_tensorboard_false_writes_no_events(tmp_path):
    output = tmp_path / "out"
    proc = run_cli("run", spec_for(tmp_path, output, log={"tensorboard": False}))
    assert proc.returncode == 0, proc.stderr
    assert not (output / "tensorboard").exists()


def test_restart_deletes_the_events_and_keeps_a_users_file(tmp_path):
    output = tmp_path / "out"
    spec = spec_for(tmp_path, output)
    assert run_cli("run", spec).returncode == 0
    before = set(os.listdir(output / "tensorboard"))
    (output / "tensorboard" / "notes.txt").write_text("mine")
    proc = run_cli("run", spec, "--restart")
    assert proc.returncode == 0, proc.stderr
    after = set(os.listdir(output / "tensorboard"))
    assert "notes.txt" in after and not (before & after), "the old events are gone, the user's file stays"
    assert_events_equal_loss_csv(output)

"""summary.json says how long training waited for frames and for checkpoints (on a GPU,
what filming and checkpointing cost the GPU), summed over resumes."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from conftest import run_cli, save_photo, signal_when, tiny_spec, write_spec

pytestmark = pytest.mark.slow  # real subprocesses, a real signal


def test_the_summary_reports_the_loops_waits_on_frames_and_checkpoints_summed_over_a_resume(tmp_path):
    image = str(tmp_path / "photo.png")
    save_photo(image, 40, 30, seed=5)
    out = tmp_path / "out"
    spec = tiny_spec(
        image,
        str(out),
        train={"epochs": 30, "batch_size": 100},  # 12 steps an epoch, 360 steps
        video={"every_n_steps": 3},
        checkpoint={"every_n_steps": 10, "keep": 100},
    )
    path = write_spec(tmp_path / "spec.yaml", spec)
    code, stdout, stderr = signal_when(path, signal.SIGTERM, lambda e: e["event"] == "checkpoint" and e["step"] >= 300)
    assert code == 75, stdout + stderr
    newest = sorted((out / "checkpoints").glob("ckpt-*.pt"))[-1]
    before = torch.load(newest, weights_only=True)["parts"]["budget"]["waited"]
    assert before["film"] > 0 and before["checkpoint"] > 0, "frames were filmed and checkpoints taken before the stop"
    proc = run_cli("run", path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumes"] == 1
    # the resumed run took the last sixth of the steps: its own waits alone are less than the first run's
    assert summary["film_wait_seconds"] >= round(before["film"], 3), "the first run's waits are kept"
    assert summary["checkpoint_wait_seconds"] >= round(before["checkpoint"], 3)
    assert summary["film_wait_seconds"] + summary["checkpoint_wait_seconds"] <= summary["train_seconds"], (
        "waits are part of the training time"
    )
    assert summary["step"] == {"graphed": False, "capture_failed": None}, "the CPU steps eagerly"

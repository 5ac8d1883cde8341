"""A time budget is planned once, in steps; after that the plan, not the clock,
decides the steps, so resumed runs of one plan are bit-identical."""

from __future__ import annotations

import shutil
import signal

import pytest
import torch
from conftest import assert_same_result, read_outputs, run_cli, save_photo, signal_when, tiny_spec, write_spec

pytestmark = pytest.mark.slow  # real subprocesses, real signals


def interrupt(path: str, after) -> None:
    """Run the job until `after(event)` holds, then SIGTERM it: it must checkpoint and exit 75."""
    code, out, err = signal_when(path, signal.SIGTERM, after)
    assert code == 75, out + err


def test_a_planned_budget_resumes_bit_identically_whatever_the_clock_does(tmp_path):
    image = str(tmp_path / "photo.png")
    save_photo(image, 29, 19, seed=2)
    first = tmp_path / "first"
    spec = tiny_spec(
        image,
        str(first),
        train={
            "epochs": None,
            "max_seconds": 4.0,
            "lr_schedule": "exponential",
            "lr_final": 0.05,
            "ema_decay": 0.9,
            "batch_size": 64,
        },
        checkpoint={"every_n_steps": 25},
        log={"every_seconds": 0.05},
    )
    path = write_spec(tmp_path / "first.yaml", spec)
    planned = {}

    def planned_then_checkpointed(event):
        if event["event"] == "progress" and event.get("total_steps"):
            planned.setdefault("steps", event["total_steps"])
        return event["event"] == "checkpoint" and "steps" in planned

    interrupt(path, planned_then_checkpointed)
    # the same interrupted job twice: one resumes straight to the end, the other is stopped once more on the way
    second = tmp_path / "second"
    shutil.copytree(first, second)
    proc = run_cli("run", path)
    assert proc.returncode == 0, proc.stderr
    straight = read_outputs(str(first))

    spec["output"] = str(second)
    path2 = write_spec(tmp_path / "second.yaml", spec)
    interrupt(path2, lambda e: e["event"] == "checkpoint")
    proc = run_cli("run", path2)
    assert proc.returncode == 0, proc.stderr
    twice = read_outputs(str(second))

    assert straight["summary"]["planned_steps"] == planned["steps"] == straight["summary"]["steps"]
    assert straight["summary"]["stopped_by"] == "max_seconds"
    assert twice["summary"]["resumes"] == straight["summary"]["resumes"] + 1
    assert_same_result(twice, straight)
    lrs = [float(row.split(",")[3]) for row in straight["rows"][1:]]
    assert lrs[-1] == pytest.approx(0.05 * lrs[0]), "the rate anneals to lr_final over the planned steps"


def test_frames_and_final_weights_come_from_the_averaged_weights_kept_in_the_checkpoint(tmp_path):
    image = str(tmp_path / "photo.png")
    save_photo(image, 23, 17, seed=4)
    out = tmp_path / "out"
    spec = tiny_spec(
        image,
        str(out),
        train={"epochs": 6, "ema_decay": 0.8, "batch_size": 64},
        checkpoint={"every_n_steps": 5, "keep": 100},
    )
    assert run_cli("run", write_spec(tmp_path / "s.yaml", spec)).returncode == 0
    end = sorted((out / "checkpoints").glob("ckpt-*.pt"))[-1]
    parts = torch.load(end, weights_only=True)["parts"]
    averaged, raw = parts["averager"]["weights"], parts["model"]
    assert parts["averager"]["updates"] == parts["budget"]["step"]
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw), "the average is not the raw weights"
    model = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(model[k], averaged[k]) for k in averaged), "model.pt holds the averaged weights"

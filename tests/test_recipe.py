"""The recipe from the device and the budget (imgfit_batch.recipe): a pure function of
measured numbers, so its choices are tested by feeding it numbers -- this CPU's kind and
"another device's" (an H100's, as docs/performance.md's GPU section measured them) -- and a job
records its recipe and a resumed run keeps the recorded one, whatever it would measure."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import LineReader, assert_same_result, cli_env, read_outputs, run_cli, save_photo, write_spec

from imgfit_batch import recipe
from imgfit_batch.specfile import parse_spec

PHOTO_20MP = (5472, 3648)
H100 = {65536: 17.3e6, 262144: 64.1e6, 1048576: 70.0e6}  # docs/performance.md: gpu_speed.py on one H100, 20 MP layout
A_CPU = {65536: 2.6e6, 262144: 2.5e6, 1048576: 2.2e6}  # a device where a step's cost is all per sample


def budget_spec(**train) -> object:
    return parse_spec(
        {
            "image": "a.png",
            "output": "out",
            "model": {"kind": "hashgrid"},
            "train": {"color": "rgb", "max_seconds": 60, **train},
        }
    )


def recipe_for(spec, numbers: dict, size=PHOTO_20MP) -> tuple[dict, dict]:
    """(what the calibration chose, everything derived with it)."""
    _, image_derived = spec.for_image(*size)
    chosen, _ = recipe.choose(spec, image_derived, recipe.Calibration("test", numbers))
    return chosen, spec.for_image(*size, chosen)[1]


def test_numbers_no_faster_at_bigger_batches_keep_the_recipe_the_image_alone_gives():
    spec = budget_spec()
    chosen, derived = recipe_for(spec, A_CPU)
    _, image_only = spec.for_image(*PHOTO_20MP)
    assert chosen["train.batch_size"] == image_only["train.batch_size"] == 65536
    assert {k: v for k, v in derived.items() if not k.startswith("checkpoint.")} == image_only


def test_another_devices_numbers_choose_a_bigger_batch_and_the_film_follows_it():
    spec = budget_spec()
    chosen, derived = recipe_for(spec, H100)
    _, image_only = spec.for_image(*PHOTO_20MP)
    assert chosen["train.batch_size"] == 262144, "3.7x the samples/s for 4x the batch: worth it"
    # 2^20 buys only 1.09x more than 2^18: not worth a 4x bigger step
    assert derived["train.batch_size"] == 262144
    assert derived["video.every_n_steps"] < image_only["video.every_n_steps"], "bigger steps: a frame every fewer steps"
    assert derived["model.finest_resolution"] == image_only["model.finest_resolution"], "the grid is the image's"
    # 64.1 M samples/s / 2^18 = 245 steps/s: 500 steps would be a checkpoint every 2 s
    assert chosen["checkpoint.every_n_steps"] == pytest.approx(245 * recipe.MIN_SECONDS_BETWEEN_CHECKPOINTS, rel=0.01)


def test_a_speedup_just_under_the_threshold_keeps_the_smaller_batch():
    spec = budget_spec()
    below = {65536: 1e6, 262144: 0.99 * recipe.MIN_SPEEDUP_PER_4X_BATCH * 1e6}
    at = {65536: 1e6, 262144: recipe.MIN_SPEEDUP_PER_4X_BATCH * 1e6}
    assert recipe_for(spec, below)[0]["train.batch_size"] == 65536
    assert recipe_for(spec, at)[0]["train.batch_size"] == 262144


def test_what_the_spec_sets_wins_over_the_recipe():
    assert not recipe.should_calibrate(budget_spec(batch_size=4096)), "a batch the user set is never calibrated"
    spec = parse_spec(
        {
            "image": "a.png",
            "output": "out",
            "model": {"kind": "hashgrid"},
            "train": {"max_seconds": 60},
            "checkpoint": {"every_n_steps": 100},
        }
    )
    chosen, derived = recipe_for(spec, H100)
    assert (
        "checkpoint.every_n_steps" not in chosen
        and spec.for_image(*PHOTO_20MP, chosen)[0].checkpoint.every_n_steps == 100
    )
    assert recipe.applicable(spec, {"train.batch_size": 262144, "checkpoint.every_n_steps": 7000}) == {
        "train.batch_size": 262144
    }
    assert recipe.applicable(budget_spec(batch_size=4096), {"train.batch_size": 262144}) == {}


def test_epochs_or_no_budget_or_a_seed_kind_never_calibrate():
    assert recipe.should_calibrate(budget_spec())
    assert not recipe.should_calibrate(budget_spec(epochs=3)), "epochs set: today's behaviour"
    assert not recipe.should_calibrate(parse_spec({"image": "a.png", "output": "o", "model": {"kind": "hashgrid"}}))
    assert not recipe.should_calibrate(parse_spec({"image": "a.png", "output": "o", "train": {"max_seconds": 60}}))


def test_an_image_no_bigger_than_its_batch_has_nothing_to_calibrate():
    assert recipe.candidate_batches(65536, 65536) == []
    assert recipe.candidate_batches(65536, 100_000) == [65536, 100_000]
    assert recipe.candidate_batches(65536, PHOTO_20MP[0] * PHOTO_20MP[1]) == [65536, 262144, 1048576]


def test_the_recorded_recipe_gives_the_same_values_back():
    spec = budget_spec()
    chosen, why = recipe.choose(spec, spec.for_image(*PHOTO_20MP)[1], recipe.Calibration("cuda (H100)", H100))
    record = json.loads(
        json.dumps(recipe.record(chosen, why, recipe.Calibration("cuda (H100)", H100)))
    )  # as JSON keeps it
    assert recipe.recorded_choice(record) == chosen
    again, _ = recipe.choose(spec, spec.for_image(*PHOTO_20MP)[1], recipe.Calibration.from_dict(record["calibration"]))
    assert again == chosen, "a pure function of the recorded numbers"
    assert "cuda (H100)" in record["from"] and "64.10 M" in record["from"]
    assert recipe.recorded_choice(None) is None and recipe.recorded_choice({"chosen": "garbage"}) is None


def test_validate_says_the_batch_will_follow_the_devices_calibration(tmp_path):
    image = str(tmp_path / "p.png")
    save_photo(image, 400, 300)
    spec = {
        "image": image,
        "output": str(tmp_path / "out"),
        "model": {"kind": "hashgrid"},
        "train": {"max_seconds": 60},
    }
    text = run_cli("validate", write_spec(tmp_path / "s.yaml", spec)).stdout
    assert "# derived from the image (400x300)" in text and "times its training step on its device" in text
    spec["train"]["epochs"] = 3
    assert "times its training step" not in run_cli("validate", write_spec(tmp_path / "e.yaml", spec)).stdout


# ---------------------------------------------------------------- a job: recorded, and kept on resume

WIDTH, HEIGHT = 300, 250  # 75,000 pixels: more than the image-derived batch (65,536), so a budget calibrates
ANOTHER_DEVICE = {65536: 1e6, 75000: 5e6}  # there, one whole-image step is 5x the samples/s: it takes 75,000


def job_spec(tmp_path, output: str) -> dict:
    image = str(tmp_path / "photo.png")
    if not os.path.exists(image):
        save_photo(image, WIDTH, HEIGHT, seed=3)
    return {
        "image": image,
        "output": output,
        "model": {"kind": "hashgrid", "num_levels": 4, "finest_resolution": 64, "log2_hashmap_size": 12},
        "train": {"color": "rgb", "max_seconds": 3.0, "device": "cpu", "lr_schedule": "exponential", "lr_final": 0.1},
        "video": {"fps": 4, "max_side": 32},
        "checkpoint": {"every_n_steps": 4},
        "log": {"every_seconds": 0.05},
    }


def run_job(
    spec_path: str, device_numbers: dict | None, stop_after_planned_checkpoint: bool = False
) -> subprocess.CompletedProcess | int:
    """The job as a real process: on this CPU's own calibration (None), or with "another device's" numbers."""
    args = ["run", spec_path]
    cmd = (
        [sys.executable, "-m", "imgfit_batch", *args]
        if device_numbers is None
        else [
            sys.executable,
            os.path.join(os.path.dirname(__file__), "another_device.py"),
            json.dumps(device_numbers),
            *args,
        ]
    )
    if not stop_after_planned_checkpoint:
        return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=180)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    reader, planned = LineReader(proc), {}
    try:

        def planned_then_checkpointed(event):
            if event["event"] == "progress" and event.get("total_steps"):
                planned["steps"] = event["total_steps"]
            return event["event"] == "checkpoint" and "steps" in planned

        assert reader.wait_for(planned_then_checkpointed) is not None, reader.rest() + proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_checkpoint_made_under_another_devices_recipe_resumes_here_with_it_bit_identically(tmp_path):
    first = str(tmp_path / "first")
    spec = job_spec(tmp_path, first)
    path = write_spec(tmp_path / "first.yaml", spec)
    assert run_job(path, ANOTHER_DEVICE, stop_after_planned_checkpoint=True) == 75
    second = str(tmp_path / "second")
    shutil.copytree(first, second)
    # the same checkpoint resumed twice: on "that device" again, and on this CPU, which would calibrate otherwise
    there = run_job(path, ANOTHER_DEVICE)
    assert there.returncode == 0, there.stderr
    spec["output"] = second
    here = run_job(write_spec(tmp_path / "second.yaml", spec), None)
    assert here.returncode == 0, here.stderr
    got, want = read_outputs(second), read_outputs(first)
    assert_same_result(got, want)
    for summary in (got["summary"], want["summary"]):
        assert summary["recipe"]["chosen"]["train.batch_size"] == WIDTH * HEIGHT
        assert summary["epochs"] == summary["steps"], "one whole-image batch a step: the recorded batch was used"
    assert got["summary"]["recipe"]["from"] == "recorded in the checkpoint"
    saved = json.loads(open(os.path.join(second, "spec.json")).read())
    assert (
        saved["spec"]["train"]["batch_size"] == WIDTH * HEIGHT
        and saved["recipe"]["chosen"] == got["summary"]["recipe"]["chosen"]
    )


@pytest.mark.slow
def test_a_checkpoint_made_under_this_cpus_recipe_keeps_it_on_another_device(tmp_path):
    out = str(tmp_path / "out")
    path = write_spec(tmp_path / "s.yaml", job_spec(tmp_path, out))
    assert run_job(path, None, stop_after_planned_checkpoint=True) == 75
    first = json.loads(open(os.path.join(out, "spec.json")).read())
    assert first["recipe"]["calibration"]["device"] == "cpu", "a fresh budget job measured this CPU"
    cpu_batch = first["spec"]["train"]["batch_size"]
    resumed = run_job(path, ANOTHER_DEVICE)  # that device would take 75,000
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    assert summary["resumes"] == 1 and summary["recipe"]["chosen"]["train.batch_size"] == cpu_batch
    assert json.loads(open(os.path.join(out, "spec.json")).read())["spec"]["train"]["batch_size"] == cpu_batch

"""The whole job on a local folder: an RGB photo with odd width and height in,
every contract output out, and the outputs agree with each other and the input."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from conftest import (
    CONTRACT_FILES,
    assert_one_error_line,
    check_outputs,
    events,
    psnr,
    save_photo,
    tiny_spec,
    write_spec,
)
from PIL import Image

from imgfit_batch import video


def test_rgb_photo_with_odd_size_trains_locally_with_every_output(cli, tmp_path):
    image = tmp_path / "photo.png"
    pixels = save_photo(image, 33, 21, seed=1)
    output = tmp_path / "run"
    result = cli("run", write_spec(tmp_path / "spec.yaml", tiny_spec(str(image), str(output))))
    assert result.exit_code == 0, result.stderr

    for name in CONTRACT_FILES:
        assert (output / name).is_file(), name
    checkpoints = os.listdir(output / "checkpoints")
    assert any(n.endswith(".pt") for n in checkpoints) and any(n.endswith(".json") for n in checkpoints)
    files = {name: (output / name).read_bytes() for name in CONTRACT_FILES}
    summary = check_outputs(files, pixels, tmp_path)
    assert summary["steps"] == 2 * math.ceil(33 * 21 / 128)

    kinds = [e["event"] for e in events(result.stdout)]
    assert kinds[0] == "start" and kinds[-1] == "completed"
    assert "progress" in kinds and "checkpoint" in kinds


def test_gray_run_caps_video_frames_at_max_side(cli, tmp_path):
    image = tmp_path / "wide.png"
    rgb = save_photo(image, 81, 17, seed=2)
    output = tmp_path / "run"
    spec = tiny_spec(str(image), str(output), train={"color": "gray", "epochs": 1}, video={"max_side": 40})
    result = cli("run", write_spec(tmp_path / "spec.yaml", spec))
    assert result.exit_code == 0, result.stderr
    summary = json.loads((output / "summary.json").read_text())
    assert (summary["video"]["width"], summary["video"]["height"]) == (40, 8)
    assert video.count_frames(str(output / "video.mp4")) == summary["frames"]
    final = np.asarray(Image.open(output / "final.png"))
    assert final.shape == (17, 81), "final.png stays at the input's resolution"
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    assert summary["psnr_db"] == pytest.approx(psnr(final, gray), abs=0.05)  # rounding of luma aside


def test_progress_lines_are_json_not_a_progress_bar(cli, tmp_path):
    image = tmp_path / "photo.png"
    save_photo(image)
    spec = tiny_spec(str(image), str(tmp_path / "run"), log={"every_seconds": 0.01})
    result = cli("run", write_spec(tmp_path / "spec.yaml", spec))
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), "non-TTY stdout is JSON lines only"
    progress = [e for e in events(result.stdout) if e["event"] == "progress"]
    assert progress
    for key in ("step", "epoch", "loss", "lr", "elapsed_seconds", "eta_seconds"):
        assert key in progress[-1], key
    assert "\r" not in result.stdout and "\x1b[" not in result.stdout + result.stderr


def list_spec(tmp_path) -> str:
    images = []
    for i, name in enumerate(("alpha", "beta")):
        path = tmp_path / f"{name}.png"
        save_photo(path, 13, 9, seed=i)
        images.append(str(path))
    return write_spec(tmp_path / "spec.yaml", tiny_spec(images, str(tmp_path / "runs"), train={"epochs": 1}))


def test_list_of_images_trains_the_one_picked_by_the_indexed_job_variable(cli, tmp_path, monkeypatch):
    spec = list_spec(tmp_path)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    result = cli("run", spec)
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "runs" / "beta" / "summary.json").read_text())["image"].endswith("beta.png")
    assert not (tmp_path / "runs" / "alpha").exists()


def test_index_flag_beats_the_environment_and_out_of_range_is_exit_2(cli, tmp_path, monkeypatch):
    spec = list_spec(tmp_path)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    result = cli("run", spec, "--index", "0")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "runs" / "alpha" / "summary.json").exists()
    result = cli("run", spec, "--index", "2")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "index 2")


def test_list_without_an_index_is_exit_2(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    result = cli("run", list_spec(tmp_path))
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "--index")


def test_run_reads_the_spec_from_stdin(cli, tmp_path):
    image = tmp_path / "photo.png"
    save_photo(image, 11, 7)
    text = tmp_path / "x.yaml"
    write_spec(text, tiny_spec(str(image), str(tmp_path / "run"), train={"epochs": 1}))
    result = cli("run", "-", stdin=text.read_text())
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "run" / "summary.json").exists()

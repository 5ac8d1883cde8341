"""The whole job on a local folder: an RGB photo with odd width and height in,
every contract output out, and the outputs agree with each other and the input."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import events, read_outputs, save_photo, tiny_spec, write_spec
from imgfit_batch import video
from imgfit_batch.models.seed import FourierConfig
from imgfit_batch.render import render

CONTRACT_FILES = ("video.mp4", "loss.csv", "summary.json", "final.png", "model.pt")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def check_outputs(files: dict[str, bytes], input_pixels: np.ndarray, tmp_path) -> dict:
    """Everything the contract says about a finished output, from its files' bytes."""
    h, w, c = input_pixels.shape
    summary = json.loads(files["summary.json"])
    assert summary["status"] == "completed"
    for key in ("steps", "frames", "psnr_db", "wall_seconds", "resumes", "device"):
        assert key in summary, key
    assert summary["resumes"] == 0 and summary["device"] == "cpu"

    final = np.asarray(Image.open(io.BytesIO(files["final.png"])))
    final = final[..., None] if final.ndim == 2 else final
    assert final.shape == (h, w, c), "final.png is the input's resolution"
    assert summary["psnr_db"] == pytest.approx(psnr(final, input_pixels), abs=1e-3)

    rows = files["loss.csv"].decode().splitlines()
    header = rows[0].split(",")
    assert {"step", "loss"} <= set(header)
    steps = [int(r.split(",")[header.index("step")]) for r in rows[1:]]
    assert steps == list(range(1, summary["steps"] + 1))

    model = torch.load(io.BytesIO(files["model.pt"]), weights_only=True)
    net = FourierConfig(**{k: v for k, v in model["model"].items()}).build(c)
    net.load_state_dict(model["state_dict"])
    again = render(net, w, h, torch.device("cpu")).numpy()
    assert np.array_equal(again, final), "model.pt renders exactly final.png"

    mp4 = tmp_path / "check.mp4"
    mp4.write_bytes(files["video.mp4"])
    probe = subprocess.run([video.ffmpeg_exe(), "-hide_banner", "-i", str(mp4)], capture_output=True, text=True)
    stream = next(line for line in probe.stderr.splitlines() if "Video:" in line)
    assert "h264" in stream and "yuv420p" in stream, stream
    assert video.count_frames(str(mp4)) == summary["frames"]
    v = summary["video"]
    frames = video.decode_frames(str(mp4), v["width"], v["height"], c)
    assert len(frames) == summary["frames"]
    if (v["width"], v["height"]) == (w, h):
        # yuv420p halves the chroma resolution, so compare loosely, and against the first frame
        assert psnr(frames[-1], final) > max(22.0, psnr(frames[0], final) + 3), "the last frame shows the final reconstruction"
    return summary


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

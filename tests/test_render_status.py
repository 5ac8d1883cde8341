"""`render` and `status` read a job back from its output location."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from seed_reference import load_plain_model, plain_render

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "imgfit_batch", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A small completed RGB job with an odd-sized input."""
    root = tmp_path_factory.mktemp("job")
    y, x = np.mgrid[0:21, 0:27]
    rgb = np.stack([x * 9, y * 12, (x + y) * 5], -1).astype(np.uint8)
    Image.fromarray(rgb).save(root / "in.png")
    (root / "spec.yaml").write_text(
        "image: in.png\noutput: out\n"
        "model: {kind: fourier, fourier_order: 4, hidden_size: 16, num_hidden_layers: 2}\n"
        "train: {color: rgb, epochs: 3, batch_size: 200}\n"
        "checkpoint: {every_n_steps: 4}\n"
    )
    proc = cli("run", "spec.yaml", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root


def test_render_at_scale_one_reproduces_final_png(finished):
    proc = cli("render", "out", "--scale", "1", "-o", "again.png", cwd=finished)
    assert proc.returncode == 0, proc.stderr
    again = np.asarray(Image.open(finished / "again.png"))
    final = np.asarray(Image.open(finished / "out" / "final.png"))
    assert again.shape == final.shape == (21, 27, 3)
    assert np.array_equal(again, final)


def test_render_scales_the_field_not_the_pixels(finished):
    proc = cli("render", "out/model.pt", "--scale", "3", "-o", "big.png", cwd=finished)
    assert proc.returncode == 0, proc.stderr
    big = np.asarray(Image.open(finished / "big.png")).astype(int)
    final = np.asarray(Image.open(finished / "out" / "final.png")).astype(int)
    assert big.shape == (63, 81, 3)
    # every pixel of the 3x image is the field at that pixel's coordinate on the 81x63
    # grid, as the plain re-implementation of the model computes it from model.pt
    # (1 level of slack: a value on a rounding boundary may land either way)
    field = plain_render(load_plain_model(torch.load(finished / "out" / "model.pt", weights_only=True)), 81, 63)
    assert np.abs(big - field.numpy().astype(int)).max() <= 1
    # every 3rd sample of the 3x grid lands on an original pixel's coordinate
    assert np.abs(big[::3, ::3] - final).max() <= 1


def test_render_explicit_width_keeps_aspect_ratio(finished):
    proc = cli("render", "out", "--width", "54", "-o", "w.png", cwd=finished)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(finished / "w.png").size == (54, 42)


def test_render_from_an_unfinished_job_uses_its_newest_checkpoint(finished, tmp_path):
    partial = tmp_path / "partial"
    (partial / "checkpoints").mkdir(parents=True)
    for name in os.listdir(finished / "out" / "checkpoints"):
        if name.startswith("ckpt-"):
            (partial / "checkpoints" / name).write_bytes((finished / "out" / "checkpoints" / name).read_bytes())
    (partial / "spec.json").write_text((finished / "out" / "spec.json").read_text())
    proc = cli("render", str(partial), "-o", str(tmp_path / "p.png"), cwd=finished)
    assert proc.returncode == 0, proc.stderr
    # the newest checkpoint is the end of training, so it renders the final image
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "p.png")), np.asarray(Image.open(finished / "out" / "final.png"))
    )


def test_render_of_a_missing_output_is_exit_3_in_one_line(tmp_path):
    proc = cli("render", str(tmp_path / "nothing"), "-o", "x.png", cwd=tmp_path)
    assert proc.returncode == 3
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_status_of_a_completed_job(finished):
    proc = cli("status", "out", "--json", cwd=finished)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    summary = json.loads((finished / "out" / "summary.json").read_text())
    assert s["state"] == "completed"
    assert s["step"] == summary["steps"] and s["psnr_db"] == summary["psnr_db"]
    assert s["video"].endswith("video.mp4")
    human = cli("status", "out", cwd=finished)
    assert human.stdout.startswith("completed, step") and "PSNR" in human.stdout


def test_status_without_summary_reports_interrupted_at_the_checkpoint_step(finished, tmp_path):
    partial = tmp_path / "partial"
    (partial / "checkpoints").mkdir(parents=True)
    names = sorted(n for n in os.listdir(finished / "out" / "checkpoints") if n.startswith("ckpt-"))
    for name in names:
        (partial / "checkpoints" / name).write_bytes((finished / "out" / "checkpoints" / name).read_bytes())
    proc = cli("status", str(partial), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    newest = max(int(n[5:-5]) for n in names if n.endswith(".json"))
    assert s["state"] == "interrupted" and s["step"] == newest
    assert s["checkpoint_age_seconds"] is not None


def test_status_of_an_empty_location_is_exit_3(tmp_path):
    proc = cli("status", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 3 and "no imgfit-batch job here" in proc.stderr


@pytest.mark.slow
def test_status_and_render_read_an_s3_output(s3, tmp_path):
    from conftest import run_cli, save_photo, tiny_spec, write_spec

    pixels = save_photo(str(tmp_path / "in.png"), 19, 13, seed=2)
    s3.put("in/photo.png", (tmp_path / "in.png").read_bytes())
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(s3.uri("in/photo.png"), s3.uri("runs/photo")))
    proc = run_cli("run", spec)
    assert proc.returncode == 0, proc.stderr

    status = run_cli("status", s3.uri("runs/photo"), "--json")
    assert status.returncode == 0, status.stderr
    s = json.loads(status.stdout)
    summary = json.loads(s3.get("runs/photo/summary.json"))
    assert s["state"] == "completed" and s["step"] == summary["steps"]
    assert s["video"] == s3.uri("runs/photo/video.mp4")

    out = run_cli("render", s3.uri("runs/photo"), "--scale", "2", "-o", s3.uri("renders/big.png"))
    assert out.returncode == 0, out.stderr
    import io

    big = np.asarray(Image.open(io.BytesIO(s3.get("renders/big.png"))))
    assert big.shape == (pixels.shape[0] * 2, pixels.shape[1] * 2, 3)
    final = np.asarray(Image.open(io.BytesIO(s3.get("runs/photo/final.png"))))
    assert np.abs(big[::2, ::2].astype(int) - final).max() <= 1

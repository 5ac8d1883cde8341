"""The film of an image larger than its frames: every frame is an image of the field at
frame size (box-filtered), not a point sample of it, and every frame is scored against
the input shrunk with the same filter.

Fine detail above the frame's Nyquist rate is where point sampling shows: a zone plate
or fine stripes sampled once per frame pixel alias into false patterns (a large error
against the area-shrunk image); averaged over each pixel's footprint they do not.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal

import numpy as np
import pytest
import torch
from conftest import assert_same_result, events, psnr, read_outputs, run_cli, signal_when, write_spec
from PIL import Image

from imgfit_batch import video
from imgfit_batch.models.hashgrid import HashGridConfig
from imgfit_batch.plot import training_plot
from imgfit_batch.rendering import box_shrink, render, render_image

CPU = torch.device("cpu")


def zone_plate(width: int, height: int) -> np.ndarray:
    """(H, W, 3) float in [0, 1]: rings whose frequency grows to ~0.45 cycles a pixel at the
    corners, and two channels of fine stripes (period 3.1 and 2.3 pixels)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r2 = (x - width / 2) ** 2 + (y - height / 2) ** 2
    rings = 0.5 + 0.5 * np.cos(np.pi * r2 / (1.1 * max(width, height)))
    return np.stack([rings, 0.5 + 0.5 * np.sin(2 * np.pi * x / 3.1), 0.5 + 0.5 * np.cos(2 * np.pi * (x + y) / 2.3)], -1)


def exact_hashgrid(image: torch.Tensor, decoder: str = "sum") -> torch.nn.Module:
    """A hash-grid field that equals the uint8 `image` at every pixel: its finest level is dense
    with one vertex per pixel holding the pixel (the other levels and the bias zero)."""
    height, width, _ = image.shape
    cfg = HashGridConfig(
        kind="hashgrid",
        num_levels=3,
        base_resolution=8,
        finest_resolution=width,
        log2_hashmap_size=22,
        decoder=decoder,
        init_scale=0.0,
    )
    model = cfg.build(3, width, height).eval()
    enc = model.encoding
    assert enc.level_shapes[-1] == (width, height) and enc.dense_levels == [0, 1, 2]
    with torch.no_grad():
        grid = enc.dense[2][0]  # (F, height+1, width+1); vertex row j is image row height - j
        grid[:, 1:, :width] = image.flip(0).permute(2, 0, 1).float() / 255
        model.bias.zero_()
    return model


def as_uint8(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))


def test_exact_field_renders_the_image_at_full_size():
    image = as_uint8(zone_plate(96, 64))
    assert torch.equal(render(exact_hashgrid(image), 96, 64, CPU), image)


def test_frames_of_fine_detail_are_box_filtered_where_point_samples_alias():
    image = as_uint8(zone_plate(384, 256))
    model = exact_hashgrid(image)
    want = box_shrink(image, 96, 64).numpy()  # what a viewer of a 96 px film should see
    point = render(model, 96, 64, CPU).numpy()
    box = render_image(model, 384, 256, 96, 64, CPU).numpy()
    assert psnr(point, want) < 15, "the old sampling aliases on this image (else the test proves nothing)"
    assert psnr(box, want) > 45, "a box-filtered frame is the shrunk image"
    assert np.array_equal(render_image(model, 384, 256, 96, 64, CPU, filter="point").numpy(), point)


def test_a_linear_decoder_is_box_filtered_exactly_too():
    torch.manual_seed(1)
    model = HashGridConfig(kind="hashgrid", decoder="linear", init_scale=0.05, log2_hashmap_size=12).build(3, 301, 203)
    with torch.no_grad():
        from imgfit_batch.data import coords

        full = model(coords(torch.arange(301 * 203), 301, 203)).view(203, 301, 3)
        assert 0 < float(full.min()) and float(full.max()) < 1, "no clamping: the field is linear here"
        assert model.encoding.hashed_levels, "a hashed level takes part"
        got = model.box_image(301, 203, 77, 52)
    from imgfit_batch.rendering import Banded, footprints

    x = Banded.build(*footprints(301, 77), 77, 301, CPU)
    y = Banded.build(*footprints(203, 52), 52, 203, CPU)
    want = y.apply(x.apply(full, 1), 0)
    assert float((got - want).abs().max()) < 1e-5


class ZonePlateField(torch.nn.Module):
    """A field that is not linear in any parameter (the caller must supersample): the zone
    plate itself, evaluated at the seed's coordinates of a width x height image."""

    def __init__(self, width: int, height: int):
        super().__init__()
        self.width, self.height = width, height

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        c = (xy[:, 0].double() + 1) * (self.width / 2)
        r = self.height - (xy[:, 1].double() + 1) * (self.height / 2)
        r2 = (c - self.width / 2) ** 2 + (r - self.height / 2) ** 2
        rings = 0.5 + 0.5 * torch.cos(math.pi * r2 / (1.1 * max(self.width, self.height)))
        return rings.float().unsqueeze(1)


def test_fields_without_a_linear_form_are_supersampled_over_the_footprint():
    field = ZonePlateField(384, 256)
    image = zone_plate(384, 256)[..., :1]
    full = render(field, 384, 256, CPU)
    assert psnr(full.numpy(), as_uint8(image).numpy()) > 45, "the test field is the zone plate"
    want = box_shrink(as_uint8(image), 96, 64).numpy()
    point = render(field, 96, 64, CPU).numpy()
    box = render_image(field, 384, 256, 96, 64, CPU).numpy()
    assert psnr(point, want) < 15
    assert psnr(box, want) > 40, "4 x 4 samples of a 4 x 4 pixel footprint: its average"


def test_box_shrink_averages_by_area():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    blocks = image.double().view(20, 3, 30, 3, 3).mean(dim=(1, 3))  # an integer factor: block means
    assert torch.equal(box_shrink(image, 30, 20), blocks.round().to(torch.uint8))
    constant = torch.full((61, 97, 1), 200, dtype=torch.uint8)
    assert torch.equal(box_shrink(constant, 23, 17), torch.full((17, 23, 1), 200, dtype=torch.uint8))
    odd = box_shrink(image, 41, 27).double()  # a fractional factor keeps the mean (each input pixel counts once)
    assert abs(float(odd.mean()) - float(image.double().mean())) < 0.6
    assert box_shrink(image, 90, 60) is image


# ---------------------------------------------------------------- the job


def fine_detail_spec(tmp_path, output: str, **train) -> str:
    image = tmp_path / "zone.png"
    Image.fromarray(as_uint8(zone_plate(186, 138)).numpy(), "RGB").save(image)
    spec = {
        "image": str(image),
        "output": output,
        "model": {"kind": "hashgrid"},
        "train": {"color": "rgb", "epochs": 10, "batch_size": 2048, "device": "cpu", **train},
        "video": {"every_n_steps": 2, "fps": 4, "max_side": 62},
        "checkpoint": {"every_n_steps": 4},
        "log": {"every_seconds": 0.2},
    }
    return write_spec(tmp_path / "spec.yaml", spec)


@pytest.fixture(scope="module")
def fine_detail_job(tmp_path_factory):
    """A completed hashgrid job on the zone plate, filmed at a third of its size."""
    root = tmp_path_factory.mktemp("film")
    proc = run_cli("run", fine_detail_spec(root, str(root / "out"), epochs=3))
    assert proc.returncode == 0, proc.stderr
    return root, proc


def test_every_frame_of_an_image_larger_than_its_frames_is_scored_and_plotted(fine_detail_job):
    tmp_path, proc = fine_detail_job
    output = tmp_path / "out"
    summary = json.loads((output / "summary.json").read_text())
    assert (summary["video"]["width"], summary["video"]["height"]) == (62, 46)
    rows = [r.split(",") for r in (output / "loss.csv").read_text().splitlines()[1:]]
    frame_rows = [r for r in rows if int(r[0]) % 2 == 0 or int(r[0]) == summary["steps"]]
    assert len(frame_rows) == summary["frames"] == video.count_frames(str(output / "video.mp4"))
    assert all(r[4] for r in frame_rows), "psnr_db on every frame row"
    assert all(not r[4] for r in rows if r not in frame_rows)
    ssim_rows = [r for r in frame_rows if r[5]]
    assert len(ssim_rows) == summary["frames"] // 10 + (summary["frames"] % 10 != 0)  # every 10th and the last
    # the last frame's score is the final weights' box-filtered image against the shrunk input
    from imgfit_batch.readback import load_model

    model, _ = load_model(str(output / "model.pt"))
    target = torch.from_numpy(np.array(Image.open(tmp_path / "zone.png")))
    frame = render_image(model, 186, 138, 62, 46, CPU)
    assert float(frame_rows[-1][4]) == pytest.approx(psnr(frame.numpy(), box_shrink(target, 62, 46).numpy()), abs=2e-3)
    progress = [e for e in events(proc.stdout) if e["event"] == "progress"]
    assert progress and progress[-1]["psnr_db"] is not None, "the progress lines show the frame's PSNR"
    plot = Image.open(output / "progress.png")
    one_panel = Image.open(io.BytesIO(training_plot([1, 2], [1.0, 0.5], None, title="t")))
    assert plot.height > one_panel.height * 1.5, "progress.png draws the PSNR panel"
    assert 0 < summary["film_wait_seconds"] < summary["train_seconds"]


def test_render_below_the_input_size_is_box_filtered(fine_detail_job, tmp_path):
    root, _ = fine_detail_job
    final = torch.from_numpy(np.array(Image.open(root / "out" / "final.png")))
    proc = run_cli("render", str(root / "out"), "--scale", "0.25", "-o", str(tmp_path / "small.png"))
    assert proc.returncode == 0, proc.stderr
    small = np.asarray(Image.open(tmp_path / "small.png"))
    assert small.shape == (34, 46, 3)
    want = box_shrink(final, 46, 34).numpy()  # final.png shrunk: the same field, filtered after rounding
    from imgfit_batch.readback import load_model

    point = render(load_model(str(root / "out"))[0], 46, 34, CPU).numpy()
    assert psnr(small, want) > 40
    assert psnr(point, want) < psnr(small, want) - 10, "point samples of the learned rings alias"


def test_a_resumed_job_of_an_image_larger_than_its_frames_ends_with_a_byte_identical_video(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir()
    run_dir.mkdir()
    proc = run_cli("run", fine_detail_spec(ref_dir, str(ref_dir / "out")))
    assert proc.returncode == 0, proc.stderr
    want = read_outputs(str(ref_dir / "out"))
    assert want["summary"]["video"]["segments"] >= 2, "the resume must cross a closed segment"
    spec = fine_detail_spec(run_dir, str(run_dir / "out"))
    code, _, stderr = signal_when(spec, signal.SIGTERM, lambda e: e["event"] == "checkpoint" and e["step"] >= 84)
    assert code == 75, stderr
    assert not os.path.exists(run_dir / "out" / "summary.json")
    proc = run_cli("run", spec)
    assert proc.returncode == 0, proc.stderr
    assert_same_result(read_outputs(str(run_dir / "out")), want)

"""PSNR, SSIM and the training plot."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from imgfit_batch.metrics import psnr, ssim
from imgfit_batch.plot import nice_ticks, training_plot


def photo_like(h: int = 48, w: int = 40, c: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = 0.5 + 0.3 * torch.sin(6 * x) * torch.cos(4 * y)
    image = torch.stack([base + 0.1 * torch.rand(h, w, generator=g) for _ in range(c)], -1)
    return image.clamp(0, 1)


def test_psnr_of_identical_images_is_infinite():
    image = photo_like()
    assert math.isinf(float(psnr(image, image)))


def test_psnr_matches_the_formula_for_known_noise():
    image = photo_like(c=3)
    assert float(psnr(image + 0.1, image)) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(1)) * 0.02
    expected = -10 * math.log10(float((noise**2).mean()))
    assert float(psnr(image + noise, image)) == pytest.approx(expected, abs=1e-4)


def test_ssim_of_identical_images_is_one():
    image = photo_like(c=3)
    assert float(ssim(image, image)) == pytest.approx(1.0, abs=1e-6)


def test_ssim_drops_as_noise_grows():
    image = photo_like()
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(image.shape, generator=g)
    values = [float(ssim((image + s * noise).clamp(0, 1), image)) for s in (0.0, 0.01, 0.05, 0.2)]
    assert values[0] == pytest.approx(1.0, abs=1e-6)
    assert values[0] > values[1] > values[2] > values[3]
    assert values[3] < 0.5


def direct_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of one channel, each 11x11 window's statistics computed directly."""
    size, sigma = 11, 1.5
    g = np.exp(-((np.arange(size) - 5) ** 2) / (2 * sigma**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a, b = x[i : i + size, j : j + size], y[i : i + size, j : j + size]
            ma, mb = (win * a).sum(), (win * b).sum()
            va, vb = (win * (a - ma) ** 2).sum(), (win * (b - mb) ** 2).sum()
            cov = (win * (a - ma) * (b - mb)).sum()
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_windowed_definition_and_averages_channels():
    clean = photo_like(24, 20, c=3)
    noisy = (clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    per_channel = [direct_ssim(noisy[..., k].double().numpy(), clean[..., k].double().numpy()) for k in range(3)]
    assert float(ssim(noisy, clean)) == pytest.approx(np.mean(per_channel), abs=1e-5)
    assert float(ssim(noisy[..., 0], clean[..., 0])) == pytest.approx(per_channel[0], abs=1e-5)


def test_metrics_reject_a_batch_of_images_with_a_clear_shape_message():
    with pytest.raises(ValueError, match="shape"):
        ssim(torch.zeros(2, 8, 8, 3), torch.zeros(2, 8, 8, 3))


# ---------------------------------------------------------------- plot


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def has_color(pixels: np.ndarray, rgb: tuple) -> bool:
    return bool((np.abs(pixels.astype(int) - rgb).sum(-1) < 30).sum() > 50)


LOSS_BLUE, PSNR_RED, AXIS_GRAY = (31, 119, 180), (214, 39, 40), (60, 60, 60)


def color_mask(pixels: np.ndarray, rgb: tuple) -> np.ndarray:
    return np.abs(pixels.astype(int) - rgb).sum(-1) < 30


def plot_frames(pixels: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of each panel's plot-area frame, top to bottom: the
    rectangles drawn in the axis colour, found from the pixels."""
    axis = color_mask(pixels, AXIS_GRAY)
    rows = np.flatnonzero(axis.sum(1) > pixels.shape[1] // 2)  # the frames' horizontal edges
    frames = []
    for top, bottom in zip(rows[::2], rows[1::2]):
        cols = np.flatnonzero(axis[top] & axis[bottom])  # where both edges run
        frames.append((int(top), int(bottom), int(cols.min()), int(cols.max())))
    return frames


def assert_curve_draws(pixels: np.ndarray, frame: tuple, rgb: tuple, xs, values, x_range) -> None:
    """The curve in `frame` passes through every (x, value) point: at the point's column
    (x mapped linearly over the frame's width) there is a pixel of the curve's colour at
    the point's height (value mapped linearly between the curve's lowest and highest
    pixel). The curve does not leave the frame, and spans its width."""
    top, bottom, left, right = frame
    inside = color_mask(pixels, rgb)[top + 1 : bottom, left + 1 : right]
    rows_, cols_ = np.nonzero(inside)
    assert len(rows_) > 0, "no curve drawn"
    x_lo, x_hi = x_range

    def column(x):  # in `inside`, which starts one pixel right of the frame's left edge
        return round((x - x_lo) / (x_hi - x_lo) * (right - left)) - 1

    assert abs(cols_.min() - column(xs[0])) <= 3 and abs(cols_.max() - column(xs[-1])) <= 3, (
        "the curve runs from the first point's step to the last one's"
    )
    high_row, low_row = rows_.min(), rows_.max()  # where the largest and smallest values are drawn
    lo, hi = min(values), max(values)
    for x, v in zip(xs, values):
        col = column(x)
        row = low_row - (v - lo) / (hi - lo) * (low_row - high_row)
        window = inside[max(0, int(row) - 3) : int(row) + 4, max(0, col - 1) : col + 2]
        assert window.any(), f"the curve misses the point x={x}, value={v:.4g} (column {col}, row {row:.0f})"


def test_training_plot_draws_loss_on_a_log_scale_and_psnr_below():
    steps = list(range(1, 201))
    loss = [0.1 * math.exp(-s / 40) + 0.002 * math.sin(s / 9) ** 2 for s in steps]
    psnr_db = [10 + 20 * math.sqrt(s / 200) if s % 2 == 0 else None for s in steps]  # only on frame steps
    pixels = decode(training_plot(steps, loss, psnr_db, title="camera.png"))
    assert pixels.shape[1] >= 800 and pixels.shape[0] > pixels.shape[1] / 2
    frames = plot_frames(pixels)
    assert len(frames) == 2, "a loss panel and a PSNR panel"
    (loss_frame, psnr_frame) = frames
    assert loss_frame[1] < psnr_frame[0], "loss above, PSNR below"
    assert all(f[3] - f[2] > pixels.shape[1] * 0.7 and f[1] - f[0] > 100 for f in frames), frames
    assert_curve_draws(pixels, loss_frame, LOSS_BLUE, steps, [math.log10(v) for v in loss], (1, 200))
    assert_curve_draws(pixels, psnr_frame, PSNR_RED, steps[1::2], psnr_db[1::2], (1, 200))
    # each panel shows only its own curve
    top, bottom, left, right = loss_frame
    assert not color_mask(pixels[top:bottom, left:right], PSNR_RED).any()
    top, bottom, left, right = psnr_frame
    assert not color_mask(pixels[top:bottom, left:right], LOSS_BLUE).any()


def test_training_plot_survives_infinite_psnr_one_point_and_no_psnr():
    decode(training_plot([1, 2], [0.01, 0.0], [30.0, float("inf")]))
    one_point = decode(training_plot([5], [0.02], [17.0]))
    assert [
        color_mask(one_point[t:b, l:r], c).any()
        for (t, b, l, r), c in zip(plot_frames(one_point), (LOSS_BLUE, PSNR_RED))
    ] == [True, True], "each panel marks its one point"
    only_loss = decode(training_plot([1, 2, 3], [0.3, 0.2, 0.1]))
    assert len(plot_frames(only_loss)) == 1, "no PSNR panel without PSNR values"
    assert only_loss.shape[0] < one_point.shape[0], "and no room left for one"
    assert not has_color(only_loss, PSNR_RED)
    assert_curve_draws(
        only_loss, plot_frames(only_loss)[0], LOSS_BLUE, [1, 2, 3], [math.log10(v) for v in (0.3, 0.2, 0.1)], (1, 3)
    )
    decode(training_plot([], []))


def test_nice_ticks_are_round_and_cover_the_range():
    ticks = nice_ticks(0, 937)
    assert ticks[0] == 0 and ticks[-1] >= 800 and len(ticks) <= 8
    step = ticks[1] - ticks[0]
    assert step in (100, 200, 500)


def test_ssim_in_bands_of_rows_equals_ssim_of_the_whole_image():
    torch.manual_seed(1)
    a = torch.rand(97, 61, 3)
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    whole = ssim(a, b)
    for rows in (11, 20, 33, 50):  # band heights that do and do not divide the image
        banded = ssim(a, b, max_band_pixels=rows * 61)
        assert abs(float(banded) - float(whole)) < 1e-6, rows


def test_job_progress_png_plots_its_loss_csv(cli, tmp_path):
    """The progress.png a real job writes draws the loss and PSNR columns of its loss.csv."""
    import csv

    from conftest import save_photo, tiny_spec, write_spec

    save_photo(tmp_path / "in.png", 16, 12)
    spec = tiny_spec(str(tmp_path / "in.png"), str(tmp_path / "out"), train={"epochs": 6, "batch_size": 64})
    result = cli("run", write_spec(tmp_path / "spec.yaml", spec))
    assert result.exit_code == 0, result.stderr
    with open(tmp_path / "out" / "loss.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 18
    pixels = np.asarray(Image.open(tmp_path / "out" / "progress.png").convert("RGB"))
    loss_frame, psnr_frame = plot_frames(pixels)
    steps = [int(r["step"]) for r in rows]
    assert_curve_draws(pixels, loss_frame, LOSS_BLUE, steps, [math.log10(float(r["loss"])) for r in rows], (1, 18))
    scored = [r for r in rows if r["psnr_db"]]
    assert len(scored) == 9
    assert_curve_draws(
        pixels, psnr_frame, PSNR_RED, [int(r["step"]) for r in scored], [float(r["psnr_db"]) for r in scored], (1, 18)
    )

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


def test_training_plot_draws_loss_and_psnr_panels():
    steps = list(range(1, 201))
    loss = [0.1 * math.exp(-s / 40) for s in steps]
    psnr_db = [-10 * math.log10(v) if s % 2 == 0 else None for s, v in zip(steps, loss)]
    pixels = decode(training_plot(steps, loss, psnr_db, title="camera.png"))
    assert pixels.shape[0] > pixels.shape[1] / 2 and pixels.shape[1] >= 800
    top, bottom = pixels[: pixels.shape[0] // 2], pixels[pixels.shape[0] // 2 :]
    assert has_color(top, (31, 119, 180)) and not has_color(top, (214, 39, 40))  # loss line up top
    assert has_color(bottom, (214, 39, 40))  # PSNR line below


def test_training_plot_survives_infinite_psnr_one_point_and_no_psnr():
    decode(training_plot([1, 2], [0.01, 0.0], [30.0, float("inf")]))
    decode(training_plot([5], [0.02], [17.0]))
    only_loss = decode(training_plot([1, 2, 3], [0.3, 0.2, 0.1]))
    assert not has_color(only_loss, (214, 39, 40))
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

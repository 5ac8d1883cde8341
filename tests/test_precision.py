"""train.precision means one thing on every device, and what must stay exact does:
raw coordinates entering a network, the metrics, final.png (see device.exact_fp32)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imgfit_batch import metrics
from imgfit_batch.models import FourierConfig, SkipConnConfig


def _columns_that_collide_in_bf16(width: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Two neighbouring columns' coordinates whose x (times pi) rounds to the same bfloat16."""
    x = torch.arange(width) / (width / 2) - 1
    rounded = (x * math.pi).bfloat16()
    i = next(i for i in range(width - 1) if rounded[i] == rounded[i + 1])
    return torch.tensor([[x[i], 0.25]]), torch.tensor([[x[i + 1], 0.25]])


@pytest.mark.parametrize(
    "config",
    [
        SkipConnConfig(kind="skipconn", hidden_size=32, num_hidden_layers=3),
        FourierConfig(fourier_order=4, hidden_size=32, num_hidden_layers=3),
    ],
    ids=["skipconn", "fourier"],
)
def test_bf16_training_never_rounds_the_coordinates_neighbouring_columns_stay_apart(config):
    torch.manual_seed(0)
    model = config.build(1)
    a, b = _columns_that_collide_in_bf16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya, yb = model(a), model(b)
        ya.sum().backward()  # and the gradient path is the same mixed one
    assert ya.dtype == torch.float32
    assert ya.item() != yb.item(), "two columns became one input"
    with torch.no_grad():  # the mixed path computes the same network
        exact = model(torch.cat([a, b]))
    assert torch.allclose(torch.cat([ya, yb]).detach(), exact, atol=2e-2)


@pytest.mark.parametrize(
    "config",
    [
        SkipConnConfig(kind="skipconn", hidden_size=32, num_hidden_layers=3),
        FourierConfig(fourier_order=4, hidden_size=32, num_hidden_layers=3),
    ],
    ids=["skipconn", "fourier"],
)
def test_bf16_every_hidden_layer_sees_two_colliding_columns_apart(config):
    # Each hidden layer made to read only the raw coordinates (no activations, none of the
    # Fourier kind's sin/cos columns, which may be rounded): its bf16 activations of two
    # columns that collide in bf16 differ only if that layer saw the coordinates unrounded.
    torch.manual_seed(0)
    model = config.build(1)
    net, d = model.net, model.net.in_features
    coordinates = torch.zeros(d, dtype=torch.bool)
    coordinates[net.coordinates] = True
    with torch.no_grad():
        for layer in [net.in_layer, *net.hidden]:
            layer.weight[:, :-d] = 0
            layer.weight[:, -d:][:, ~coordinates] = 0
    activations = []
    net.act.register_forward_hook(lambda module, inputs, output: activations.append(output))
    a, b = _columns_that_collide_in_bf16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.cat([a, b]))
    assert len(activations) == 1 + len(net.hidden)
    for i, act in enumerate(activations):
        assert act.dtype == torch.bfloat16  # the activations are reduced; only the inputs are kept exact
        assert (act[0] != act[1]).any(), f"layer {i} saw two columns as one"


def _ssim_float64(a: np.ndarray, b: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """A plain float64 SSIM with the centred (x - mu)^2 variance form, to check against."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    h, w = a.shape
    vals = []
    for r in range(h - size + 1):
        for c in range(w - size + 1):
            wa, wb = a[r : r + size, c : c + size], b[r : r + size, c : c + size]
            k = np.outer(g, g)
            ma, mb = (k * wa).sum(), (k * wb).sum()
            va, vb = (k * (wa - ma) ** 2).sum(), (k * (wb - mb) ** 2).sum()
            cov = (k * (wa - ma) * (wb - mb)).sum()
            c1, c2 = 0.01**2, 0.03**2
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_of_nearly_equal_bright_images_matches_a_float64_reference(device_under_test="cpu"):
    # bright, nearly flat, nearly equal: where E[x^2] - mu^2 cancels most
    rng = np.random.default_rng(0)
    a = 0.9 + 0.01 * rng.random((24, 24))
    b = a + 0.002 * rng.standard_normal((24, 24))
    want = _ssim_float64(a, b)
    got = metrics.ssim(
        torch.tensor(a, dtype=torch.float32, device=device_under_test),
        torch.tensor(b, dtype=torch.float32, device=device_under_test),
    ).item()
    assert abs(got - want) < 1e-4, (got, want)
    assert got <= 1.0

"""Every model kind learns the picture: end to end through the CLI, final.png must be
much closer to the INPUT than the flat image of the input's mean colour is.

(The other quality check in the suite compares the last video frame with final.png;
that stays green when nothing is learned at all.)

Measured on a 32x24 photo-like RGB image (flat mean image: 13.3 dB) with the settings
below: fourier 40 dB, skipconn 27.8 dB, hashgrid exact, siren 29.4 dB. The bar,
flat + 8 dB, leaves several dB of headroom for every kind; a job whose optimizer
never steps stays at about the flat image or below."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import photo, psnr, write_spec
from PIL import Image

MARGIN_DB = 8.0

KINDS = {
    "fourier": (
        {"fourier_order": 8, "hidden_size": 32, "num_hidden_layers": 3},
        {"epochs": 60, "batch_size": 256, "lr": 0.01, "lr_step_epochs": 1000},
    ),
    "skipconn": (
        {"hidden_size": 32, "num_hidden_layers": 3},
        {"epochs": 60, "batch_size": 256, "lr": 0.01, "lr_step_epochs": 1000},
    ),
    "hashgrid": ({"finest_resolution": 32, "base_resolution": 4, "log2_hashmap_size": 12}, {"epochs": 100}),
    "siren": ({"hidden_size": 32, "num_hidden_layers": 2}, {"epochs": 100, "batch_size": 768}),
}


def flat_mean_image(pixels: np.ndarray) -> np.ndarray:
    """Every pixel the input's mean colour: what a network that learned nothing but
    the average would draw."""
    mean = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64).mean(0).round()
    return np.broadcast_to(mean, pixels.shape).astype(np.uint8)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_beats_the_flat_mean_image_of_its_input(kind, cli, tmp_path):
    pixels = photo(32, 24, seed=1)
    Image.fromarray(pixels, "RGB").save(tmp_path / "in.png")
    model, train = KINDS[kind]
    spec = {
        "image": str(tmp_path / "in.png"),
        "output": str(tmp_path / "out"),
        "model": {"kind": kind, **model},
        "train": {"color": "rgb", "device": "cpu", "seed": 0, **train},
        "video": {"every_n_steps": 1000, "fps": 4},
        "checkpoint": {"every_n_steps": 10000},
    }
    result = cli("run", write_spec(tmp_path / "spec.yaml", spec))
    assert result.exit_code == 0, result.stderr

    final = np.asarray(Image.open(tmp_path / "out" / "final.png").convert("RGB"))
    assert final.shape == pixels.shape
    baseline = psnr(flat_mean_image(pixels), pixels)
    learned = psnr(final, pixels)
    assert learned > baseline + MARGIN_DB, f"{kind}: final.png {learned:.2f} dB vs flat mean image {baseline:.2f} dB"

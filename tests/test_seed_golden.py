"""The seed's algorithm, held against an independent plain implementation
(tests/seed_reference.py, written from the contract): the real job, run through the
CLI, must end with the same weights, log the same per-step losses and the StepLR
learning rates, for both of the seed's kinds.

Tiny on purpose: a 12x9 gray image, batches of 40 (three steps an epoch, the last
one partial), 4 epochs with the rate halved every epoch."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import write_spec
from PIL import Image
from seed_reference import plain_train

WIDTH, HEIGHT = 12, 9
NETWORK = {"hidden_size": 8, "num_hidden_layers": 3, "fourier_order": 3}
TRAIN = {
    "color": "gray",
    "epochs": 4,
    "batch_size": 40,
    "lr": 0.01,
    "lr_step_epochs": 1,
    "lr_gamma": 0.5,
    "grad_clip": 0.01,
    "precision": "fp32",
    "device": "cpu",
    "seed": 0,
}


def gray_image() -> np.ndarray:
    """A gray image with structure in both directions (so swapped or flipped
    coordinates change the loss)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    pixels = 128 + 90 * np.sin(x / 2.0) * np.cos(y / 3.0) + 30 * (x > y)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def read_log(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("kind", ["fourier", "skipconn"])
def test_job_trains_exactly_the_seeds_algorithm(kind, cli, tmp_path):
    pixels = gray_image()
    Image.fromarray(pixels, "L").save(tmp_path / "gray.png")
    model = dict(NETWORK, kind=kind)
    if kind == "skipconn":
        model.pop("fourier_order")
    spec = {
        "image": str(tmp_path / "gray.png"),
        "output": str(tmp_path / "out"),
        "model": model,
        "train": TRAIN,
        "video": {"every_n_steps": 5, "fps": 4},
        "checkpoint": {"every_n_steps": 100},
    }
    result = cli("run", write_spec(tmp_path / "spec.yaml", spec))
    assert result.exit_code == 0, result.stderr

    target = torch.from_numpy(pixels.reshape(-1, 1))
    reference, reference_log = plain_train(
        kind,
        target,
        WIDTH,
        HEIGHT,
        hidden=NETWORK["hidden_size"],
        layers=NETWORK["num_hidden_layers"],
        order=NETWORK["fourier_order"],
        epochs=TRAIN["epochs"],
        batch_size=TRAIN["batch_size"],
        lr=TRAIN["lr"],
        lr_step_epochs=TRAIN["lr_step_epochs"],
        lr_gamma=TRAIN["lr_gamma"],
        grad_clip=TRAIN["grad_clip"],
        seed=TRAIN["seed"],
    )
    assert len(reference_log) == 12  # 3 steps (40 + 40 + 28 pixels) x 4 epochs

    # the learning rate of every step: StepLR, halved once per epoch
    rows = read_log(tmp_path / "out" / "loss.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert [float(r["lr"]) for r in rows] == pytest.approx([lr for _, lr in reference_log], rel=1e-12)
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.01] * 3 + [0.005] * 3 + [0.0025] * 3 + [0.00125] * 3)
    # the loss each step saw (on its batch, before its update)
    assert [float(r["loss"]) for r in rows] == pytest.approx([loss for loss, _ in reference_log], rel=1e-5, abs=1e-7)

    # the weights after all twelve steps, layer by layer in creation order
    saved = torch.load(tmp_path / "out" / "model.pt", weights_only=True)["state_dict"]
    got = list(saved.items())
    want = list(reference.state_dict().items())
    assert [tuple(t.shape) for _, t in got] == [tuple(t.shape) for _, t in want]
    for (name, tensor), (_, expected) in zip(got, want):
        torch.testing.assert_close(tensor, expected, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    # and the comparison is not vacuous: training moved the weights well beyond the tolerance
    initial, _ = plain_train(
        kind,
        target,
        WIDTH,
        HEIGHT,
        hidden=NETWORK["hidden_size"],
        layers=NETWORK["num_hidden_layers"],
        order=NETWORK["fourier_order"],
        epochs=0,
        batch_size=40,
        lr=0.01,
        lr_step_epochs=1,
        lr_gamma=0.5,
        grad_clip=0.01,
        seed=0,
    )
    moved = max(
        float((a - b).abs().max()) for a, b in zip(initial.state_dict().values(), reference.state_dict().values())
    )
    assert moved > 1e-3

"""imgfit-batch from Python: fit a small generated image on the CPU in seconds and read
its summary. The same job `imgfit-batch run` runs; the spec is a dict here.

    python examples/api.py [OUTPUT]      # default: runs/api-example

Run it twice: the second run finds the job complete and returns its summary at once.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image

import imgfit_batch
from imgfit_batch.errors import ImgfitError


def gradient_with_a_disc(width: int = 48, height: int = 32) -> np.ndarray:
    """A smooth colour gradient with a hard-edged disc: easy and hard for the network."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width]).reshape(2, 1, 1)
    disc = (x - 0.6) ** 2 + (y - 0.5) ** 2 < 0.07
    rgb = np.stack([x, y, np.where(disc, 1.0, 0.2)], -1)
    return (rgb * 255).astype(np.uint8)


def main(output: str) -> int:
    os.makedirs(output, exist_ok=True)
    image = os.path.join(output, "..", os.path.basename(output) + "-input.png")
    Image.fromarray(gradient_with_a_disc()).save(image)
    spec = {
        "image": image,
        "output": output,
        "model": {"kind": "fourier", "fourier_order": 8, "hidden_size": 64, "num_hidden_layers": 3},
        "train": {"color": "rgb", "epochs": 40, "batch_size": 512, "lr": 0.01, "lr_step_epochs": 15, "device": "cpu"},
        "video": {"every_n_steps": 10, "fps": 8},
        "log": {"every_seconds": 5},
    }
    try:
        summary = imgfit_batch.run(spec)  # -> imgfit_batch.outputs.Summary, also written to summary.json
    except ImgfitError as exc:  # a bad spec (exit_code 2), an unreadable image (3), a store fault (69), ...
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{summary.status}: {summary.steps} steps, PSNR {summary.psnr_db} dB, SSIM {summary.ssim}")
    if summary.video is not None:
        print(f"video: {summary.video.width}x{summary.video.height}, {summary.frames} frames")

    state = imgfit_batch.status(output)  # what `imgfit-batch status` shows, typed
    print(f"status: {state.state}, step {state.step}")
    big = imgfit_batch.render(output, output.rstrip("/") + "-2x.png", scale=2)  # the field at twice the size
    print(f"rendered {big.path} ({big.width}x{big.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/api-example"))

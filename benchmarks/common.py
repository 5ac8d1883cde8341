"""What every benchmark contestant shares: the configurations, the benchmark image,
PSNR, the result file and a description of the machine.

Contestants are separate scripts run in their own processes (so peak memory is
theirs alone); they receive the configuration as a JSON file and write one JSON
result file. Nothing here is timed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class BenchConfig:
    size: int  # the image is size x size pixels, gray
    fourier_order: int
    hidden_size: int
    num_hidden_layers: int
    batch_size: int
    epochs: int
    frame_every_n_steps: int
    lr: float = 1e-3
    lr_step_epochs: int = 3
    lr_gamma: float = 0.5
    grad_clip: float = 0.01
    fps: int = 30
    seed: int = 0

    @property
    def num_pixels(self) -> int:
        return self.size * self.size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_pixels / self.batch_size)

    @property
    def num_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def num_frames(self) -> int:
        return self.num_steps // self.frame_every_n_steps

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json_file(cls, path: str) -> BenchConfig:
        with open(path) as f:
            return cls(**json.load(f))


CONFIGS = {
    # runs on a 2-core CPU in well under a minute per contestant
    "cpu": BenchConfig(
        size=256,
        fourier_order=16,
        hidden_size=128,
        num_hidden_layers=10,
        batch_size=8000,
        epochs=4,
        frame_every_n_steps=2,
    ),
    # the cpu model trained 5x longer with fewer frames: does reduced precision hold quality
    # once the network has learned more than the broad shapes? (micro_jobs.py only)
    "cpu-long": BenchConfig(
        size=256,
        fourier_order=16,
        hidden_size=128,
        num_hidden_layers=10,
        batch_size=8000,
        epochs=20,
        frame_every_n_steps=10,
    ),
    # seconds per contestant: run.py --smoke (CI) checks that the contestants still run and
    # prints ours / floor-bf16; too small to say anything about speed
    "smoke": BenchConfig(
        size=48, fourier_order=4, hidden_size=16, num_hidden_layers=2, batch_size=512, epochs=2, frame_every_n_steps=2
    ),
    # the seed's full configuration
    "gpu": BenchConfig(
        size=512,
        fourier_order=32,
        hidden_size=300,
        num_hidden_layers=30,
        batch_size=8000,
        epochs=20,
        frame_every_n_steps=2,
    ),
}


def make_image(size: int) -> np.ndarray:
    """A deterministic, photo-like gray test image (size x size uint8): smooth
    gradients, hard and soft edges, periodic and random texture. Same content at
    every size (the random parts come from fixed seeds)."""
    rng = np.random.default_rng(1234)
    t = (np.arange(size) + 0.5) / size
    y, x = np.meshgrid(t, t, indexing="ij")  # rows, columns in [0, 1]

    img = 0.30 + 0.35 * x + 0.15 * np.sin(math.pi * y)  # sky-like gradient
    # soft-edged bright disk (a "sun")
    r = np.hypot(x - 0.72, y - 0.25)
    img += 0.35 / (1 + np.exp((r - 0.11) * 120))
    # hill: a wavy hard edge, darker and textured below it
    horizon = 0.62 + 0.06 * np.sin(7 * x) + 0.03 * np.sin(19 * x + 1)
    below = y > horizon
    grass = 0.05 * np.sin(90 * x + 40 * y) * np.sin(60 * y)
    img = np.where(below, 0.22 + 0.25 * (y - horizon) + grass, img)
    # a building: hard rectangle with a window grid
    bx = (x > 0.12) & (x < 0.34) & (y > 0.30)
    windows = ((np.floor(x * 40) % 2 == 0) & (np.floor(y * 30) % 2 == 0)).astype(float)
    img = np.where(bx, 0.12 + 0.45 * windows * (y < 0.8), img)
    # smooth random "cloud" texture: a coarse random grid, bilinearly upsampled
    coarse = rng.normal(size=(9, 9))
    gy, gx = y * 8, x * 8
    iy, ix = np.minimum(gy.astype(int), 7), np.minimum(gx.astype(int), 7)
    fy, fx = gy - iy, gx - ix
    cloud = (
        (1 - fy) * (1 - fx) * coarse[iy, ix]
        + (1 - fy) * fx * coarse[iy, ix + 1]
        + fy * (1 - fx) * coarse[iy + 1, ix]
        + fy * fx * coarse[iy + 1, ix + 1]
    )
    img += 0.06 * cloud * ~below
    # fine sensor noise, fixed per pixel position in a 4096 grid so sizes agree
    fine = np.random.default_rng(99).normal(size=(4096, 4096)).astype(np.float32)
    step = 4096 // size
    img += 0.02 * fine[::step, ::step][:size, :size]
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def write_image(path: str, size: int) -> None:
    from PIL import Image

    Image.fromarray(make_image(size), mode="L").save(path)


def load_gray(path: str) -> np.ndarray:
    """The image as float32 in [0, 1], (H, W), row 0 at the top."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def psnr_db(pred: np.ndarray, target: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def pixel_coords(height: int, width: int):
    """(x, y) of every pixel, row-major, per the contract:
    x = c/(W/2) - 1, y = (H - r)/(H/2) - 1. Returns a float32 torch tensor (H*W, 2)."""
    import torch

    r, c = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    x = c / (width / 2) - 1
    y = (height - r) / (height / 2) - 1
    return torch.stack([x, y], -1).reshape(-1, 2).float()


def peak_cuda_bytes() -> int | None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return None


def write_result(path: str, **fields) -> None:
    with open(path, "w") as f:
        json.dump(fields, f, indent=2)


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have)
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


class Stopwatch:
    """Accumulates wall time per named phase (phase boundaries must be sync points)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - since
        return now

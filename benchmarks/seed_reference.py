"""The seed procedure, re-implemented faithfully as the yardstick for our speed.

The seed (samjsnn/Image-Training-Neural-Network, after MaxRobinsonTheGreat/mandelbrotnn)
trains like this, and so does this script:
- a per-pixel torch Dataset: __getitem__ builds the (x, y) tensor and the target of
  one pixel; DataLoader(batch_size, shuffle=True) collates them, one Python call per pixel;
- the Fourier model: CenteredLinearMap to [-pi, pi], sin/cos(k u) for k = 1..K plus u,
  into a SkipConn whose layers see torch.cat([cur, prev, z]) (fresh copies every layer),
  LeakyReLU, output (tanh + 1) / 2;
- MSE, Adam, StepLR(3 epochs, 0.5), clip_grad_norm 0.01, loss.item() every step;
- every N steps a full-resolution frame rendered row by row (one forward per image row,
  as the seed's renderModel does by default) and written as a PNG through matplotlib
  (plt.imsave, cmap 'twilight');
- one ffmpeg pass over the PNGs at the end.

Usage: python benchmarks/seed_reference.py CONFIG_JSON IMAGE OUT_DIR RESULT_JSON [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

_T0 = time.perf_counter()

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn, optim  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BenchConfig, Stopwatch, load_gray, peak_cuda_bytes, pixel_coords, psnr_db, write_result  # noqa: E402
from seed_model import CenteredLinearMap, Fourier  # noqa: E402


class PixelDataset(Dataset):
    """One item per pixel, built on demand, as in the seed."""

    def __init__(self, image_path: str):
        with Image.open(image_path) as im:
            gray = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        self.image = torch.from_numpy(gray)  # (H, W), row 0 at the top
        self.height, self.width = self.image.shape

    def __len__(self):
        return self.height * self.width

    def __getitem__(self, idx):
        row, col = idx // self.width, idx % self.width
        xy = torch.tensor([col / (self.width / 2) - 1, (self.height - row) / (self.height / 2) - 1])
        return xy, self.image[row, col]


def render_model(model, linspace):
    """The seed's renderModel with max_gpu=False: one forward per image row."""
    with torch.no_grad():
        model.eval()
        im = torch.stack([model(points) for points in linspace], 0)
        im = torch.clamp(im, 0, 1)
        model.train()
        return im.squeeze().cpu().numpy()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("image")
    p.add_argument("out_dir")
    p.add_argument("result")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    cfg = BenchConfig.from_json_file(args.config)
    device = torch.device(args.device)
    frames_dir = os.path.join(args.out_dir, "frames")
    os.makedirs(frames_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    watch = Stopwatch()

    dataset = PixelDataset(args.image)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True)
    resx, resy = dataset.width, dataset.height
    # the seed's frame grid: linspace over [-1, 1], one row of points per image row
    linspace = torch.stack(torch.meshgrid(torch.linspace(-1, 1, resx), torch.linspace(1, -1, resy), indexing="ij"), -1)
    linspace = torch.rot90(linspace, 1, (0, 1)).contiguous().to(device)

    model = Fourier(
        cfg.fourier_order,
        cfg.hidden_size,
        cfg.num_hidden_layers,
        CenteredLinearMap(-1, 1, -1, 1, 2 * math.pi, 2 * math.pi),
    ).to(device)
    loss_func = nn.MSELoss()
    optimizer = optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)

    iteration, frame = 0, 0
    t = time.perf_counter()
    for epoch in range(cfg.epochs):
        epoch_loss = 0.0
        it = iter(loader)
        while True:
            try:
                x, y = next(it)
            except StopIteration:
                break
            x, y = x.to(device), y.to(device)
            t = watch.add("data", t)

            y_pred = model(x).squeeze()
            loss = loss_func(y_pred, y)
            epoch_loss += loss.item()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            t = watch.add("train", t)

            if iteration % cfg.frame_every_n_steps == 0:
                im = render_model(model, linspace)
                t = watch.add("render", t)
                plt.imsave(os.path.join(frames_dir, f"{frame:05d}.png"), im, cmap="twilight", origin="lower")
                frame += 1
                t = watch.add("png", t)
            iteration += 1
        scheduler.step()
        print(f"Epoch {epoch + 1}, Average Loss: {epoch_loss / len(loader)}", flush=True)

    # the final image at the training pixels, for PSNR (the seed computes its final loss the same way)
    coords = pixel_coords(resy, resx).to(device)
    with torch.no_grad():
        final = model(coords).clamp(0, 1).reshape(resy, resx).cpu().numpy()
    t = watch.add("final", t)

    import imageio_ffmpeg

    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-y",
            "-loglevel",
            "error",
            "-r",
            str(cfg.fps),
            "-i",
            os.path.join(frames_dir, "%05d.png"),
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            os.path.join(args.out_dir, "video.mp4"),
        ],
        check=True,
    )
    t = watch.add("ffmpeg", t)
    end = time.perf_counter()

    write_result(
        args.result,
        steps=iteration,
        frames=frame,
        psnr_db=psnr_db(final, load_gray(args.image)),
        job_seconds=end - t_start,
        process_seconds_to_end=end - _T0,
        phases=watch.seconds,
        cuda_peak_bytes=peak_cuda_bytes(),
        threads=torch.get_num_threads(),
    )


if __name__ == "__main__":
    main()

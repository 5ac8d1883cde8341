"""Quality in a time budget: PSNR/SSIM a model kind reaches on given photographs.

Runs the job's own training parts (imgfit_batch.train: the values the spec derives from
the image's size via `JobSpec.for_image`, PixelSampler, train_step, Budget, Schedule,
Averager) without the job's I/O, rendering a full-image frame every `--every-n-steps`
steps inside the budget, so numbers from here transfer to
`imgfit-batch run ... --set train.max_seconds=S` (no device calibration: the derived batch).

Example:
    python benchmarks/quality.py photo1.png photo2.png --kind hashgrid --seconds 60
    python benchmarks/quality.py photo.png --kind hashgrid --model num_levels=12 --train lr=0.02 --color rgb
    python benchmarks/quality.py --smoke     # seconds (CI): hashgrid and fourier on a generated 64x64 image

Prints one JSON line per (image, run) and a table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from imgfit_batch.data import Pixels
from imgfit_batch.device import native_bf16
from imgfit_batch.metrics import psnr, ssim
from imgfit_batch.rendering import render
from imgfit_batch.specfile import parse_spec
from imgfit_batch.train import Averager, Budget, PixelSampler, Schedule, train_step

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_image  # noqa: E402


def fit(
    image_path: str,
    kind: str,
    seconds: float,
    color: str,
    model_overrides: dict,
    train_overrides: dict,
    every_n_steps: int,
    device: str,
    seed: int,
) -> dict:
    spec = parse_spec(
        {
            "image": image_path,
            "output": "unused",
            "model": {"kind": kind, **model_overrides},
            "train": {"color": color, "max_seconds": seconds, "seed": seed, **train_overrides},
        }
    )
    mode = "L" if color == "gray" else "RGB"
    array = np.asarray(Image.open(image_path).convert(mode))
    height, width = array.shape[:2]
    spec, derived = spec.for_image(width, height)  # what the job fills in from the image's size (hashgrid's batch, ...)
    tr, dev = spec.train, torch.device(device)
    pixels = Pixels(torch.from_numpy(array.reshape(height * width, -1).copy()).to(dev), width, height)

    torch.manual_seed(tr.seed)
    model = spec.model.build(pixels.channels, width, height).to(dev)
    num_params = sum(p.numel() for p in model.parameters())
    adam = {k: v for k, v in (("eps", tr.adam_eps), ("betas", tr.adam_betas)) if v is not None}
    optimizer = torch.optim.Adam(model.parameters(), lr=tr.lr, fused=True, **adam)
    sampler = PixelSampler(pixels.num_pixels, tr.batch_size, tr.seed, dev)
    budget = Budget(tr.epochs, sampler.steps_per_epoch, tr.max_seconds)
    schedule, averager = Schedule(optimizer, tr), Averager(model, tr.ema_decay)
    bf16 = tr.precision == "bf16" or (
        tr.precision == "auto" and getattr(model, "bf16_when_native", False) and native_bf16(dev)
    )

    frames, render_s = 0, 0.0
    budget.start_clock()
    while not budget.done():
        schedule.apply(budget.step, sampler.epoch, budget.total_steps)
        xy, y = pixels.batch(sampler.next_batch())
        train_step(model, optimizer, xy, y, tr.grad_clip, bf16)
        budget.tick()
        averager.update(model)
        if every_n_steps and budget.step % every_n_steps == 0:
            r0 = time.perf_counter()
            render(averager.model, width, height, dev)  # the uint8 frame the video writer would receive
            frames += 1
            render_s += time.perf_counter() - r0
    final = render(averager.model, width, height, dev).float() / 255  # (H, W, C)
    truth = pixels.image().float() / 255
    return {
        "image": Path(image_path).name,
        "kind": kind,
        "color": color,
        "seconds": round(budget.train_seconds, 1),
        "render_seconds": round(render_s, 1),
        "steps": budget.step,
        "epochs": sampler.epoch,
        "frames": frames,
        "psnr_db": round(float(psnr(final, truth)), 2),
        "ssim": round(float(ssim(final, truth)), 4),
        "params": num_params,
        "threads": torch.get_num_threads(),
        "model": model_overrides,
        "train": train_overrides,
        "derived": derived,
    }


def _pairs(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="*", help="image files (any size; gray or RGB per --color)")
    ap.add_argument("--kind", default="hashgrid")
    ap.add_argument("--seconds", type=float, default=60.0, help="train.max_seconds")
    ap.add_argument("--color", choices=["gray", "rgb"], default=None, help="default: from the image's mode")
    ap.add_argument("--model", nargs="*", default=[], metavar="FIELD=VALUE", help="model.* overrides")
    ap.add_argument("--train", nargs="*", default=[], metavar="FIELD=VALUE", help="train.* overrides")
    ap.add_argument("--every-n-steps", type=int, default=2, help="render a frame every N steps (0: never)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's). On a machine shared with other jobs, "
        "1 thread can be several times faster than 2: every parallel op waits for a descheduled thread.",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, for CI: hashgrid and a small fourier for 1 s each on a generated 64x64 gray image",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.images and not args.smoke:
        ap.error("give image files, or --smoke")

    runs = [(path, args.kind, args.seconds, _pairs(args.model)) for path in args.images]
    if args.smoke:
        folder = tempfile.mkdtemp(prefix="imgfit-quality-")
        smoke_image = os.path.join(folder, "smoke.png")
        write_image(smoke_image, 64)
        small = {"fourier_order": 4, "hidden_size": 16, "num_hidden_layers": 2}
        runs = [(smoke_image, "hashgrid", 1.0, {}), (smoke_image, "fourier", 1.0, small)]
    rows = []
    for path, kind, seconds, model_overrides in runs:
        color = args.color or ("gray" if Image.open(path).mode in ("L", "I", "I;16", "1") else "rgb")
        row = fit(
            path, kind, seconds, color, model_overrides, _pairs(args.train), args.every_n_steps, args.device, args.seed
        )
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| image | color | kind | steps | frames | seconds (render) | PSNR dB | SSIM |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['image']} | {r['color']} | {r['kind']} | {r['steps']} | {r['frames']} | "
            f"{r['seconds']} ({r['render_seconds']}) | {r['psnr_db']} | {r['ssim']} |"
        )


if __name__ == "__main__":
    main()

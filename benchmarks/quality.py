"""Quality in a time budget: PSNR/SSIM a model kind reaches on given photographs.

Mirrors the training loop of imgfit_batch/train.py (uint8 target on the device,
seeded per-epoch pixel permutation, index-slice batches, coordinates computed from
the indices, MSE, Adam, optional grad-norm clip, StepLR per epoch, a full-image
frame rendered every `--every-n-steps` steps inside the budget), so numbers from
here transfer to `imgfit-batch run ... --set train.max_seconds=S`.

Example:
    python benchmarks/quality.py photo1.png photo2.png --kind hashgrid --seconds 60
    python benchmarks/quality.py photo.png --kind hashgrid --model num_levels=12 --train lr=0.02 --color rgb

Prints one JSON line per (image, run) and a table at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from imgfit_batch.metrics import psnr, ssim
from imgfit_batch.spec import parse_spec


def coords_of(index: torch.Tensor, height: int, width: int) -> torch.Tensor:
    r, c = index // width, index % width
    x = c.float() / (width / 2) - 1
    y = (height - r).float() / (height / 2) - 1
    return torch.stack([x, y], dim=1)  # (N, 2)


@torch.no_grad()
def render(model, height: int, width: int, device, chunk: int = 1 << 18) -> torch.Tensor:
    out = []
    for start in range(0, height * width, chunk):
        index = torch.arange(start, min(start + chunk, height * width), device=device)
        out.append(model(coords_of(index, height, width)))
    return torch.cat(out).view(height, width, -1)  # (H, W, C) in [0, 1]


def fit(image_path: str, kind: str, seconds: float, color: str, model_overrides: dict, train_overrides: dict,
        every_n_steps: int, device: str, seed: int) -> dict:
    spec = parse_spec({
        "image": image_path, "output": "unused",
        "model": {"kind": kind, **model_overrides},
        "train": {"color": color, "max_seconds": seconds, "seed": seed, **train_overrides},
    })
    tr = spec.train
    mode = "L" if color == "gray" else "RGB"
    pixels = np.asarray(Image.open(image_path).convert(mode))
    height, width = pixels.shape[:2]
    target = torch.from_numpy(pixels.reshape(height * width, -1).copy()).to(device)  # (H*W, C) uint8
    channels = target.shape[1]

    torch.manual_seed(tr.seed)
    model = spec.model.build(channels).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    adam = {}
    if getattr(tr, "adam_eps", None) is not None:
        adam["eps"] = tr.adam_eps
    if getattr(tr, "adam_betas", None) is not None:
        adam["betas"] = tuple(tr.adam_betas)
    opt = torch.optim.Adam(model.parameters(), lr=tr.lr, **adam)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=tr.lr_step_epochs, gamma=tr.lr_gamma)
    gen = torch.Generator(device=device).manual_seed(tr.seed)

    step, frames, epoch = 0, 0, 0
    render_s = 0.0
    t0 = time.perf_counter()
    done = False
    while not done:
        perm = torch.randperm(height * width, generator=gen, device=device)
        for start in range(0, height * width, tr.batch_size):
            index = perm[start : start + tr.batch_size]
            xy = coords_of(index, height, width)
            truth = target[index].float() / 255
            loss = torch.nn.functional.mse_loss(model(xy), truth)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tr.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
            opt.step()
            step += 1
            if every_n_steps and step % every_n_steps == 0:
                r0 = time.perf_counter()
                frame = render(model, height, width, device)
                (frame * 255).round().byte()  # what the video writer would receive
                frames += 1
                render_s += time.perf_counter() - r0
            if time.perf_counter() - t0 >= seconds or (tr.epochs is not None and epoch + 1 >= tr.epochs and start + tr.batch_size >= height * width):
                done = True
                break
        sched.step()
        epoch += 1
    train_s = time.perf_counter() - t0
    final = render(model, height, width, device)
    truth = target.view(height, width, channels).float() / 255
    return {
        "image": Path(image_path).name, "kind": kind, "color": color, "seconds": round(train_s, 1),
        "render_seconds": round(render_s, 1), "steps": step, "epochs": epoch, "frames": frames,
        "psnr_db": round(float(psnr(final, truth)), 2), "ssim": round(float(ssim(final, truth)), 4),
        "params": num_params, "threads": torch.get_num_threads(), "model": model_overrides, "train": train_overrides,
    }


def _pairs(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files (any size; gray or RGB per --color)")
    ap.add_argument("--kind", default="hashgrid")
    ap.add_argument("--seconds", type=float, default=60.0, help="train.max_seconds")
    ap.add_argument("--color", choices=["gray", "rgb"], default=None, help="default: from the image's mode")
    ap.add_argument("--model", nargs="*", default=[], metavar="FIELD=VALUE", help="model.* overrides")
    ap.add_argument("--train", nargs="*", default=[], metavar="FIELD=VALUE", help="train.* overrides")
    ap.add_argument("--every-n-steps", type=int, default=2, help="render a frame every N steps (0: never)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's). On a machine shared with other jobs, "
                    "1 thread can be several times faster than 2: every parallel op waits for a descheduled thread.")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for path in args.images:
        color = args.color or ("gray" if Image.open(path).mode in ("L", "I", "I;16", "1") else "rgb")
        row = fit(path, args.kind, args.seconds, color, _pairs(args.model), _pairs(args.train),
                  args.every_n_steps, args.device, args.seed)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n| image | color | kind | steps | frames | seconds (render) | PSNR dB | SSIM |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['color']} | {r['kind']} | {r['steps']} | {r['frames']} | "
              f"{r['seconds']} ({r['render_seconds']}) | {r['psnr_db']} | {r['ssim']} |")


if __name__ == "__main__":
    main()

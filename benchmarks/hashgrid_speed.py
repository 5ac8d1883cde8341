"""Hash grid speed: imgfit_batch.models.hashgrid's training step and frame, with the
default (foreach) Adam (`new`) and the fused one the job uses (`new-fused`), in one process.

Training: samples/s of a full step as the job runs it (imgfit_batch.train.train_step): pixel
indices -> coords -> forward -> MSE -> backward -> Adam step over every parameter, with
the job's hash grid optimizer settings (Adam lr 0.01, betas (0.9, 0.99), eps 1e-15).
`-fused` variants use torch.optim.Adam(fused=True), which the job now uses on every device,
instead of the default (foreach) implementation it used before: the optimizer is the loop's choice, not the
model's, so both are shown.
Inference: pixels/s of a 1024x576 frame rendered in chunks by imgfit_batch.rendering.render.

Configurations:
  a    the earlier defaults: 8 levels 16..1024, T=21, sum decoder, RGB, batch 2^18 (1024^2 image)
  b18  20 MP (6000x3376): 12 levels 16..6000 (longer side), T=22, sum decoder, batch 2^18
  b19  the same at batch 2^19
  smoke a 128x96 image (and frame), 4 levels, T=12, batch 2^12: seconds, for CI (`--smoke`)
The model gets the image size (aspect-aware levels).

The "before" of the table in benchmarks/NOTES.md (the pre-`hashgrid-fast` implementation, `old`) was
benchmarks/hashgrid_reference.py, timed by this script at commit 34c6362:
`git show 34c6362:benchmarks/hashgrid_speed.py`.

The machine may be shared: variants are interleaved (A B A B ...) and the median step
is reported; the numbers are noisy, compare ratios from the same run. CPU seconds per step
(time.process_time, all threads) are printed too: less sensitive to time-slicing by other
processes than wall time, though not to shared caches. `--peak` also
runs each variant in a child process and reports its peak RSS (ru_maxrss) around the
training steps.

Usage: python benchmarks/hashgrid_speed.py [--threads 2] [--configs a,b18,b19]
       [--variants new,new-fused] [--repeat 3] [--steps 2] [--image photo.jpg] [--peak]
       python benchmarks/hashgrid_speed.py --smoke     # seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))
from common import machine  # noqa: E402

from imgfit_batch.data import coords  # noqa: E402
from imgfit_batch.models.hashgrid import HashGridConfig  # noqa: E402
from imgfit_batch.rendering import render  # noqa: E402

CONFIGS = {
    "a": dict(
        width=1024,
        height=1024,
        num_levels=8,
        base_resolution=16,
        finest_resolution=1024,
        log2_hashmap_size=21,
        batch=1 << 18,
    ),
    "b18": dict(
        width=6000,
        height=3376,
        num_levels=12,
        base_resolution=16,
        finest_resolution=6000,
        log2_hashmap_size=22,
        batch=1 << 18,
    ),
    "b19": dict(
        width=6000,
        height=3376,
        num_levels=12,
        base_resolution=16,
        finest_resolution=6000,
        log2_hashmap_size=22,
        batch=1 << 19,
    ),
    "smoke": dict(
        width=128,
        height=96,
        num_levels=4,
        base_resolution=16,
        finest_resolution=128,
        log2_hashmap_size=12,
        batch=1 << 12,
        frame=(128, 96),
    ),
}
ADAM = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-15)
FRAME = (1024, 576)


def synthetic_image(width: int, height: int) -> torch.Tensor:
    """A deterministic photo-like RGB target, (H*W, 3) uint8: gradients, edges, texture, noise."""
    g = torch.Generator().manual_seed(0)
    y = torch.linspace(0, 1, height).view(-1, 1)
    x = torch.linspace(0, 1, width).view(1, -1)
    chans = []
    for k in range(3):
        c = 0.3 + 0.3 * x + 0.2 * torch.sin(6.3 * y + k) + 0.15 * torch.sin(90 * x + 40 * y + k) * (y > 0.6)
        c = c + 0.2 * ((x * 37).floor() % 2 == 0) * (x < 0.3) * (y > 0.3)
        chans.append(c)
    img = torch.stack(chans, -1) + 0.03 * torch.randn(height, width, 3, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).view(-1, 3)


def load_image(path: str) -> tuple[torch.Tensor, int, int]:
    import numpy as np
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    return torch.from_numpy(a.copy()).view(-1, 3), a.shape[1], a.shape[0]


def build(cfg: dict) -> torch.nn.Module:
    hc = HashGridConfig(
        kind="hashgrid",
        num_levels=cfg["num_levels"],
        log2_hashmap_size=cfg["log2_hashmap_size"],
        base_resolution=cfg["base_resolution"],
        finest_resolution=cfg["finest_resolution"],
    )
    return hc.build(3, width=cfg["width"], height=cfg["height"])


class Contestant:
    def __init__(self, variant: str, cfg: dict, target: torch.Tensor):
        torch.manual_seed(0)
        self.variant, self.cfg, self.target = variant, cfg, target
        self.model = build(cfg)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = torch.optim.Adam(self.model.parameters(), fused=variant.endswith("-fused") or None, **ADAM)
        self.perm = torch.randperm(cfg["width"] * cfg["height"], generator=torch.Generator().manual_seed(1))
        self.cursor = 0
        self.step_s: list[float] = []
        self.step_cpu_s: list[float] = []
        self.frame_s: list[float] = []

    def train_step(self) -> float:
        b = self.cfg["batch"]
        if self.cursor + b > self.perm.numel():
            self.cursor = 0
        idx = self.perm[self.cursor : self.cursor + b]
        self.cursor += b
        t0, c0 = time.perf_counter(), time.process_time()
        xy = coords(idx, self.cfg["width"], self.cfg["height"])
        y = self.target[idx].to(torch.float32) / 255.0
        loss = F.mse_loss(self.model(xy).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_cpu_s.append(time.process_time() - c0)
        return time.perf_counter() - t0

    def frame(self) -> float:
        t0 = time.perf_counter()
        render(self.model, *self.cfg.get("frame", FRAME), torch.device("cpu"))
        return time.perf_counter() - t0


def peak_child(args, variant: str, name: str) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child-peak",
        "--threads",
        str(args.threads),
        "--configs",
        name,
        "--variants",
        variant,
        "--steps",
        str(args.steps),
    ]
    if args.image:
        cmd += ["--image", args.image]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def config_for(name: str, args) -> tuple[dict, torch.Tensor]:
    cfg = dict(CONFIGS[name])
    if args.image and name != "a":
        target, w, h = load_image(args.image)
        cfg.update(width=w, height=h, finest_resolution=max(w, h))
    else:
        target = synthetic_image(cfg["width"], cfg["height"])
    return cfg, target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="a,b18,b19")
    ap.add_argument("--variants", default="new,new-fused", help="new (foreach Adam), new-fused (the job's)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds per variant")
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per round (after one warm-up step)")
    ap.add_argument("--frames", type=int, default=1, help="timed frames per round")
    ap.add_argument("--image", help="an RGB photo for the b configs (its size replaces 6000x3376)")
    ap.add_argument("--peak", action="store_true", help="also peak RSS per variant, each in a child process")
    ap.add_argument("--child-peak", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true", help="seconds, for CI: --configs smoke --repeat 1 --steps 1")
    args = ap.parse_args()
    if args.smoke:
        args.configs, args.repeat, args.steps, args.frames, args.image = "smoke", 1, 1, 1, None
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    if unknown := set(variants) - {"new", "new-fused"}:
        ap.error(f"unknown variant(s): {', '.join(sorted(unknown))} (the old implementation is in git history)")

    if args.child_peak:
        cfg, target = config_for(args.configs, args)
        c = Contestant(variants[0], cfg, target)
        before = rss_mb()
        for _ in range(args.steps + 1):
            c.train_step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"rss_before_mb": round(before), "peak_mb": round(peak)}))
        return

    info = machine()
    print(
        f"# {info['cpu']} ({info['cores']} cores), torch {info['torch']}, torch threads used: {torch.get_num_threads()}"
    )
    print("# shared machine: numbers are noisy; variants interleaved, medians reported; compare ratios within a run")
    rows = []
    for name in args.configs.split(","):
        cfg, target = config_for(name, args)
        contestants = [Contestant(v, cfg, target) for v in variants]
        for c in contestants:  # warm-up: first touch of the optimizer state, allocator, caches
            c.train_step()
            c.frame()
        for _ in range(args.repeat):
            for c in contestants:
                c.step_s += [c.train_step() for _ in range(args.steps)]
                c.frame_s += [c.frame() for _ in range(args.frames)]
        base = contestants[0]
        for c in contestants:
            sps = cfg["batch"] / statistics.median(c.step_s)
            frame_w, frame_h = cfg.get("frame", FRAME)
            pps = frame_w * frame_h / statistics.median(c.frame_s)
            row = dict(
                config=name,
                image=f"{cfg['width']}x{cfg['height']}",
                batch=cfg["batch"],
                variant=c.variant,
                params_m=round(c.params / 1e6, 1),
                train_samples_s=round(sps),
                train_ratio=round(sps / (cfg["batch"] / statistics.median(base.step_s)), 2),
                step_s=round(statistics.median(c.step_s), 3),
                step_cpu_s=round(statistics.median(c.step_cpu_s), 3),
                frame_pixels_s=round(pps),
                frame_ratio=round(statistics.median(base.frame_s) / statistics.median(c.frame_s), 2),
            )
            if args.peak:
                row.update(peak_child(args, c.variant, name))
            rows.append(row)
            print(json.dumps(row), flush=True)
        del contestants
    print()
    print(
        f"| config | image | batch | variant | params (M) | train samples/s | vs {variants[0]} | frame px/s | vs "
        f"{variants[0]} |" + (" peak RSS MB |" if args.peak else "")
    )
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if args.peak else ""))
    for r in rows:
        print(
            f"| {r['config']} | {r['image']} | 2^{r['batch'].bit_length() - 1} | {r['variant']} | {r['params_m']} | "
            f"{r['train_samples_s']:,} | {r['train_ratio']:.2f}x | {r['frame_pixels_s']:,} | {r['frame_ratio']:.2f}x |"
            + (f" {r['peak_mb']} |" if args.peak else "")
        )


if __name__ == "__main__":
    main()

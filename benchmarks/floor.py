"""The bare compute floor: the seed's steps and renders with nothing else.

The whole image (coordinates and targets) sits on the device; each epoch takes index
slices of one randperm; every N steps a full-resolution frame is rendered and dropped
(no host copy, no encoding, no files); no loss is read until the end. fp32 and
the fastest fp32 formulation measured by default (skipconn_variants' split-each
SkipConn, 4096-pixel render chunks on CPU); the switches exist for the micro-benchmarks
(what does bf16, torch.compile, threads, the torch.cat model... do to a whole job).

Usage: python benchmarks/floor.py CONFIG_JSON IMAGE RESULT_JSON [--device cpu|cuda]
       [--model split|cat] [--train-dtype fp32|bf16] [--render-dtype fp32|bf16]
       [--render-chunk N] [--threads N] [--compile] [--no-grad-render]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

_T0 = time.perf_counter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))
from common import BenchConfig, Stopwatch, load_gray, peak_cuda_bytes, pixel_coords, psnr_db, write_result  # noqa: E402


def build_model(cfg: BenchConfig, kind: str) -> torch.nn.Module:
    if kind == "split":
        from imgfit_batch.models.skipconn import Fourier

        return Fourier(cfg.fourier_order, cfg.hidden_size, cfg.num_hidden_layers, 1)
    if kind.startswith("split-"):
        from skipconn_variants import FourierVariant

        return FourierVariant(cfg.fourier_order, cfg.hidden_size, cfg.num_hidden_layers, 1, kind)
    from seed_model import CenteredLinearMap, Fourier

    return Fourier(
        cfg.fourier_order,
        cfg.hidden_size,
        cfg.num_hidden_layers,
        CenteredLinearMap(-1, 1, -1, 1, 2 * math.pi, 2 * math.pi),
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("image")
    p.add_argument("result")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--model",
        choices=["split", "cat", "split-views", "split-each"],
        default="split-each",
        help="split: imgfit_batch's model as merged; cat: the seed's; split-*: skipconn_variants "
        "(split-each is the fastest fp32 formulation measured, hence the floor's default)",
    )
    p.add_argument("--train-dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--render-dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument(
        "--render-chunk",
        type=int,
        default=-1,
        help="pixels per render forward; 0 = whole image; default 4096 on CPU (cache-sized, measured "
        "fastest), whole image on CUDA",
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-grad-render", action="store_true", help="render under no_grad instead of inference_mode")
    args = p.parse_args()
    cfg = BenchConfig.from_json_file(args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(cfg.seed)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    watch = Stopwatch()

    target_img = load_gray(args.image)
    height, width = target_img.shape
    coords = pixel_coords(height, width).to(device)  # (N, 2)
    target = torch.from_numpy(target_img).reshape(-1).to(device)  # (N,)
    n = coords.shape[0]

    model = build_model(cfg, args.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)
    forward = torch.compile(model) if args.compile else model
    train_ctx = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.train_dtype == "bf16")  # noqa: E731
    render_ctx = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.render_dtype == "bf16")  # noqa: E731
    grad_off = torch.no_grad if args.no_grad_render else torch.inference_mode
    chunk = args.render_chunk if args.render_chunk >= 0 else (4096 if device.type == "cpu" else 0)
    chunk = chunk or n
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)

    def render() -> torch.Tensor:
        with grad_off(), render_ctx():
            return torch.cat([forward(coords[i : i + chunk]).float() for i in range(0, n, chunk)]).clamp_(0, 1)

    # per-phase times need a sync per step; on CUDA the floor must not pay for that
    timed = device.type == "cpu"

    t_setup = time.perf_counter()
    step, frames = 0, 0
    first_step_seconds = None
    for _epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n, cfg.batch_size):
            t = time.perf_counter()
            idx = perm[i : i + cfg.batch_size]
            with train_ctx():
                pred = forward(coords[idx]).squeeze(1).float()
            loss = F.mse_loss(pred, target[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            if step % cfg.frame_every_n_steps == 0:
                t = watch.add("train", t) if timed else t
                render()
                frames += 1
                if timed:
                    watch.add("render", t)
            elif timed:
                watch.add("train", t)
            if first_step_seconds is None:
                first_step_seconds = time.perf_counter() - t_setup
        scheduler.step()
    t = time.perf_counter()
    final = render().reshape(height, width).cpu().numpy()
    watch.add("final", t)
    end = time.perf_counter()
    write_result(
        args.result,
        steps=step,
        frames=frames,
        psnr_db=psnr_db(final, target_img),
        final_loss=float(loss.detach()),
        job_seconds=end - t_start,
        job_cpu_seconds=time.process_time() - cpu_start,
        process_seconds_to_end=end - _T0,
        phases=watch.seconds,
        first_step_seconds=first_step_seconds,
        cuda_peak_bytes=peak_cuda_bytes(),
        threads=torch.get_num_threads(),
        options=vars(args),
    )


if __name__ == "__main__":
    main()

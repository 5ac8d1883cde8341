"""Micro-benchmark: one training step and one full-resolution render, variant by variant.

What is a step and a frame made of on this machine, and what makes them cheaper:
  model    cat (the seed's torch.cat SkipConn) vs split (imgfit_batch's split weights)
  dtype    fp32 vs bf16 autocast (training and rendering separately)
  render   whole image in one forward vs chunks vs the seed's one-forward-per-row;
           inference_mode vs no_grad
  threads  torch.set_num_threads(1) vs all cores
  layout   (in the report) x @ W.t() on the nn.Linear layout vs a pre-transposed copy
  precision the bf16 paths that keep the raw coordinates or not: all rounded (3f9cb37),
           an IEEE fp32 z-block per layer (71cb86c), hi + lo coordinate pairs (now)

Each variant is timed as the minimum over --repeat blocks (variants interleaved), since
on a shared machine the minimum is the best estimate of the uncontended time; the
median is printed beside it to show the noise. Also checks that cat and split give the
same outputs and gradients, and how far a bf16 render is from the fp32 one.

Usage: python benchmarks/micro_step.py [--config cpu] [--repeat 5]
                                       [--section step,render,threads,equiv,layout,precision]
       python benchmarks/micro_step.py --smoke     # seconds (CI): every section once, --config smoke
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))
from common import CONFIGS, machine, make_image, pixel_coords  # noqa: E402
from seed_model import (
    CenteredLinearMap,  # noqa: E402
    to_imgfit_state_dict,  # noqa: E402
)
from seed_model import Fourier as SeedFourier  # noqa: E402
from skipconn_variants import FourierVariant  # noqa: E402

from imgfit_batch.models.skipconn import Fourier as SplitFourier  # noqa: E402

MODEL_NAMES = ("cat", "split", "split-views", "split-each")
# bf16 formulations of the same network (the precision section): what each keeps exact
BF16_PATHS = {
    "split-each": "all bf16, coordinates rounded (3f9cb37)",
    "fp32-z": "IEEE fp32 z-block per layer (71cb86c)",
    "split": "hi + lo bf16 coordinates (imgfit_batch now)",
}


def models(cfg):
    """cat: the seed's model; split: imgfit_batch's; split-*: skipconn_variants. Same weights."""
    torch.manual_seed(0)
    cat = SeedFourier(
        cfg.fourier_order,
        cfg.hidden_size,
        cfg.num_hidden_layers,
        CenteredLinearMap(-1, 1, -1, 1, 2 * math.pi, 2 * math.pi),
    )
    state = to_imgfit_state_dict(cat)
    split = SplitFourier(cfg.fourier_order, cfg.hidden_size, cfg.num_hidden_layers, 1)
    split.load_state_dict(state)
    out = {"cat": cat, "split": split}
    for mode in ("split-views", "split-each", "fp32-z"):
        out[mode] = FourierVariant(cfg.fourier_order, cfg.hidden_size, cfg.num_hidden_layers, 1, mode)
        out[mode].load_state_dict(state)
    return out


CLOCK = time.perf_counter  # --clock cpu: time.process_time (CPU seconds of all our threads)


def timeit(fn, repeat: int, inner: int) -> list[float]:
    fn()  # warm-up (allocator, oneDNN primitive caches)
    out = []
    for _ in range(repeat):
        t = CLOCK()
        for _ in range(inner):
            fn()
        out.append((CLOCK() - t) / inner)
    return out


def run_interleaved(variants: dict, repeat: int, inner: int) -> dict[str, list[float]]:
    times = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up all first
    for _ in range(repeat):
        for name, fn in variants.items():
            times[name] += timeit(fn, 1, inner)
    return times


def report(title: str, times: dict[str, list[float]], base: str | None = None, unit: str = "ms"):
    print(f"\n{title}")
    base_t = min(times[base]) if base else None
    for name, ts in times.items():
        best, med = min(ts), statistics.median(ts)
        rel = f"  {base_t / best:5.2f}x vs {base}" if base else ""
        print(f"  {name:42s} min {best * 1e3:8.1f} {unit}   median {med * 1e3:8.1f} {unit}{rel}")


def make_step(model, xy, y, bf16: bool, micro: int = 0):
    """One Adam step on (xy, y). micro > 0: forward/backward in slices of `micro` rows with
    the loss of each slice weighted by its share, which sums to the same gradient."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = xy.shape[0]
    micro = micro or n

    def step():
        opt.zero_grad(set_to_none=True)
        for i in range(0, n, micro):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                pred = model(xy[i : i + micro]).squeeze(1).float()
            loss = F.mse_loss(pred, y[i : i + micro], reduction="sum") / n
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        opt.step()

    return step


def make_render(model, coords, bf16: bool, chunk: int, mode=torch.inference_mode):
    def render():
        with mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return torch.cat([model(coords[i : i + chunk]).float() for i in range(0, coords.shape[0], chunk)]).clamp_(
                0, 1
            )

    return render


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="cpu", choices=sorted(CONFIGS))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--section", default="equiv,step,render,threads,layout")
    p.add_argument("--models", default=",".join(MODEL_NAMES), help="for the step section")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: CPU seconds (robust on a busy machine; best with --threads 1)",
    )
    p.add_argument("--smoke", action="store_true", help="seconds, for CI: --config smoke --repeat 1, every section")
    args = p.parse_args()
    if args.smoke:
        args.config, args.repeat, args.section = "smoke", 1, "equiv,step,render,threads,layout,precision"
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    sections = set(args.section.split(","))
    info = machine()
    print(
        f"machine: {info['cpu']} ({info['cpu_flags']}), {info['cores']} cores, torch {info['torch']}, "
        f"{torch.get_num_threads()} threads, clock: {args.clock}"
    )
    print(
        f"config {args.config}: {cfg.size}^2, order {cfg.fourier_order}, {cfg.hidden_size} x {cfg.num_hidden_layers}, "
        f"batch {cfg.batch_size}; load average {os.getloadavg()[0]:.1f} at start"
    )

    img = torch.from_numpy(make_image(cfg.size)).float().reshape(-1) / 255
    coords = pixel_coords(cfg.size, cfg.size)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(cfg.num_pixels, generator=g)[: cfg.batch_size]
    xy, y = coords[idx], img[idx]
    ms = models(cfg)

    if "equiv" in sections:
        grads = {}
        for name, m in ms.items():
            m.zero_grad()
            F.mse_loss(m(xy).squeeze(1), y).backward()
            # all list parameters layer by layer in the same order (the Fourier orders are a buffer)
            grads[name] = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
            m.zero_grad()
        print()
        for name, m in ms.items():
            if name == "cat":
                continue
            with torch.no_grad():
                diff = float((ms["cat"](coords) - m(coords)).abs().max())
            rel = float((grads["cat"] - grads[name]).norm() / grads["cat"].norm())
            print(f"cat vs {name}, same weights: max |output diff| {diff:.2e}, gradient relative difference {rel:.2e}")

    if "step" in sections:
        variants = {}
        for name in args.models.split(","):
            for bf16 in (False, True):
                m = models(cfg)[name]
                variants[f"train step {name} {'bf16' if bf16 else 'fp32'}"] = make_step(m, xy, y, bf16)
        report(
            f"training step (batch {cfg.batch_size}: forward, backward, clip, Adam)",
            run_interleaved(variants, args.repeat, 3),
            base="train step cat fp32",
        )

    if "render" in sections:
        variants = {}
        n = cfg.num_pixels
        for name in args.models.split(","):
            for bf16 in (False, True):
                dt = "bf16" if bf16 else "fp32"
                variants[f"render {name} {dt} whole image"] = make_render(ms[name], coords, bf16, n)
        variants["render split bf16 chunks of 16384"] = make_render(ms["split"], coords, True, 16384)
        variants["render split fp32 chunks of 16384"] = make_render(ms["split"], coords, False, 16384)
        variants["render split fp32 whole, no_grad"] = make_render(ms["split"], coords, False, n, torch.no_grad)
        variants["render cat fp32 per row (the seed)"] = make_render(ms["cat"], coords, False, cfg.size, torch.no_grad)
        report(
            f"full-resolution render ({n} pixels)",
            run_interleaved(variants, args.repeat, 1),
            base="render cat fp32 per row (the seed)",
        )

        # how far is a bf16 render from the fp32 one (the same, half-trained weights)?
        m = ms["split"]
        step = make_step(m, xy, y, False)
        for _ in range(10):
            step()
        ref = make_render(m, coords, False, n)()
        for chunk_bf16 in (True,):
            out = make_render(m, coords, chunk_bf16, n)()
            d8 = ((out * 255).round() - (ref * 255).round()).abs()
            mse = float(((out - ref) ** 2).mean())
            print(
                f"  bf16 render vs fp32 render: max diff {int(d8.max())} of 255 levels, "
                f"{float((d8 > 0).float().mean()) * 100:.1f}% of pixels differ in 8 bits, "
                f"PSNR between them {10 * math.log10(1 / max(mse, 1e-12)):.1f} dB"
            )

    if "chunks" in sections:  # activations that fit in cache beat one huge forward
        variants = {}
        for name in ("split-each", "cat"):
            for bf16 in (False, True):
                for chunk in (256, 1024, 4096, 16384, cfg.num_pixels):
                    variants[f"render {name} {'bf16' if bf16 else 'fp32'} chunk {chunk}"] = make_render(
                        ms[name], coords, bf16, chunk
                    )
        report(
            f"render chunk size ({cfg.num_pixels} pixels)",
            run_interleaved(variants, args.repeat, 1),
            base=f"render cat fp32 chunk {cfg.size}" if f"render cat fp32 chunk {cfg.size}" in variants else None,
        )

    if "microbatch" in sections:  # the same gradient, accumulated over cache-sized slices of the batch
        variants = {}
        for name in ("split-each", "cat"):
            for bf16 in (False, True):
                for micro in (cfg.batch_size, 2000, 1000):
                    m = models(cfg)[name]
                    variants[f"train {name} {'bf16' if bf16 else 'fp32'} micro-batch {micro}"] = make_step(
                        m, xy, y, bf16, micro
                    )
        report(
            f"training step, batch {cfg.batch_size} as accumulated micro-batches",
            run_interleaved(variants, args.repeat, 2),
            base=f"train cat fp32 micro-batch {cfg.batch_size}",
        )

    if "threads" in sections:
        full = torch.get_num_threads()
        step = make_step(models(cfg)["split"], xy, y, False)
        step_bf = make_step(models(cfg)["split"], xy, y, True)
        times = {}
        for threads in sorted({1, full}):
            torch.set_num_threads(threads)
            times[f"train step split fp32, {threads} thread(s)"] = timeit(step, args.repeat, 3)
            times[f"train step split bf16, {threads} thread(s)"] = timeit(step_bf, args.repeat, 3)
        torch.set_num_threads(full)
        report("torch.set_num_threads", times)

    if "precision" in sections:
        steps, renders = {}, {}
        for name, what in BF16_PATHS.items():
            steps[f"step {what}"] = make_step(models(cfg)[name], xy, y, True)
            renders[f"frame {what}"] = make_render(ms[name], coords, True, 4096)
        report(
            f"bf16 training step (batch {cfg.batch_size})",
            run_interleaved(steps, args.repeat, 3),
            base=f"step {BF16_PATHS['split-each']}",
        )
        report(
            f"bf16 frame ({cfg.num_pixels} pixels, 4096-pixel chunks)",
            run_interleaved(renders, args.repeat, 1),
            base=f"frame {BF16_PATHS['split-each']}",
        )
        # the first layer made to read only u_x and u_y (its sin/cos columns zeroed): how many
        # of a 1024-column row's pixels can it tell apart?
        row, k = pixel_coords(1, 1024), cfg.fourier_order
        for name, what in BF16_PATHS.items():
            m = copy.deepcopy(ms[name])
            with torch.no_grad():
                w = m.net.in_layer.weight
                keep = w[:, [2 * k, 4 * k + 1]].clone()
                w.zero_()
                w[:, [2 * k, 4 * k + 1]] = keep
            first = []
            m.net.act.register_forward_hook(lambda mod, inputs, out, first=first: first.append(out))
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                m(row)
            print(
                f"  {what}: the first layer tells {torch.unique(first[0].float(), dim=0).shape[0]} of 1024 "
                "columns apart"
            )

    if "layout" in sections:
        h, d, B = cfg.hidden_size, 4 * cfg.fourier_order + 2, cfg.batch_size
        x = torch.randn(B, 2 * h + d)
        w = torch.randn(h, 2 * h + d)
        wt = w.t().contiguous()
        xs = torch.randn(B, h)
        ws = torch.randn(h, h)
        xb, wb = x.bfloat16(), w.bfloat16()
        variants = {
            f"({B}x{2 * h + d}) @ W.t() [nn.Linear layout]": lambda: x @ w.t(),
            f"({B}x{2 * h + d}) @ Wt [pre-transposed]": lambda: x @ wt,
            f"F.linear({B}x{2 * h + d})": lambda: F.linear(x, w),
            f"({B}x{h}) @ W.t() [one split block]": lambda: xs @ ws.t(),
            f"({B}x{2 * h + d}) @ W.t() bf16": lambda: xb @ wb.t(),
            f"torch.cat([a, a, z]) ({B}x{2 * h + d})": lambda: torch.cat([xs, xs, x[:, :d]], 1),
        }
        report(
            "matmul layout (one hidden layer's forward matmul)",
            run_interleaved(variants, args.repeat, 5),
            base=f"({B}x{2 * h + d}) @ W.t() [nn.Linear layout]",
        )


if __name__ == "__main__":
    main()

"""GPU throughput against the GPU's own measured ceiling, in one process.

  ceiling    bf16 (and TF32) dense matmul TFLOP/s of this GPU: 8192^3 GEMMs, best of 5
  skipconn   the seed's model (Fourier order 32 into a 300 x 30 SkipConn) trained as the job
             does (fused Adam, bf16 autocast where native), eager (imgfit_batch.train.train_step)
             and graphed (imgfit_batch.graphed: the step as one CUDA graph), at the seed's batch
             8000 and at 2^16: matmul TFLOP/s reached and its fraction of the bf16 ceiling
             (FLOPs = 3 x 2 x batch x the weights' entries: forward, and backward for
             activations and weights)
  hashgrid   training samples/s of the job's step on a 20 MP layout (derived as the job
             derives it for 5472x3648), eager and graphed, at 2^16, 2^18 and 2^20 (the
             batches the job's recipe calibrates)

Usage: python benchmarks/gpu_speed.py [--device cuda] [--json out.json] [--quick]
(--quick: small sizes and few steps, a smoke test of this script on a CPU, where "graphed" is the
eager step: `python benchmarks/gpu_speed.py --device cpu --quick`, seconds; benchmarks/smoke.sh runs it.)
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _timed(fn, repeat: int, sync) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def ceiling(device: torch.device, n: int, dtype: torch.dtype, sync) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = _timed(lambda: torch.mm(a, b), 5, sync)
    return 2 * n**3 / seconds / 1e12


def _step(device: torch.device, graphed: bool):
    from imgfit_batch.graphed import pick_step
    from imgfit_batch.train import train_step

    return pick_step(device) if graphed else train_step


def skipconn(
    device: torch.device,
    batch: int,
    bf16: bool,
    sync,
    layers: int = 30,
    graphed: bool = False,
    steps: int = 20,
    repeat: int = 3,
) -> dict:
    from imgfit_batch.models.skipconn import Fourier

    train_step = _step(device, graphed)

    torch.manual_seed(0)
    model = Fourier(32, 300, layers, 3).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    xy = torch.rand(batch, 2, device=device) * 2 - 1
    y = torch.rand(batch, 3, device=device)
    weights = sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))

    def run():
        for _ in range(steps):
            train_step(model, optimizer, xy, y, 0.01, bf16)

    seconds = _timed(run, repeat, sync) / steps
    tflops = 3 * 2 * batch * weights / seconds / 1e12
    return {
        "batch": batch,
        "layers": layers,
        "graphed": graphed,
        "bf16": bf16,
        "step_ms": seconds * 1e3,
        "tflops": tflops,
    }


def hashgrid(
    device: torch.device,
    width: int,
    height: int,
    batch: int,
    sync,
    graphed: bool = False,
    steps: int = 10,
    repeat: int = 3,
) -> dict:
    from imgfit_batch.models.hashgrid import HashGridConfig, derived_layout

    train_step = _step(device, graphed)

    layout = derived_layout(width, height)
    layout.pop("batch_size")
    config = HashGridConfig(kind="hashgrid", **layout)
    torch.manual_seed(0)
    model = config.build(3, width, height).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-15, fused=True)
    xy = torch.rand(batch, 2, device=device) * 2 - 1
    y = torch.rand(batch, 3, device=device)

    def run():
        for _ in range(steps):
            train_step(model, optimizer, xy, y, 0.0, False)

    seconds = _timed(run, repeat, sync) / steps
    return {"batch": batch, "graphed": graphed, "step_ms": seconds * 1e3, "samples_per_s": batch / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test on a CPU")
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    from imgfit_batch.device import configure, native_bf16

    configure(device, deterministic=False, threads=None, precision="auto")
    bf16 = native_bf16(device)
    n = 1024 if args.quick else 8192
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "bf16_native": bf16,
        "ceiling_bf16_tflops": ceiling(device, n, torch.bfloat16, sync),
        "ceiling_tf32_tflops": ceiling(device, n, torch.float32, sync),
    }
    layers = 3 if args.quick else 30
    timing = dict(steps=2, repeat=1) if args.quick else {}  # --quick: does it run, not how fast
    result["skipconn"] = [
        skipconn(device, b, precision_bf16, sync, layers, graphed, **timing)
        for b in ((512,) if args.quick else (8000, 1 << 16))
        for graphed in (False, True)
        for precision_bf16 in ((bf16, False) if bf16 and b == 8000 else (bf16,))
    ]
    for row in result["skipconn"]:
        row["fraction_of_bf16_ceiling"] = row["tflops"] / result["ceiling_bf16_tflops"]
    w, h = (320, 240) if args.quick else (5472, 3648)
    result["hashgrid"] = [
        hashgrid(device, w, h, b, sync, graphed, **timing)
        for b in ((1 << 12,) if args.quick else (1 << 16, 1 << 18, 1 << 20))
        for graphed in (False, True)
    ]

    print(f"| {result['device']} | value |\n|---|---|")
    print(f"| bf16 matmul ceiling | {result['ceiling_bf16_tflops']:.1f} TFLOP/s |")
    print(f"| TF32 matmul ceiling | {result['ceiling_tf32_tflops']:.1f} TFLOP/s |")
    for row in result["skipconn"]:
        how = f"{'graphed' if row['graphed'] else 'eager'}, {'bf16' if row['bf16'] else 'fp32/TF32'}"
        print(
            f"| SkipConn 300x{row['layers']}, batch {row['batch']}, {how} | {row['step_ms']:.2f} ms/step, "
            f"{row['tflops']:.1f} TFLOP/s = "
            f"{100 * row['fraction_of_bf16_ceiling']:.0f}% of bf16 ceiling |"
        )
    for hg in result["hashgrid"]:
        print(
            f"| hash grid {w}x{h} layout, batch {hg['batch']}, {'graphed' if hg['graphed'] else 'eager'} | "
            f"{hg['samples_per_s'] / 1e6:.1f} M samples/s ({hg['step_ms']:.2f} ms/step) |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()

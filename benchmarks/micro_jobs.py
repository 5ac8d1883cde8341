"""Micro-benchmark: whole floor jobs (36 steps + 18 frames at the cpu config) per variant.

Answers "what does switch X do to a whole job, quality included": each variant is
benchmarks/floor.py with some switches, run in its own process; variants are
interleaved over --repeat rounds; the table shows the best and median in-process job
time, the split into training and rendering, time to the first step (torch.compile
pays here) and the final PSNR.

Usage: python benchmarks/micro_jobs.py [--config cpu] [--repeat 2] [--variants fp32,bf16,...]
       python benchmarks/micro_jobs.py --smoke     # seconds (CI): fp32 and each-bf16-c4k, --config smoke, once
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import CONFIGS, machine, write_image  # noqa: E402

VARIANTS = {
    "fp32": ["--model", "split", "--render-chunk", "0"],  # imgfit_batch's model and render chunk as merged
    "each-fp32-c4k": ["--model", "split-each", "--render-chunk", "4096"],
    "each-bf16-c4k": [
        "--model",
        "split-each",
        "--train-dtype",
        "bf16",
        "--render-dtype",
        "bf16",
        "--render-chunk",
        "4096",
    ],
    "each-bf16r-c4k": ["--model", "split-each", "--render-dtype", "bf16", "--render-chunk", "4096"],
    "each-bf16-c4k-t1": [
        "--model",
        "split-each",
        "--train-dtype",
        "bf16",
        "--render-dtype",
        "bf16",
        "--render-chunk",
        "4096",
        "--threads",
        "1",
    ],
    "each-compile-bf16": [
        "--model",
        "split-each",
        "--train-dtype",
        "bf16",
        "--render-dtype",
        "bf16",
        "--render-chunk",
        "4096",
        "--compile",
    ],
    "cat-fp32": ["--model", "cat", "--render-chunk", "0"],
    "bf16-train": ["--train-dtype", "bf16"],
    "bf16-render": ["--render-dtype", "bf16"],
    "bf16": ["--train-dtype", "bf16", "--render-dtype", "bf16"],
    "cat-bf16": ["--model", "cat", "--train-dtype", "bf16", "--render-dtype", "bf16"],
    "no_grad-render": ["--no-grad-render"],
    "chunk16k": ["--render-chunk", "16384"],
    "threads1": ["--threads", "1"],
    "compile-fp32": ["--compile"],
    "compile-bf16": ["--compile", "--train-dtype", "bf16", "--render-dtype", "bf16"],
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="cpu", choices=sorted(CONFIGS))
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument(
        "--variants",
        default="fp32,cat-fp32,each-fp32-c4k,each-bf16r-c4k,each-bf16-c4k,each-compile-bf16",
        help=f"comma-separated, from {','.join(VARIANTS)}",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for every variant (1 gives clean CPU-second numbers on a busy machine)",
    )
    p.add_argument("--json", metavar="FILE")
    p.add_argument(
        "--smoke", action="store_true", help="seconds, for CI: --config smoke --repeat 1 --variants fp32,each-bf16-c4k"
    )
    args = p.parse_args()
    if args.smoke:
        args.config, args.repeat, args.variants = "smoke", 1, "fp32,each-bf16-c4k"
    cfg = CONFIGS[args.config]
    names = args.variants.split(",")
    info = machine()
    print(f"machine: {info['cpu']} ({info['cpu_flags']}), {info['cores']} cores, torch {info['torch']}")
    work = tempfile.mkdtemp(prefix="imgfit-micro-jobs-")
    cfg_path, image = os.path.join(work, "config.json"), os.path.join(work, "image.png")
    with open(cfg_path, "w") as f:
        f.write(cfg.to_json())
    write_image(image, cfg.size)

    results: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(args.repeat):
        for name in names:
            out = os.path.join(work, f"{name}-{rep}.json")
            cmd = [
                sys.executable,
                os.path.join(HERE, "floor.py"),
                cfg_path,
                image,
                out,
                *(["--threads", str(args.threads)] if args.threads else []),
                *VARIANTS[name],
            ]
            load = os.getloadavg()[0]
            subprocess.run(cmd, check=True)
            with open(out) as f:
                r = json.load(f)
            r["load_before"] = load
            results[name].append(r)
            print(
                f"  round {rep + 1} {name:16s} job {r['job_seconds']:6.1f} s, {r['job_cpu_seconds']:6.1f} CPU s  "
                f"PSNR {r['psnr_db']:.2f} dB  "
                f"(load before {load:.1f})",
                flush=True,
            )

    base = min(r["job_seconds"] for r in results[names[0]])
    print(
        f"\n{'variant':18s} {'CPU s min':>9s} {'job s min':>9s} {'median':>7s} {'vs ' + names[0]:>10s} "
        f"{'train s':>8s} {'render s':>9s} "
        f"{'1st step s':>10s} {'PSNR dB':>8s}"
    )
    for name in names:
        rs = results[name]
        best = min(rs, key=lambda r: r["job_seconds"])
        med = statistics.median(r["job_seconds"] for r in rs)
        ph = best["phases"]
        cpu = min(r["job_cpu_seconds"] for r in rs)
        print(
            f"{name:18s} {cpu:9.1f} {best['job_seconds']:9.1f} {med:7.1f} {base / best['job_seconds']:9.2f}x "
            f"{ph.get('train', 0):8.1f} {ph.get('render', 0):9.1f} {best['first_step_seconds']:10.2f} "
            f"{statistics.median(r['psnr_db'] for r in rs):8.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "config": args.config, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

"""Side-by-side speed benchmark: the seed procedure, the compute floor and our CLI.

Every contestant trains the same model on the same generated image for the same steps
and renders the same number of full-resolution frames, each in its own process, so
that wall time is end to end (interpreter start and imports included) and peak memory
(the child's ru_maxrss; torch.cuda.max_memory_allocated on CUDA) is its own.

  seed     benchmarks/seed_reference.py: per-pixel Dataset + DataLoader(shuffle=True),
           torch.cat SkipConn, a matplotlib PNG every N steps, ffmpeg at the end
  floor    benchmarks/floor.py: the same steps and renders in a tight loop, no I/O, fp32
  floor-bf16 (with --only) the floor with bf16 autocast for training steps and frames: what
           reduced precision makes reachable
  ours     `imgfit-batch run SPEC` on a generated spec (video, checkpoints, everything)
  ours-min (with --overhead) the same job with one frame and no step checkpoints

Usage:
  python benchmarks/run.py                       # cpu configuration, all contestants
  python benchmarks/run.py --smoke               # seconds: seed, floor-bf16 and ours on tiny sizes (CI)
  python benchmarks/run.py --config gpu --device cuda
  python benchmarks/run.py --repeat 3 --overhead --json results.json --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import CONFIGS, BenchConfig, load_gray, machine, psnr_db, write_image  # noqa: E402

CONTESTANTS = ("seed", "floor", "floor-bf16", "ours", "ours-min")


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU (Linux PSI), in %."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def run_child(cmd: list[str], log_path: str, timeout: float, threads: int = 0) -> tuple[float, int, int, float]:
    """Run cmd to completion; return (wall seconds, exit status, peak RSS bytes of the
    child tree, CPU seconds of the child tree)."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log_path, "w") as log:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        deadline = t + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    cpu = usage.ru_utime + usage.ru_stime
    return wall, proc.returncode, usage.ru_maxrss * 1024, cpu  # Linux reports ru_maxrss in KiB


def spec_yaml(cfg: BenchConfig, image: str, output: str, device: str, minimal: bool) -> str:
    video_every = cfg.num_steps if minimal else cfg.frame_every_n_steps
    checkpoint = "  every_n_steps: null\n  every_seconds: 1000000\n" if minimal else ""
    return (
        f"image: {json.dumps(image)}\n"
        f"output: {json.dumps(output)}\n"
        "model:\n  kind: fourier\n"
        f"  fourier_order: {cfg.fourier_order}\n  hidden_size: {cfg.hidden_size}\n"
        f"  num_hidden_layers: {cfg.num_hidden_layers}\n"
        "train:\n  color: gray\n"
        f"  epochs: {cfg.epochs}\n  batch_size: {cfg.batch_size}\n  lr: {cfg.lr}\n"
        f"  seed: {cfg.seed}\n  device: {device}\n"
        f"video:\n  every_n_steps: {video_every}\n  fps: {cfg.fps}\n"
        + (f"checkpoint:\n{checkpoint}" if checkpoint else "")
    )


def run_contestant(
    name: str,
    cfg: BenchConfig,
    work: str,
    image: str,
    device: str,
    tag: str,
    timeout: float,
    floor_args: list[str],
    threads: int = 0,
) -> dict:
    out_dir = os.path.join(work, f"{name}-{tag}")
    os.makedirs(out_dir)
    result_path = os.path.join(out_dir, "result.json")
    cfg_path = os.path.join(work, "config.json")
    py = sys.executable
    if name == "seed":
        cmd = [py, os.path.join(HERE, "seed_reference.py"), cfg_path, image, out_dir, result_path, "--device", device]
    elif name.startswith("floor"):
        bf16 = ["--train-dtype", "bf16", "--render-dtype", "bf16"] if name == "floor-bf16" else []
        cmd = [py, os.path.join(HERE, "floor.py"), cfg_path, image, result_path, "--device", device, *bf16, *floor_args]
    else:
        spec_path = os.path.join(out_dir, "spec.yaml")
        job_out = os.path.join(out_dir, "out")
        with open(spec_path, "w") as f:
            f.write(spec_yaml(cfg, image, job_out, device, minimal=name == "ours-min"))
        cmd = [py, "-m", "imgfit_batch", "run", spec_path]
    load_before = os.getloadavg()[0]
    wall, code, rss, cpu = run_child(cmd, os.path.join(out_dir, "log.txt"), timeout, threads)
    row = {
        "name": name,
        "wall_s": wall,
        "cpu_s": cpu,
        "exit": code,
        "peak_rss_bytes": rss,
        "load_before": load_before,
        "cpu_pressure_after": cpu_pressure(),
        "log": os.path.join(out_dir, "log.txt"),
    }
    if code != 0:
        return row
    if name.startswith("ours"):
        with open(os.path.join(job_out, "summary.json")) as f:
            summary = json.load(f)
        row.update(
            steps=summary.get("steps"),
            frames=summary.get("frames"),
            psnr_db=summary.get("psnr_db"),
            job_s=summary.get("wall_seconds"),
            device=summary.get("device"),
            cuda_peak_bytes=summary.get("cuda_peak_bytes") or summary.get("peak_cuda_bytes"),
        )
        final_png = os.path.join(job_out, "final.png")
        if os.path.exists(final_png):  # cross-check: PSNR of the 8-bit final image, as users see it
            row["psnr_final_png_db"] = psnr_db(load_gray(final_png), load_gray(image))
    else:
        with open(result_path) as f:
            res = json.load(f)
        row.update(
            steps=res["steps"],
            frames=res["frames"],
            psnr_db=res["psnr_db"],
            job_s=res["job_seconds"],
            cuda_peak_bytes=res.get("cuda_peak_bytes"),
            phases=res.get("phases"),
        )
    return row


def summarise(runs: list[dict], cfg: BenchConfig) -> dict:
    ok = [r for r in runs if r["exit"] == 0]
    if not ok:
        return {"name": runs[0]["name"], "failed": True, "exit": runs[0]["exit"], "log": runs[0]["log"]}
    walls = [r["wall_s"] for r in ok]
    wall = statistics.median(walls)
    first = ok[0]
    steps, frames = first.get("steps") or 0, first.get("frames") or 0
    samples = steps * cfg.batch_size if steps < cfg.num_steps else cfg.epochs * cfg.num_pixels
    return {
        "name": first["name"],
        "runs": len(ok),
        "wall_s": wall,
        "wall_min_s": min(walls),
        "wall_max_s": max(walls),
        "cpu_s": statistics.median(r["cpu_s"] for r in ok),
        "job_s": statistics.median(r["job_s"] for r in ok if r.get("job_s") is not None)
        if any(r.get("job_s") for r in ok)
        else None,
        "steps": steps,
        "frames": frames,
        "steps_per_s": steps / wall,
        "samples_per_s": samples / wall,
        "frames_per_s": frames / wall,
        "peak_rss_mib": max(r["peak_rss_bytes"] for r in ok) / 2**20,
        "cuda_peak_mib": (first["cuda_peak_bytes"] / 2**20) if first.get("cuda_peak_bytes") else None,
        "psnr_db": statistics.median(r["psnr_db"] for r in ok if r.get("psnr_db") is not None),
        "psnr_final_png_db": first.get("psnr_final_png_db"),
        "phases": first.get("phases"),
    }


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def table(rows: list[dict], markdown: bool) -> str:
    head = [
        "contestant",
        "wall s",
        "(min–max)",
        "CPU s",
        "steps/s",
        "samples/s",
        "frames/s",
        "peak RSS MiB",
        "CUDA peak MiB",
        "PSNR dB",
    ]
    lines = []
    for r in rows:
        if r.get("failed"):
            lines.append([r["name"], f"FAILED (exit {r['exit']}, see {r['log']})"] + [""] * (len(head) - 2))
            continue
        lines.append(
            [
                r["name"],
                fmt(r["wall_s"], ".2f"),
                f"{r['wall_min_s']:.2f}–{r['wall_max_s']:.2f}",
                fmt(r["cpu_s"], ".1f"),
                fmt(r["steps_per_s"], ".2f"),
                fmt(r["samples_per_s"], ",.0f"),
                fmt(r["frames_per_s"], ".2f"),
                fmt(r["peak_rss_mib"], ",.0f"),
                fmt(r["cuda_peak_mib"], ",.0f"),
                fmt(r["psnr_db"], ".2f"),
            ]
        )
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    return "\n".join(
        "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(line, widths)))
        for line in [head, *lines]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda for --config gpu, else cpu)")
    p.add_argument("--only", default="seed,floor,ours", help=f"comma-separated subset of {','.join(CONTESTANTS)}")
    p.add_argument("--overhead", action="store_true", help="also run ours-min (one frame, no step checkpoints)")
    p.add_argument("--repeat", type=int, default=1, help="runs per contestant, interleaved; the table shows medians")
    p.add_argument(
        "--threads", type=int, default=0, help="OMP_NUM_THREADS for every contestant (0: torch's default, all cores)"
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds per contestant run")
    p.add_argument("--floor-args", default="", help="extra switches for floor.py, e.g. '--train-dtype bf16'")
    p.add_argument("--keep", metavar="DIR", help="keep outputs in DIR instead of a temporary folder")
    p.add_argument("--json", metavar="FILE", help="write the machine, config and rows here")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, for CI: --config smoke --only seed,floor-bf16,ours, one run each; prints ours / "
        "floor-bf16 and asserts nothing about time (exit 1 only if a contestant fails)",
    )
    args = p.parse_args()
    if args.smoke:
        args.config, args.only, args.overhead, args.repeat = "smoke", "seed,floor-bf16,ours", False, 1
    cfg = CONFIGS[args.config]
    if args.threads:
        info_threads = f", OMP_NUM_THREADS={args.threads} for every contestant"
    else:
        info_threads = ""
    device = args.device or ("cuda" if args.config == "gpu" else "cpu")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if args.overhead and "ours-min" not in names:
        names.append("ours-min")
    unknown = set(names) - set(CONTESTANTS)
    if unknown:
        p.error(f"unknown contestant(s): {', '.join(sorted(unknown))}")

    info = machine()
    print(
        f"machine: {info['cpu']} ({info['cpu_flags']}), {info['cores']} cores, torch {info['torch']} "
        f"({info['torch_threads']} threads), python {info['python']}, GPU: {info['gpu'] or 'none'}"
    )
    print(
        f"config {args.config} on {device}: {cfg.size}x{cfg.size} gray, Fourier order {cfg.fourier_order}, "
        f"{cfg.hidden_size} wide x {cfg.num_hidden_layers} hidden, batch {cfg.batch_size}, {cfg.epochs} epochs "
        f"= {cfg.num_steps} steps, a frame every {cfg.frame_every_n_steps} steps = {cfg.num_frames} frames"
        f"{info_threads}",
        flush=True,
    )

    work = args.keep or tempfile.mkdtemp(prefix="imgfit-bench-")
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "config.json"), "w") as f:
        f.write(cfg.to_json())
    image = os.path.join(work, "image.png")
    write_image(image, cfg.size)

    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(args.repeat):
        for name in names:
            row = run_contestant(
                name, cfg, work, image, device, f"r{rep}", args.timeout, args.floor_args.split(), args.threads
            )
            runs[name].append(row)
            status = (
                f"{row['wall_s']:.2f} s wall, {row['cpu_s']:.1f} s CPU (load before {row['load_before']:.1f}, "
                f"CPU pressure after {row['cpu_pressure_after']}%)"
                if row["exit"] == 0
                else f"exit {row['exit']} (log: {row['log']})"
            )
            print(f"  run {rep + 1}/{args.repeat} {name:8s} {status}", flush=True)

    rows = [summarise(runs[n], cfg) for n in names]
    print()
    print(table(rows, args.markdown))
    by = {r["name"]: r for r in rows if not r.get("failed")}
    ratios = {}
    if "seed" in by and "ours" in by:
        ratios["seed/ours wall"] = by["seed"]["wall_s"] / by["ours"]["wall_s"]
    if "ours" in by and "floor" in by:
        ratios["ours/floor wall"] = by["ours"]["wall_s"] / by["floor"]["wall_s"]
    if "ours" in by and "floor-bf16" in by:
        ratios["ours/floor-bf16 wall"] = by["ours"]["wall_s"] / by["floor-bf16"]["wall_s"]
    if "seed" in by and "floor" in by:
        ratios["seed/floor wall"] = by["seed"]["wall_s"] / by["floor"]["wall_s"]
    if "ours-min" in by and "ours" in by:
        ratios["video+checkpoint overhead (ours/ours-min - 1)"] = by["ours"]["wall_s"] / by["ours-min"]["wall_s"] - 1
    print()
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}" + ("" if "overhead" not in k else f" ({v * 100:.0f}%)"))
    for r in rows:
        if r.get("phases"):
            phases = ", ".join(f"{k} {v:.2f}s" for k, v in r["phases"].items())
            print(f"{r['name']} phases: {phases}")
        if r.get("psnr_final_png_db") is not None:
            print(f"{r['name']} PSNR of final.png (8-bit): {r['psnr_final_png_db']:.2f} dB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "config": args.config,
                    "device": device,
                    "threads": args.threads,
                    "rows": rows,
                    "ratios": ratios,
                    "runs": runs,
                },
                f,
                indent=2,
            )
    if args.smoke:
        print("(smoke: tiny sizes, one run each: a check that the contestants run, not a measurement)")
    failed = any(r.get("failed") for r in rows)
    if args.smoke and not args.keep and not failed:  # a failure's logs stay
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"\noutputs in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

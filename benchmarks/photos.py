"""Real photographs at real size (issues 10 and 18): the job against a thumbnail, and its film.

For each photo this script
  1. computes the thumbnail baseline: the photo shrunk to 1024 px wide (Lanczos) and
     enlarged back to full size (bicubic), PSNR and SSIM against the photo;
  2. runs the real job, `imgfit-batch run SPEC`, in a subprocess with a spec that sets
     only `model.kind: hashgrid`, `train.color: rgb` and `train.max_seconds` (300 s
     unless --seconds; --set passes extra overrides through), timing its wall clock;
  3. reads the job's summary.json (steps, psnr_db, ssim, train_seconds, peak host MB);
  4. decodes video.mp4 frame by frame and scores each frame against the photo at frame
     size: the film's flicker (the share of consecutive frames more than 1 dB worse than
     the frame before) and the last frame's PSNR minus the best frame's;
  5. prints a Markdown table with PASS/FAIL per target: PSNR >= thumbnail, SSIM >= 0.90,
     peak host memory <= 4096 MB, flicker <= 5 %, last frame within 0.5 dB of the best
     (issue 10); the last frame within 0.5 dB of final.png shrunk and coded the same way,
     filming at most 25 % of the training time (issue 18).

Photos: Debian's wallpaper packages carry real photographs under free licences. Unless
--photos-dir names a folder that already holds them, the script downloads the packages
with `apt-get download` into a cache folder (~/.cache/imgfit-photos; --cache-dir) and
unpacks them there with `dpkg -x` (both need a Debian/Ubuntu system with apt's package
lists; `apt-get update` first if the download fails). Photos are never copied into the
repository. The default set (DEFAULT_PHOTOS below) mixes foliage, sky gradients, a sunset
into the sun, shallow depth of field and animal faces in portrait orientation.

The film (issue 18): frames smaller than the photo are images of the field at frame
size, each pixel the field averaged over the photo's pixels it covers (the job's box
filter, `imgfit_batch.rendering`). Every frame is scored against the photo shrunk with the
same filter (`render.box_shrink`); the last frame is also compared with the best it
could be: final.png shrunk the same way and put through the same encoder (one H.264
frame, the job's crf, preset and yuv420p, decoded), so the codec's loss is not counted
as aliasing ("last - coded" >= -0.5 dB); and without the codec, the last frame rendered
from model.pt against final.png shrunk (the filter alone). "film %" is the share of the training time the
loop spent filming (summary.json film_wait_seconds / train_seconds: rendering, scoring and
handing frames to the encoder thread; the encoder itself runs in its own process).
Frames are H.264 (yuv420p, video.crf), so frame PSNRs carry the codec's loss too;
flicker and last-vs-best compare frames with each other, which the codec affects alike.

Run it:
    python benchmarks/photos.py                       # the 6 default photos, 300 s each
    python benchmarks/photos.py --quick               # check the script: 1 photo at 2 MP, 30 s
    python benchmarks/photos.py --smoke               # seconds (CI): a generated 0.3 MP photo, 5 s, no download
    python benchmarks/photos.py --photos-dir ~/pictures --photos a.jpg b.jpg --seconds 120
    python benchmarks/photos.py --set train.threads=2 --out runs/photos-t2

Results: the table on stdout, results.json and one job output per photo under --out
(default runs/photos).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from imgfit_batch import metrics, video
from imgfit_batch.data import decode_image
from imgfit_batch.readback import load_model
from imgfit_batch.rendering import box_shrink, render_image
from imgfit_batch.video import ffmpeg_exe

PACKAGES = ("plasma-workspace-wallpapers", "lomiri-wallpapers-16.04")

# file name (searched under the unpacked packages or --photos-dir) -> what it shows
DEFAULT_PHOTOS = {
    "sunset_by_Aitzol_Berasategi.jpg": "4272x2848, 12.2 MP: sunset into the sun, sky gradient, rocky ground",
    "Dragonfly_by_Bolly.jpg": "4224x3168, 13.4 MP: foliage against blue sky, fine detail everywhere",
    "seeding_by_Clements_Engelhardt.jpg": "5312x2988, 15.9 MP: dandelions, backlit bokeh, shallow depth of field",
    "Bridge_by_Sander_Klootwijk.jpg": "4352x2448, 10.7 MP: smooth sky gradient, thin cables, clouds",
    "friends_by_Aitzol_Berasategi.jpg": "2056x3088, 6.3 MP, portrait: two dogs' faces, fur, wooden planks",
    # the hardest to film: point-sampled at 1024 px it is 21.5 dB from its box-shrunk self
    "life_by_Aitzol_Berasategi.jpg": "3088x2056, 6.3 MP: a forest stream, foliage and rocks, fine texture everywhere",
}

THUMB_WIDTH = 1024
TARGETS = {
    "ssim": 0.90,
    "peak_mb": 4096.0,
    "flicker_pct": 5.0,
    "last_vs_best_db": -0.5,
    "last_vs_coded_db": -0.5,
    "film_pct": 25.0,
}
QUICK_PIXELS = 2_000_000
QUICK_SECONDS = 30.0
SMOKE_SIZE = (640, 480)  # 0.3 MP
SMOKE_SECONDS = 5.0


@dataclass
class Result:
    photo: str
    width: int
    height: int
    thumb_psnr: float = math.nan
    thumb_ssim: float = math.nan
    psnr: float = math.nan
    ssim: float = math.nan
    steps: int = 0
    frames: int = 0
    train_seconds: float = math.nan
    wall_seconds: float = math.nan
    peak_mb: float = math.nan
    flicker_pct: float = math.nan
    last_vs_best_db: float = math.nan
    best_frame_psnr: float = math.nan
    last_frame_psnr: float = math.nan  # the film's last frame against the photo box-shrunk to frame size
    coded_final_psnr: float = math.nan  # final.png box-shrunk, one H.264 frame, decoded: the same
    film_pct: float = math.nan  # share of train_seconds spent filming
    uncoded_frame_psnr: float = math.nan  # the last frame rendered from model.pt, not encoded
    uncoded_final_psnr: float = math.nan  # final.png box-shrunk, not encoded
    frame_psnrs: list[float] = field(default_factory=list)
    output: str = ""

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    def checks(self) -> dict[str, bool]:
        return {
            "PSNR>=thumb": self.psnr >= self.thumb_psnr,
            "SSIM>=0.90": self.ssim >= TARGETS["ssim"],
            "peak<=4GB": self.peak_mb <= TARGETS["peak_mb"],
            "flicker<=5%": self.flicker_pct <= TARGETS["flicker_pct"],
            "last-best>=-0.5": self.last_vs_best_db >= TARGETS["last_vs_best_db"],
            "last-coded>=-0.5": self.last_frame_psnr - self.coded_final_psnr >= TARGETS["last_vs_coded_db"],
            "film<=25%": self.film_pct <= TARGETS["film_pct"],
        }


# ------------------------------------------------------------------ photos


def fetch_packages(cache_dir: Path) -> Path:
    """Download and unpack the wallpaper packages into cache_dir (once); the unpacked root."""
    root = cache_dir / "extracted"
    marker = root / ".complete"
    if marker.exists():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        if not list(cache_dir.glob(f"{package}_*.deb")):
            print(f"downloading {package} into {cache_dir} ...", file=sys.stderr)
            subprocess.run(["apt-get", "download", package], cwd=cache_dir, check=True)
    root.mkdir(exist_ok=True)
    for deb in sorted(cache_dir.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    marker.touch()
    return root


def find_photo(name: str, roots: list[Path]) -> Path:
    """A photo by path, or by file name anywhere under the roots."""
    direct = Path(name).expanduser()
    if direct.is_file():
        return direct
    for root in roots:
        for candidate in (root / name, root / "usr/share/backgrounds" / name):
            if candidate.is_file():
                return candidate
        hits = sorted(root.rglob(Path(name).name))
        if hits:
            return hits[0]
    raise SystemExit(f"photo {name!r} not found under {', '.join(map(str, roots))}")


def load_photo(path: Path) -> np.ndarray:
    """(H, W, 3) uint8, decoded exactly as the job decodes its input (EXIF rotation etc.)."""
    return decode_image(path.read_bytes(), str(path), "rgb", max_pixels=1 << 31).pixels


def quick_photo(path: Path, work: Path, pixels: int = QUICK_PIXELS) -> Path:
    """The photo downscaled (Lanczos) to about `pixels`, saved as PNG in `work`."""
    a = load_photo(path)
    h, w = a.shape[:2]
    scale = min(1.0, math.sqrt(pixels / (w * h)))
    small = Image.fromarray(a).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    out = work / f"{path.stem}_quick.png"
    work.mkdir(parents=True, exist_ok=True)
    small.save(out)
    return out


def smoke_photo(work: Path, width: int = SMOKE_SIZE[0], height: int = SMOKE_SIZE[1]) -> Path:
    """A generated photo-like RGB image (sky gradient, a sun, a hard horizon, textured ground,
    a window grid, sensor noise), the same every run, saved as JPEG in `work`: --smoke needs
    no download."""
    rng = np.random.default_rng(0)
    y, x = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    sky = np.stack([0.35 + 0.3 * y, 0.5 + 0.25 * y, 0.9 - 0.2 * y], -1)
    sun = (1 / (1 + np.exp((np.hypot(x - 0.7, y - 0.25) - 0.08) * 150)))[..., None] * np.array([0.6, 0.45, 0.1])
    horizon = 0.6 + 0.05 * np.sin(9 * x) + 0.02 * np.sin(31 * x + 1)
    grass = np.stack(
        [0.2 + 0.08 * np.sin(120 * x + 50 * y), 0.4 + 0.1 * np.sin(80 * y) * np.sin(150 * x), 0.12 + 0.0 * x], -1
    )
    img = np.where((y > horizon)[..., None], grass, sky + sun)
    building = (x > 0.1) & (x < 0.3) & (y > 0.3) & (y < horizon)
    windows = (np.floor(x * 60) % 2 == 0) & (np.floor(y * 40) % 2 == 0)
    img = np.where(building[..., None], (0.15 + 0.6 * windows)[..., None] * np.array([1.0, 0.9, 0.6]), img)
    img = img + 0.02 * rng.standard_normal(img.shape)
    out = work / "smoke_generated.jpg"
    work.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img.clip(0, 1) * 255).round().astype(np.uint8)).save(out, quality=92)
    return out


# ------------------------------------------------------------------ metrics


def psnr_u8(a: np.ndarray, b: np.ndarray, band_rows: int = 256) -> float:
    """PSNR (peak 255) of two uint8 images, accumulated over bands of rows in float64."""
    total = 0.0
    for top in range(0, a.shape[0], band_rows):
        d = a[top : top + band_rows].astype(np.float32) - b[top : top + band_rows].astype(np.float32)
        total += float(np.square(d, dtype=np.float64).sum())
    mse = total / a.size
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim_u8(a: np.ndarray, b: np.ndarray, max_band_pixels: int = 1 << 22, window: int = 11) -> float:
    """imgfit_batch.metrics.ssim of two uint8 images, fed band by band in float32.

    Bands overlap by window - 1 rows and each band's mean is weighted by its number of
    valid window positions: the same value as metrics.ssim on the whole image (which
    bands the same way), without ever holding the whole image in float.
    """
    height, width = a.shape[:2]
    size = min(window, width, height)
    band = max(size, max_band_pixels // max(width, 1))
    if band >= height:
        return float(metrics.ssim(torch.tensor(a).float() / 255, torch.tensor(b).float() / 255))
    total, count = 0.0, 0
    for top in range(0, height - size + 1, band - (size - 1)):
        rows = slice(top, min(top + band, height))
        pa = torch.tensor(a[rows]).float() / 255  # copies: the photo's arrays may be read-only
        pb = torch.tensor(b[rows]).float() / 255
        valid = (pa.shape[0] - size + 1) * (width - size + 1)
        total += float(metrics.ssim(pa, pb, window_size=window)) * valid
        count += valid
    return total / count


def thumbnail_baseline(photo: np.ndarray, thumb_width: int = THUMB_WIDTH) -> tuple[float, float]:
    """PSNR and SSIM of the photo after Lanczos down to thumb_width wide, bicubic back up."""
    h, w = photo.shape[:2]
    img = Image.fromarray(photo)
    small = img.resize((thumb_width, max(1, round(h * thumb_width / w))), Image.LANCZOS)
    del img
    back = np.asarray(small.resize((w, h), Image.BICUBIC))
    return psnr_u8(back, photo), ssim_u8(back, photo)


def frame_reference(photo: np.ndarray, frame_w: int, frame_h: int) -> np.ndarray:
    """The photo at frame size, shrunk with the job's box filter (what every frame is scored against)."""
    return box_shrink(torch.from_numpy(np.array(photo)), frame_w, frame_h).numpy()  # a writable copy


def coded(frame: np.ndarray, crf: int, preset: str, fps: int) -> np.ndarray:
    """`frame` as the film shows it: one H.264 frame from the job's own encoder, decoded."""
    height, width, channels = frame.shape
    with tempfile.TemporaryDirectory(prefix="imgfit-coded-") as folder:
        writer = video.SegmentWriter(folder, width, height, channels, fps, crf, preset)
        writer.add(np.ascontiguousarray(frame))
        writer.finish()
        return video.decode_frames(os.path.join(folder, video.segment_name(0)), width, height, channels)[-1]


def film_psnrs(video_path: Path, reference: np.ndarray) -> list[float]:
    """PSNR of every frame of the video against the reference, decoded one frame at a time."""
    height, width = reference.shape[:2]
    pad_w, pad_h = width + width % 2, height + height % 2  # the writer pads odd sizes to even
    frame_bytes = pad_w * pad_h * 3
    proc = subprocess.Popen(
        [ffmpeg_exe(), "-v", "error", "-i", str(video_path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        stdout=subprocess.PIPE,
    )
    out = []
    try:
        while True:
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                break
            frame = np.frombuffer(buf, np.uint8).reshape(pad_h, pad_w, 3)[:height, :width]
            out.append(psnr_u8(frame, reference))
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg could not decode {video_path}")
    return out


def film_stats(psnrs: list[float], drop_db: float = 1.0) -> tuple[float, float, float]:
    """(flicker %, last - best dB, best dB): flicker is the share of consecutive frame
    pairs where the later frame is more than drop_db worse than the earlier one."""
    if not psnrs:
        return math.nan, math.nan, math.nan
    drops = sum(1 for a, b in zip(psnrs, psnrs[1:]) if b < a - drop_db)
    flicker = 100.0 * drops / max(1, len(psnrs) - 1)
    best = max(psnrs)
    return flicker, psnrs[-1] - best, best


# ------------------------------------------------------------------ the job


def write_spec(image: Path, output: Path, seconds: float) -> Path:
    spec = {
        "image": str(image.resolve()),
        "output": str(output.resolve()),
        "model": {"kind": "hashgrid"},
        "train": {"color": "rgb", "max_seconds": seconds},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    path = output.parent / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_job(spec: Path, overrides: list[str], log: Path) -> float:
    """`imgfit-batch run SPEC --restart [--set ...]` in a subprocess; its wall seconds."""
    cmd = [sys.executable, "-m", "imgfit_batch", "run", str(spec), "--restart"]
    for item in overrides:
        cmd += ["--set", item]
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"the job failed (exit {proc.returncode}); see {log}")
    return wall


def bench_photo(path: Path, out_dir: Path, seconds: float, overrides: list[str], skip_film: bool) -> Result:
    photo = load_photo(path)
    h, w = photo.shape[:2]
    r = Result(photo=path.name, width=w, height=h)
    print(f"[{path.name}] {w}x{h} ({w * h / 1e6:.1f} MP): thumbnail baseline ...", file=sys.stderr)
    r.thumb_psnr, r.thumb_ssim = thumbnail_baseline(photo)
    print(
        f"[{path.name}] thumbnail {r.thumb_psnr:.2f} dB, SSIM {r.thumb_ssim:.4f}; training {seconds:g} s ...",
        file=sys.stderr,
    )

    output = out_dir / path.stem
    spec = write_spec(path, output, seconds)
    r.output = str(output)
    r.wall_seconds = run_job(spec, overrides, out_dir / f"{path.stem}.log")
    summary = json.loads((output / "summary.json").read_text())
    r.psnr = summary["psnr_db"] if summary["psnr_db"] is not None else math.inf
    r.ssim, r.steps, r.frames = summary["ssim"], summary["steps"], summary["frames"]
    r.train_seconds, r.peak_mb = summary["train_seconds"], summary["peak_memory_mb"]["host"]

    r.film_pct = 100.0 * summary["film_wait_seconds"] / max(summary["train_seconds"], 1e-9)
    if not skip_film:
        fw, fh = summary["video"]["width"], summary["video"]["height"]
        reference = frame_reference(photo, fw, fh)
        del photo
        r.frame_psnrs = [round(p, 3) for p in film_psnrs(output / "video.mp4", reference)]
        r.flicker_pct, r.last_vs_best_db, r.best_frame_psnr = film_stats(r.frame_psnrs)
        r.last_frame_psnr = r.frame_psnrs[-1]
        final = np.asarray(Image.open(output / "final.png").convert("RGB"))
        spec = json.loads((output / "spec.json").read_text())["spec"]["video"]
        shrunk_final = frame_reference(final, fw, fh)
        r.coded_final_psnr = psnr_u8(coded(shrunk_final, spec["crf"], spec["preset"], spec["fps"]), reference)
        # the same comparison without the codec: the filter alone
        model, _ = load_model(str(output))
        frame = render_image(model, w, h, fw, fh, torch.device("cpu")).numpy()
        r.uncoded_frame_psnr, r.uncoded_final_psnr = psnr_u8(frame, reference), psnr_u8(shrunk_final, reference)
    print(
        f"[{path.name}] ours {r.psnr:.2f} dB, SSIM {r.ssim:.4f}, {r.steps} steps, "
        f"flicker {r.flicker_pct:.1f} %, last-best {r.last_vs_best_db:+.2f} dB, last frame "
        f"{r.last_frame_psnr:.2f} dB vs final.png coded {r.coded_final_psnr:.2f} dB, film {r.film_pct:.1f} %",
        file=sys.stderr,
    )
    return r


# ------------------------------------------------------------------ report


def markdown_table(results: list[Result]) -> str:
    head = (
        (
            "| photo | MP | thumb PSNR | thumb SSIM | ours PSNR | ours SSIM | steps | train s | peak host MB "
            "| flicker % | last-best dB | last frame dB | final.png coded dB | last-coded dB "
            "| uncoded: frame dB | final.png dB | film % | " + " | ".join(results[0].checks()) + " |"
        )
        if results
        else "| (no photos) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        marks = ["PASS" if ok else "FAIL" for ok in r.checks().values()]
        lines.append(
            f"| {r.photo} | {r.megapixels:.1f} | {r.thumb_psnr:.2f} | {r.thumb_ssim:.4f} | {r.psnr:.2f} | "
            f"{r.ssim:.4f} | {r.steps} | {r.train_seconds:.0f} | {r.peak_mb:.0f} | {r.flicker_pct:.1f} | "
            f"{r.last_vs_best_db:+.2f} | {r.last_frame_psnr:.2f} | {r.coded_final_psnr:.2f} | "
            f"{r.last_frame_psnr - r.coded_final_psnr:+.2f} | {r.uncoded_frame_psnr:.2f} | "
            f"{r.uncoded_final_psnr:.2f} | "
            f"{r.film_pct:.1f} | " + " | ".join(marks) + " |"
        )
    return "\n".join(lines)


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, torch {torch.__version__}, load average {load}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for what is measured and how.",
    )
    ap.add_argument(
        "--photos",
        nargs="+",
        default=list(DEFAULT_PHOTOS),
        help="file names (searched under the photos) or paths; default: the documented set",
    )
    ap.add_argument(
        "--photos-dir", type=Path, help="use photos already here (searched recursively) instead of downloading"
    )
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("~/.cache/imgfit-photos").expanduser(),
        help="where the wallpaper packages are downloaded and unpacked (default: %(default)s)",
    )
    ap.add_argument("--seconds", type=float, default=300.0, help="train.max_seconds per photo (default: %(default)s)")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="extra spec override passed to imgfit-batch run (repeatable)",
    )
    ap.add_argument(
        "--out", type=Path, default=Path("runs/photos"), help="job outputs and results.json (default: %(default)s)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"check the script: the first photo downscaled to {QUICK_PIXELS / 1e6:g} MP, {QUICK_SECONDS:g} s",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help=f"seconds, for CI: a generated {SMOKE_SIZE[0]}x{SMOKE_SIZE[1]} photo (no download), "
        f"{SMOKE_SECONDS:g} s unless --seconds, outputs in a temporary folder unless --out",
    )
    ap.add_argument("--skip-film", action="store_true", help="do not decode the video (no flicker / last-vs-best)")
    args = ap.parse_args(argv)

    seconds = args.seconds
    if args.smoke:
        if args.out == ap.get_default("out"):
            args.out = Path(tempfile.mkdtemp(prefix="imgfit-photos-smoke-"))
        paths = [smoke_photo(args.out / "smoke")]
        seconds = SMOKE_SECONDS if args.seconds == ap.get_default("seconds") else args.seconds
    else:
        roots = [args.photos_dir.expanduser()] if args.photos_dir else [fetch_packages(args.cache_dir)]
        paths = [find_photo(name, roots) for name in args.photos]
    if args.quick:
        paths = [quick_photo(paths[0], args.out / "quick")]
        seconds = QUICK_SECONDS if args.seconds == ap.get_default("seconds") else args.seconds
    args.out.mkdir(parents=True, exist_ok=True)

    results = []
    for path in paths:
        results.append(bench_photo(path, args.out, seconds, args.overrides, args.skip_film))
        (args.out / "results.json").write_text(
            json.dumps(
                {
                    "seconds": seconds,
                    "overrides": args.overrides,
                    "machine": machine(),
                    "results": [asdict(r) | {"checks": r.checks()} for r in results],
                },
                indent=1,
            )
        )

    print(
        f"\nhashgrid, only kind, color rgb and max_seconds {seconds:g} set"
        f"{' plus ' + ' '.join(args.overrides) if args.overrides else ''}; {machine()}\n"
    )
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

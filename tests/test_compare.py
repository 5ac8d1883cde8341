"""`compare`: several jobs' films side by side in one labelled video, aligned by
fraction of training, through the bundled ffmpeg.

Two kinds of inputs: real job outputs (tiny jobs, one RGB and one gray, with
different frame counts), and coded outputs whose video frame i is a solid colour
that names i (red/blue level) and the input (green level), so every tile of every
output frame says exactly which input frame it shows and where it sits. The
expected geometry is computed here from the formula the command's help documents.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_error_line, cli_env, psnr, save_photo, skip_or_fail, tiny_spec, write_spec

from imgfit_batch import video
from imgfit_batch.outputs import Summary

DEADLINE = 120  # seconds for any subprocess here; only a hang gets near it
LABEL, MIN_COLUMN, GAP = 40, 200, 4  # as `compare --help` documents them


# ---------------------------------------------------------------- helpers


def level(i: int) -> int:
    """Red and blue of a coded input's frame i."""
    return 20 + 22 * i


def green(k: int) -> int:
    """Green of coded input k's frames."""
    return 40 + 30 * k


def coded_output(folder: Path, k: int, n: int, width: int, height: int, **summary) -> str:
    """A completed job's output as the job writes it (odd sizes padded to even for
    yuv420p, summary.json with the frame size), whose frame i is the solid colour
    (level(i), green(k), level(i))."""
    folder.mkdir(parents=True)
    frames = np.zeros((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i] = (level(i), green(k), level(i))
    pad = f"pad={width + width % 2}:{height + height % 2}:0:0"
    proc = subprocess.run(
        [
            video.ffmpeg_exe(),
            "-v",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{width}x{height}",
            "-r",
            "4",
            "-i",
            "-",
            "-vf",
            pad,
            "-vcodec",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-crf",
            "8",
            "-preset",
            "ultrafast",
            str(folder / "video.mp4"),
        ],
        input=frames.tobytes(),
        capture_output=True,
        timeout=DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    doc = {
        "status": "completed",
        "steps": 2 * n,
        "frames": n,
        "psnr_db": 20.0 + k,
        "model": "fourier",
        "image": "photos/cat.png",
        "width": width,
        "height": height,
        "color": "rgb",
        "video": {"width": width, "height": height, "fps": 4, "segments": 1},
        **summary,
    }
    (folder / "summary.json").write_text(json.dumps(doc))
    return str(folder)


def grid(sizes: list[tuple[int, int]], height: int | None = None) -> tuple[int, list[int], list[int]]:
    """(tile height, tile widths, column widths) by the help's formula for inputs of frame sizes `sizes`."""
    h = height if height is not None else min(480, min(s[1] for s in sizes))
    h -= h % 2
    widths = [max(2, 2 * math.floor(Fraction(w * h, ih) / 2 + Fraction(1, 2))) for w, ih in sizes]
    n = len(sizes)
    c = n if n <= 4 else math.ceil(math.sqrt(n))
    return h, widths, [max([MIN_COLUMN] + widths[col::c]) for col in range(c)]


def expected_size(sizes, height: int | None = None) -> tuple[int, list[int], int, int]:
    """(h, tile widths, W, H) by the help's formula."""
    h, widths, column_widths = grid(sizes, height)
    rows = math.ceil(len(sizes) / len(column_widths))
    return h, widths, sum(column_widths) + GAP * (len(column_widths) - 1), rows * (h + LABEL) + GAP * (rows - 1)


def strip_box(sizes, k: int, height: int | None = None) -> tuple[int, int, int, int]:
    """(x, y, w, h) of input k's label strip: its column's width, atop its cell; filled row by row."""
    h, _, column_widths = grid(sizes, height)
    row, col = divmod(k, len(column_widths))
    return sum(column_widths[:col]) + GAP * col, row * (LABEL + h + GAP), column_widths[col], LABEL


def tile_box(sizes, k: int, height: int | None = None) -> tuple[int, int, int, int]:
    """(x, y, w, h) of input k's tile: centred in its column, under its label strip."""
    h, widths, _ = grid(sizes, height)
    x, y, column_width, _ = strip_box(sizes, k, height)
    return x + (column_width - widths[k]) // 2, y + LABEL, widths[k], h


def crop(frame: np.ndarray, box) -> np.ndarray:
    x, y, w, h = box
    return frame[y : y + h, x : x + w]


def shown(j: int, n_out: int, n_in: int) -> int:
    """Which input frame output frame j should show: the same fraction of training, rounded halves up."""
    if n_out == 1:
        return n_in - 1
    return math.floor(Fraction(j * (n_in - 1), n_out - 1) + Fraction(1, 2))


def decode(path, width: int, height: int) -> np.ndarray:
    return video.decode_frames(str(path), width, height, 3).astype(int)


def wrote(stdout: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"wrote \S+ \((\d+)x(\d+), (\d+) frames\)\n", stdout)
    assert m, stdout
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


# ---------------------------------------------------------------- real jobs


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> Path:
    """Two tiny real jobs on 32x24 photos, run side by side: rgb with 6 frames, gray with 18.
    The gray one carries the "task" record a sweep's task writes."""
    root = tmp_path_factory.mktemp("jobs")
    save_photo(root / "a.png", 32, 24, seed=0)
    save_photo(root / "b.png", 32, 24, seed=1)
    specs = [
        tiny_spec(str(root / "a.png"), str(root / "rgb")),
        tiny_spec(
            str(root / "b.png"), str(root / "gray"), train={"color": "gray", "epochs": 3}, video={"every_n_steps": 1}
        ),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "imgfit_batch", "run", write_spec(root / f"s{i}.yaml", s)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            start_new_session=True,
        )
        for i, s in enumerate(specs)
    ]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=DEADLINE)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    summary = json.loads((root / "gray" / "summary.json").read_text())
    summary["task"] = {
        "index": 1,
        "count": 2,
        "image": str(root / "b.png"),
        "label": "color=gray,every_n_steps=1",
        "overrides": {"train.color": "gray", "video.every_n_steps": 1},
    }
    (root / "gray" / "summary.json").write_text(json.dumps(summary))
    return root


def test_compare_of_real_jobs_has_the_documented_size_every_frame_and_labels(jobs, cli):
    rgb, gray = (json.loads((jobs / name / "summary.json").read_text()) for name in ("rgb", "gray"))
    assert (rgb["frames"], gray["frames"]) == (6, 18)
    out = jobs / "cmp" / "compare.mp4"

    result = cli("compare", str(jobs / "rgb"), str(jobs / "gray"), "-o", str(out))

    assert result.exit_code == 0, result.stderr
    sizes = [(32, 24), (32, 24)]
    _, _, width, height = expected_size(sizes)
    assert wrote(result.stdout) == (width, height, 18)  # N: the most frames any input has
    assert (width, height) == (2 * MIN_COLUMN + GAP, 24 + LABEL)
    assert video.count_frames(str(out)) == 18
    probe = subprocess.run(
        [video.ffmpeg_exe(), "-hide_banner", "-i", str(out)], capture_output=True, text=True, timeout=DEADLINE
    )
    assert re.search(rf"Video: h264.*yuv420p.*, {width}x{height}[ ,]", probe.stderr), probe.stderr
    frames = decode(out, width, height)
    assert len(frames) == 18
    for k, name in enumerate(("rgb", "gray")):
        source = decode(jobs / name / "video.mp4", 32, 24)
        n = len(source)
        for j in (0, 17):  # the first frames, then the final fields, side by side
            tile = crop(frames[j], tile_box(sizes, k))
            want = shown(j, 18, n)
            assert psnr(tile, source[want]) > 35, (name, j)
            assert psnr(tile, source[want]) > psnr(tile, source[n - 1 - want]) + 3, (name, j)
        if name == "gray":  # gray films decode to gray tiles
            tile = crop(frames[9], tile_box(sizes, k))
            assert np.abs(tile[..., 0] - tile[..., 1]).max() <= 4
        strip = crop(frames[0], strip_box(sizes, k))
        assert (strip.min(-1) > 150).sum() > 100, "the label strip carries text"
    assert not list((jobs / "cmp").glob(".tmp*")), "nothing left beside the published video"


def test_labels_name_the_kind_settings_and_psnr(jobs, tmp_path):
    from imgfit_batch.comparing import Input, label_lines

    def summary(name: str) -> dict:
        return json.loads((jobs / name / "summary.json").read_text())

    inputs = [
        Input(str(jobs / "rgb"), Summary.model_validate(summary("rgb")), "", 6, 32, 24),
        Input(str(jobs / "gray"), Summary.model_validate(summary("gray")), "", 18, 32, 24),
    ]
    (rgb_kind, rgb_settings), (gray_kind, gray_settings) = label_lines(inputs)
    assert rgb_kind == f"fourier  PSNR {summary('rgb')['psnr_db']:.2f} dB"
    assert gray_kind == f"fourier  PSNR {summary('gray')['psnr_db']:.2f} dB"
    assert rgb_settings.endswith("rgb"), "without a task record: the output's folder name"
    assert gray_settings.endswith("color=gray,every_n_steps=1"), "a sweep task's label"
    assert rgb_settings.startswith("a: ") and gray_settings.startswith("b: "), "different images: their stems"

    same = {**summary("gray"), "image": summary("rgb")["image"], "model": "hashgrid", "psnr_db": 31.234}
    same["task"] = {**same["task"], "image": summary("rgb")["image"], "label": None, "overrides": {}}
    lines = label_lines([inputs[0], Input("s3://b/study/x/", Summary.model_validate(same), "", 18, 32, 24)])
    assert lines[1] == ("hashgrid  PSNR 31.23 dB", "x"), "a task without a sweep: the folder's name"
    assert lines[0][1] == "rgb", "one image: no stem"

    exact = {**same, "psnr_db": None, "exact": True}  # final.png equals the input (summary.json's way)
    assert label_lines([Input("x", Summary.model_validate(exact), "", 18, 32, 24)])[0][0] == "hashgrid  PSNR exact"


# ---------------------------------------------------------------- alignment, on coded inputs


CODED = [(32, 24, 5), (31, 24, 9), (64, 48, 2), (40, 24, 1), (24, 24, 7)]  # width, height, frames


@pytest.fixture(scope="module")
def coded(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("coded")
    return [coded_output(root / f"job{k}", k, n, w, h) for k, (w, h, n) in enumerate(CODED)]


@pytest.mark.parametrize("n_out", [None, 6])
def test_every_tile_shows_the_same_fraction_of_training(coded, tmp_path, cli, n_out):
    """5 inputs of 1..9 frames in a 3x2 grid: every tile of every output frame shows the
    input frame at the output frame's fraction of training, in its own place, with the
    encoder's padding of odd sizes cropped off and a larger input scaled down."""
    out = tmp_path / "compare.mp4"
    extra = [] if n_out is None else ["--frames", str(n_out)]

    result = cli("compare", *coded, "-o", str(out), *extra)

    assert result.exit_code == 0, result.stderr
    n_out = n_out or max(n for _, _, n in CODED)
    sizes = [(w, h) for w, h, _ in CODED]
    _, widths, width, height = expected_size(sizes)
    assert widths == [32, 32, 32, 40, 24]
    assert wrote(result.stdout) == (width, height, n_out)
    assert (width, height) == (3 * MIN_COLUMN + 2 * GAP, 2 * (24 + LABEL) + GAP)
    frames = decode(out, width, height)
    assert len(frames) == n_out == video.count_frames(str(out))
    for j, frame in enumerate(frames):
        for k, (_, _, n) in enumerate(CODED):
            tile = crop(frame, tile_box(sizes, k))
            want = shown(j, n_out, n)
            colour = np.array([level(want), green(k), level(want)])
            assert np.abs(tile.mean((0, 1)) - colour).max() <= 8, f"output frame {j}, input {k}: not its frame {want}"
            assert np.abs(tile[:, :-2] - colour).max() <= 16, f"output frame {j}, input {k}: not a clean tile"
            # input 1's odd width: the encoder's padding is cropped off (its black column would be
            # 60 off in green); yuv420p's chroma shared with it bleeds a little into the last column
            assert np.abs(tile[..., 1] - green(k)).max() <= 20, f"output frame {j}, input {k}: a dark edge"
        assert (crop(frame, strip_box(sizes, 4)).min(-1) > 150).sum() > 100, "the 2nd row has its labels"


def test_compare_reads_and_writes_s3(coded, s3, cli):
    for k in (0, 1):
        for name in ("video.mp4", "summary.json"):
            s3.put(f"study/job{k}/{name}", Path(coded[k], name).read_bytes())

    result = cli("compare", s3.uri("study/job0"), s3.uri("study/job1/"), "-o", s3.uri("study/compare.mp4"))

    assert result.exit_code == 0, result.stderr
    sizes = [(w, h) for w, h, _ in CODED[:2]]
    _, _, width, height = expected_size(sizes)
    assert wrote(result.stdout) == (width, height, 9)
    local = Path(coded[0]).parent / "from-s3.mp4"
    local.write_bytes(s3.get("study/compare.mp4"))
    frames = decode(local, width, height)
    assert len(frames) == 9
    last = crop(frames[-1], tile_box(sizes, 0))
    assert np.abs(last - np.array([level(4), green(0), level(4)])).max() <= 8


# ---------------------------------------------------------------- refusals


def test_bad_usage_is_exit_2_in_one_line(coded, tmp_path, cli):
    out = str(tmp_path / "c.mp4")
    cases = [
        ((coded[0], "-o", out), "2 to 16"),
        ((*[coded[0]] * 17, "-o", out), "got 17"),
        ((coded[0], coded[1], "-o", str(tmp_path / "c.avi")), ".mp4"),
        ((coded[0], coded[1], "-o", "ftp://host/c.mp4"), "ftp://"),
        ((coded[0], "s3:/bucket/job", "-o", out), "s3://bucket/job"),
        ((coded[0], coded[1], "-o", str(Path(coded[1], "video.mp4"))), "would overwrite"),
    ]
    for args, needle in cases:
        result = cli("compare", *args)
        assert result.exit_code == 2, (args, result.stderr)
        assert_one_error_line(result.stderr, needle)
    assert not os.path.exists(out)
    assert Path(coded[1], "video.mp4").stat().st_size > 0


def test_an_output_that_is_not_a_completed_job_is_exit_3_naming_it(jobs, coded, tmp_path, cli):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(jobs / "rgb", unfinished)
    (unfinished / "summary.json").unlink()  # as a killed job leaves it: spec.json and checkpoints
    garbage = tmp_path / "garbage"
    shutil.copytree(coded[0], garbage)
    (garbage / "video.mp4").write_bytes(b"not a video at all" * 100)
    short = tmp_path / "short"
    shutil.copytree(coded[0], short)
    summary = json.loads((short / "summary.json").read_text())
    (short / "summary.json").write_text(json.dumps({**summary, "frames": summary["frames"] + 3}))
    foreign = tmp_path / "foreign"
    shutil.copytree(coded[0], foreign)
    (foreign / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    novideo = tmp_path / "novideo"
    shutil.copytree(coded[0], novideo)
    (novideo / "video.mp4").unlink()
    out = tmp_path / "c.mp4"
    cases = [
        (unfinished, "interrupted"),
        (tmp_path / "missing", "no imgfit-batch job"),
        (garbage, "not a video"),
        (short, "decodes to 5 frames, its summary.json says 8"),
        (novideo, "not found"),
        (foreign, "no imgfit-batch job"),
    ]
    for bad, needle in cases:
        result = cli("compare", coded[1], str(bad), "-o", str(out))
        assert result.exit_code == 3, (bad, result.stderr)
        assert_one_error_line(result.stderr, str(bad), needle)
        assert not out.exists()


def test_a_full_disk_under_the_encoder_is_exit_69_and_publishes_nothing(coded, tmp_path):
    """-o on a real tmpfs filled to the brim: the video is made beside it, so ffmpeg meets the full disk."""
    full = tmp_path / "full"
    full.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        skip_or_fail("no mount command: a real full disk needs a tmpfs mount")
    if mounted.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        with open(full / "filler", "wb", buffering=0) as fh:
            with pytest.raises(OSError, match="No space left"):
                while True:
                    fh.write(b"\0" * 4096)
        out = full / "c.mp4"
        proc = subprocess.run(
            [sys.executable, "-m", "imgfit_batch", "compare", coded[0], coded[1], "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            env=cli_env(),
        )
        assert proc.returncode == 69, proc.stderr
        assert_one_error_line(proc.stderr, "ffmpeg", "No space left on device")
        assert os.listdir(full) == ["filler"], "nothing published, nothing left behind"
    finally:
        subprocess.run(["umount", "-l", str(full)], capture_output=True, timeout=30)


def test_a_stop_signal_ends_compare_with_75_and_leaves_nothing(coded, tmp_path):
    """SIGTERM while a long video is being made (large tiles, the most frames: far longer than
    the deadline): every ffmpeg is killed at once, exit 75, no file at -o, no temporary folder."""
    out = tmp_path / "c.mp4"
    args = ["compare", coded[0], coded[1], "-o", str(out), "--frames", "100000", "--height", "1080"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgfit_batch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while not list(tmp_path.glob(".tmp-compare-*/compare.mp4")):  # the encoder is writing
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the encoder never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 75, err
    assert_one_error_line(err, "SIGTERM", "nothing was written")
    assert os.listdir(tmp_path) == []


def test_a_label_too_long_for_its_tile_keeps_its_head_and_its_tail():
    from PIL import Image, ImageDraw

    from imgfit_batch.comparing import _fit, _font

    draw, font = ImageDraw.Draw(Image.new("RGB", (10, 10))), _font(14)
    label = "kind=fourier,fourier_order=16,hidden_size=128,num_hidden_layers=8,max_seconds=30"
    short = _fit(draw, label, font, 250)
    assert draw.textlength(short, font=font) <= 250 and "..." in short
    head, tail = short.split("...")
    assert label.startswith(head) and label.endswith(tail) and head.startswith("kind=four")
    assert tail.endswith("max_seconds=30"), "the sweep's last field tells two such tiles apart"
    assert _fit(draw, "kind=siren", font, 250) == "kind=siren"

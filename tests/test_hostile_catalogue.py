"""The catalogue of hostile input: one table, every command. Each case builds its
input (a spec, an image, a location, a link, a device, arguments), runs the command
through the CLI's one exit path (cli.main, in-process: the suite stays fast) under a
deadline (SIGALRM: a hang fails the case, it does not hang the suite), and checks
the contract's shape: the documented exit code, exactly one stderr line of at most
1000 characters, `error: ` first, no traceback, no secret, the words that say what
is wrong. What each refusal looks like is docs/resuming.md's "Faults and hostile input"."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import struct
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import assert_one_error_line, cli_env, save_photo, tiny_spec, write_spec
from PIL import Image

from imgfit_batch.cli import MAX_LINE

pytestmark = pytest.mark.slow

SECRET = "secretpw"
URL = f"https://user:{SECRET}@host/x"
DEADLINE = 60  # seconds a case may take: generous, so only a hang trips it


@dataclass
class World:
    root: Path
    photo: str  # an 8x8 PNG
    job: str  # a completed job's output (the session's reference run)

    def spec(self, name: str = "spec", image=None, output=None, **sections) -> str:
        spec = tiny_spec(
            self.photo if image is None else image,
            str(self.root / "out" / name) if output is None else output,
            train={"epochs": 1},
        )
        for key, value in sections.items():
            spec[key] = (
                {**spec.get(key, {}), **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
            )
        return write_spec(self.root / f"{name}.yaml", spec)

    def text(self, name: str, text: str) -> str:
        (self.root / name).write_text(text)
        return str(self.root / name)

    def data(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return str(self.root / name)

    def sparse(self, name: str, head: bytes, size: int) -> str:
        path = self.root / name
        path.write_bytes(head)
        with open(path, "r+b") as fh:
            fh.truncate(size)
        return str(path)

    def fifo(self, name: str) -> str:
        path = self.root / name
        if not path.exists():
            os.mkfifo(path)
        return str(path)

    def link(self, name: str, target: str) -> str:
        path = self.root / name
        if not path.is_symlink():
            os.symlink(target, path)
        return str(path)

    def folder(self, name: str, files: dict[str, bytes]) -> str:
        path = self.root / "jobs" / name
        path.mkdir(parents=True, exist_ok=True)
        for file, data in files.items():
            (path / file).write_bytes(data)
        return str(path)

    def job_copy(self, name: str) -> Path:
        folder = self.root / "jobs" / name
        if not folder.exists():
            shutil.copytree(self.job, folder)
        return folder

    def linked_out(self, name: str, file: str) -> str:
        """A copy of the job whose `file` is a link to the same file of a job outside it."""
        folder = self.job_copy(name)
        elsewhere = self.job_copy(name + "-elsewhere")
        if not (folder / file).is_symlink():
            (folder / file).unlink()
            os.symlink(elsewhere / file, folder / file)
        return str(folder)


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def gif_animated() -> bytes:
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 255)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def tiff_nan() -> bytes:
    a = np.ones((8, 8), np.float32)
    a[2, 3] = np.nan
    buf = io.BytesIO()
    Image.fromarray(a, mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def alias_bomb() -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 6)]
    return "\n".join(lines) + "\nimage: *a5\noutput: out\n"


def sweep(w: World, name: str, values) -> str:
    return w.spec(name, sweep=values)


# (id, command line builder, exit code, words the line must hold)
CASES = [
    # ---- specs
    ("spec-missing", lambda w: ["validate", str(w.root / "nope.yaml")], 3, ["not found"]),
    ("spec-folder", lambda w: ["validate", str(w.root)], 3, ["folder"]),
    ("spec-empty", lambda w: ["validate", w.text("empty.yaml", "")], 2, []),
    ("spec-binary", lambda w: ["validate", w.data("bin.yaml", b"\xff\xfe\x00garbage\x80")], 2, []),
    ("spec-over-1mib", lambda w: ["validate", w.text("big.yaml", "# " + "x" * (1 << 20) + "\nimage: a\n")], 2, ["MiB"]),
    ("spec-alias-bomb", lambda w: ["validate", w.text("bomb.yaml", alias_bomb())], 2, ["alias"]),
    ("spec-a-list", lambda w: ["validate", w.text("list.yaml", "- image: a.png\n")], 2, []),
    ("spec-bad-yaml", lambda w: ["validate", w.text("tab.yaml", "image: a\n\toutput: [\n")], 2, []),
    ("spec-dev-zero", lambda w: ["validate", "/dev/zero"], 3, ["not a regular file"]),
    ("spec-fifo", lambda w: ["validate", w.fifo("spec.fifo")], 3, ["FIFO"]),
    ("spec-stdin-empty", lambda w: ["validate", "-"], 2, []),
    ("spec-unknown-key-secret", lambda w: ["validate", w.spec("unk", extra={URL: 1})], 2, ["extra"]),
    (
        "spec-endpoint-secret",
        lambda w: ["validate", w.spec("ep", storage={"endpoint_url": f"ftp://user:{SECRET}@h"})],
        2,
        ["endpoint_url"],
    ),
    ("set-no-equals", lambda w: ["validate", w.spec("s1"), "--set", "train.lr"], 2, ["--set"]),
    ("set-unknown-field", lambda w: ["validate", w.spec("s2"), "--set", "train.lrr=1"], 2, ["train.lrr"]),
    ("set-negative-lr", lambda w: ["validate", w.spec("s3"), "--set", "train.lr=-1"], 2, ["train.lr"]),
    ("set-nan-lr", lambda w: ["validate", w.spec("s4"), "--set", "train.lr=.nan"], 2, ["train.lr"]),
    ("set-huge-epochs", lambda w: ["validate", w.spec("s5"), "--set", "train.epochs=1e400"], 2, ["train.epochs"]),
    ("set-words-for-number", lambda w: ["validate", w.spec("s6"), "--set", "train.epochs=many"], 2, ["train.epochs"]),
    (
        "set-10kb-secret",
        lambda w: ["validate", w.spec("s7"), "--set", f"train.lr={'9' * 10_000}{URL}"],
        2,
        ["train.lr"],
    ),
    ("model-kind-bogus", lambda w: ["validate", w.spec("s8"), "--set", "model.kind=resnet"], 2, ["model"]),
    ("device-tpu", lambda w: ["validate", w.spec("s9"), "--set", "train.device=tpu"], 2, ["train.device"]),
    ("image-http", lambda w: ["validate", w.spec("u1", image="http://example.com/a.png")], 2, ["not supported"]),
    ("image-bucket-only", lambda w: ["validate", w.spec("u2", image="s3://bkt")], 2, ["image"]),
    ("image-nul", lambda w: ["validate", w.spec("u3", image=w.photo + "\x00.png")], 2, ["NUL"]),
    ("image-empty-list", lambda w: ["validate", w.spec("u4", image=[])], 2, ["image"]),
    ("output-no-bucket", lambda w: ["validate", w.spec("u5", output="s3://")], 2, ["no bucket"]),
    ("output-gs-no-bucket", lambda w: ["validate", w.spec("u6", output="gs:///x")], 2, ["no bucket"]),
    (
        "output-holds-input",
        lambda w: ["validate", w.spec("u7", output=str(Path(w.photo).parent))],
        2,
        ["contains the input"],
    ),
    ("output-secret-scheme", lambda w: ["validate", w.spec("u8", output=f"ftp://user:{SECRET}@h/x")], 2, ["output"]),
    # ---- sweeps
    (
        "sweep-number-and-text",
        lambda w: ["plan", sweep(w, "w1", {"train.seed": [1, "1"]})],
        2,
        ["validate to the same value"],
    ),
    ("sweep-empty-list", lambda w: ["plan", sweep(w, "w2", {"train.lr": []})], 2, ["non-empty list"]),
    ("sweep-unknown-field", lambda w: ["plan", sweep(w, "w3", {"train.lrr": [1]})], 2, ["unknown field"]),
    ("sweep-image", lambda w: ["plan", sweep(w, "w4", {"image": ["a.png"]})], 2, ["cannot be swept"]),
    (
        "sweep-too-many",
        lambda w: [
            "plan",
            sweep(w, "w5", {"train.seed": list(range(101)), "train.lr": [0.1 * i for i in range(1, 101)]}),
        ],
        2,
        ["at most 10000"],
    ),
    ("sweep-bad-value", lambda w: ["plan", sweep(w, "w6", {"train.lr": [-1]})], 2, ["train.lr"]),
    ("sweep-listed-twice", lambda w: ["plan", sweep(w, "w7", {"train.lr": [0.1, 0.1]})], 2, ["listed twice"]),
    ("sweep-not-a-mapping", lambda w: ["plan", sweep(w, "w8", [1, 2])], 2, ["sweep"]),
    (
        "sweep-secret-value",
        lambda w: ["plan", sweep(w, "w9", {"storage.endpoint_url": [URL, "ftp://x"]})],
        2,
        ["endpoint_url"],
    ),
    # ---- images
    ("image-missing", lambda w: ["run", w.spec("i1", image=str(w.root / "nope.png"))], 3, ["not found"]),
    ("image-empty", lambda w: ["run", w.spec("i2", image=w.data("empty.png", b""))], 3, ["empty"]),
    (
        "image-truncated",
        lambda w: ["run", w.spec("i3", image=w.data("trunc.png", png(16, 16)[:60]))],
        3,
        ["corrupt or truncated"],
    ),
    ("image-text", lambda w: ["run", w.spec("i4", image=w.text("text.png", "hello"))], 3, ["not an image"]),
    ("image-folder", lambda w: ["run", w.spec("i5", image=str(w.root / "jobs"))], 3, ["folder"]),
    ("image-fifo", lambda w: ["run", w.spec("i6", image=w.fifo("image.fifo"))], 3, ["FIFO"]),
    ("image-dev-zero", lambda w: ["run", w.spec("i7", image="/dev/zero")], 3, ["not a regular file"]),
    (
        "image-link-to-dev-zero",
        lambda w: ["run", w.spec("i8", image=w.link("zero.png", "/dev/zero"))],
        3,
        ["not a regular file"],
    ),
    ("image-over-max-pixels", lambda w: ["run", w.spec("i9", input={"max_pixels": 10})], 3, ["input.max_pixels"]),
    (
        "image-junk-after-jpeg",
        lambda w: ["run", w.spec("i10", image=w.sparse("junk.jpg", jpeg(), 17 << 20))],
        3,
        ["32x32 JPEG", "bytes"],
    ),
    (
        "image-100gb-sparse",
        lambda w: ["run", w.spec("i11", image=w.sparse("huge.png", png(8, 8), 100 << 30))],
        3,
        ["is over the limit"],
    ),
    ("image-over-max-bytes", lambda w: ["run", w.spec("i12", input={"max_bytes": 10})], 3, ["input.max_bytes"]),
    (
        "image-animated-gif",
        lambda w: ["run", w.spec("i13", image=w.data("anim.gif", gif_animated()))],
        3,
        ["animated GIF"],
    ),
    (
        "image-bomb-header",
        lambda w: ["run", w.spec("i14", image=w.data("bomb.png", png_claiming(60000, 60000)))],
        3,
        ["input.max_pixels"],
    ),
    (
        "image-nan-pixels",
        lambda w: ["run", w.spec("i15", image=w.data("nan.tif", tiff_nan()), train={"color": "gray", "epochs": 1})],
        3,
        ["NaN"],
    ),
    # ---- outputs, devices, indices
    ("output-under-a-file", lambda w: ["run", w.spec("o1", output=w.photo + "/out")], 3, []),
    ("output-dev-null", lambda w: ["run", w.spec("o2", output="/dev/null/out")], 3, []),
    ("device-cuda-absent", lambda w: ["run", w.spec("o3"), "--set", "train.device=cuda"], 69, ["CUDA"]),
    ("index-out-of-range", lambda w: ["run", w.spec("o4"), "--index", "5"], 2, ["--index"]),
    ("index-secret", lambda w: ["run", w.spec("o5"), "--index", URL], 2, ["--index"]),
    # ---- the reading commands
    ("status-missing", lambda w: ["status", str(w.root / "nothing")], 3, ["no imgfit-batch job"]),
    (
        "status-garbage-summary",
        lambda w: ["status", w.folder("g", {"summary.json": b"\x00{"})],
        3,
        ["no imgfit-batch job"],
    ),
    ("status-link-out", lambda w: ["status", w.linked_out("st", "summary.json")], 3, ["outside"]),
    ("status-10kb-secret", lambda w: ["status", "s3://" + "b" * 10_000 + URL], 2, []),
    ("report-empty-folder", lambda w: ["report", w.folder("empty", {})], 3, ["no imgfit-batch job"]),
    ("report-gs-no-credentials", lambda w: ["report", "gs://bkt/x"], 3, ["no Google credentials"]),
    ("report-bogus-option", lambda w: ["report", w.job, f"--x-{URL}"], 2, ["No such option"]),
    (
        "render-garbage-pt",
        lambda w: ["render", w.data("garbage.pt", b"not a model"), "-o", str(w.root / "r.png")],
        3,
        ["not a model.pt"],
    ),
    ("render-no-job", lambda w: ["render", str(w.root / "jobs"), "-o", str(w.root / "r.png")], 3, ["no model.pt"]),
    (
        "render-link-out",
        lambda w: ["render", w.linked_out("rn", "model.pt"), "-o", str(w.root / "r.png")],
        3,
        ["outside"],
    ),
    ("render-scale-zero", lambda w: ["render", w.job, "--scale", "0", "-o", str(w.root / "r.png")], 2, ["--scale"]),
    (
        "render-too-large",
        lambda w: ["render", w.job, "--width", "1000000000", "-o", str(w.root / "r.png")],
        2,
        ["too large"],
    ),
    ("render-out-bucket-only", lambda w: ["render", w.job, "-o", "s3://bkt/"], 2, ["--output"]),
    (
        "render-device-bogus",
        lambda w: ["render", w.job, "--device", "tpu", "-o", str(w.root / "r.png")],
        2,
        ["--device"],
    ),
    ("compare-one-input", lambda w: ["compare", w.job, "-o", str(w.root / "c.mp4")], 2, []),
    ("compare-not-mp4", lambda w: ["compare", w.job, str(w.job_copy("c2")), "-o", str(w.root / "c.avi")], 2, [".mp4"]),
    ("compare-17-inputs", lambda w: ["compare", *[w.job] * 17, "-o", str(w.root / "c.mp4")], 2, []),
    (
        "compare-missing-input",
        lambda w: ["compare", w.job, str(w.root / "nothing"), "-o", str(w.root / "c.mp4")],
        3,
        [],
    ),
    (
        "compare-video-link-out",
        lambda w: ["compare", w.job, w.linked_out("cv", "video.mp4"), "-o", str(w.root / "c.mp4")],
        3,
        ["outside"],
    ),
    (
        "compare-frames-zero",
        lambda w: ["compare", w.job, w.job, "-o", str(w.root / "c.mp4"), "--frames", "0"],
        2,
        ["--frames"],
    ),
    ("schema-extra-argument", lambda w: ["schema", URL], 2, ["unexpected extra argument"]),
    ("unknown-command-10kb", lambda w: ["x" * 10_000 + URL], 2, ["No such command"]),
]


@pytest.fixture(scope="module")
def world(reference, tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("hostile")
    photo = root / "photo.png"
    save_photo(photo, 8, 8)
    (root / "jobs").mkdir()
    return World(root, str(photo), reference.output)


class Hung(Exception):
    pass


COMMANDS = ("run", "validate", "plan", "report", "compare", "render", "status")


def test_the_catalogue_has_at_least_60_cases_across_every_command(world):
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
    reached = {build(world)[0] for _, build, _, _ in CASES}
    assert set(COMMANDS) <= reached, set(COMMANDS) - reached


def _param(case):
    name = case[0]
    marks = (
        pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
        if name == "device-cuda-absent"
        else ()
    )
    return pytest.param(*case, id=name, marks=marks)


@pytest.mark.parametrize("name,build,code,needles", [_param(c) for c in CASES])
def test_hostile_input_ends_in_one_clean_line_and_its_exit_code(cli, world, monkeypatch, name, build, code, needles):
    monkeypatch.chdir(world.root)
    args = build(world)
    assert args, "the case built its command line"

    def hung(signum, frame):
        raise Hung(f"{name}: still running after {DEADLINE}s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(DEADLINE)
    try:
        result = cli(*args, stdin="" if "-" in args else None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert "Hung" not in result.stderr, f"{name}: a hang"
    assert result.exit_code == code, f"{name}: exit {result.exit_code}, stderr: {result.stderr[:2000]}"
    assert len(lines) == 1, f"{name}: {len(lines)} stderr lines: {result.stderr[:3000]}"
    line = lines[0]
    assert line.startswith("error: ") and len(line) <= MAX_LINE, (len(line), line[:200])
    assert SECRET not in result.stderr and SECRET not in result.stdout, "a secret was printed"
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"


# ================================================================ issue 28, classes 3, 4 and 6
# Borrowed outputs (3), hand-edited numbers (4) and records that describe their file (6),
# through the real CLI in subprocesses, on every store each applies to: a folder, S3 (moto),
# GCS (gcp-storage-emulator) and Azure (Azurite), conftest's `bucket`; where what is read
# matters, the fault proxy in front of the store logs it.

HUGE = int("9" * 400)  # a 400-digit integer: no float holds it
PUBLISHED = ("summary.json", "spec.json", "video.mp4", "loss.csv", "final.png", "model.pt", "progress.png")


def _cli(*args: str, **kwargs):
    from conftest import run_cli

    return run_cli(*args, timeout=300, **kwargs)


def _no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr and "OverflowError" not in proc.stderr, proc.stderr[-3000:]


def _copy_job(bucket, reference, key: str, **replace) -> str:
    """The reference job's published files at bucket/key (a job moved whole is still its own
    record), with `replace` (file name with _ for . -> bytes, or None to leave it out)."""
    for name in PUBLISHED:
        data = replace.get(name.replace(".", "_"), Path(reference.output, name).read_bytes())
        if data is not None:
            bucket.put(f"{key}/{name}", data)
    return bucket.uri(key)


def _edited(reference, name: str, **fields) -> bytes:
    import json

    doc = json.loads(Path(reference.output, name).read_text())
    doc.update(fields)
    return json.dumps(doc).encode()


def _spec_file(tmp_path, reference, output: str, name: str = "spec") -> str:
    return write_spec(tmp_path / f"{name}.yaml", reference.spec_for(output))


def _status(output: str) -> tuple[dict, object]:
    import json

    proc = _cli("status", output, "--json")
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc


def _report_rows(bucket, key: str) -> tuple[dict, object]:
    import csv

    proc = _cli("report", bucket.uri(key))
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(bucket.get(f"{key}/results.csv").decode())))
    return {row["folder"]: row for row in rows}, proc


# ---------------------------------------------------------------- 3: a borrowed result


def test_a_summary_json_alone_is_not_a_completed_job_on_any_store(bucket, reference, tmp_path):
    """Copied there or left by something else: run refuses it (exit 3, one line naming what is
    there and --restart) and writes nothing; status and report show it as unknown."""
    from conftest import assert_one_error_line

    output = _copy_job(bucket, reference, "study/borrowed", **{n.replace(".", "_"): None for n in PUBLISHED[1:]})
    before = bucket.keys()
    proc = _cli("run", _spec_file(tmp_path, reference, output))
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr
    assert_one_error_line(
        proc.stderr, "summary.json says completed", "no spec.json", "--restart", "there: summary.json"
    )
    assert bucket.keys() == before, "a refused run writes nothing"

    status, _ = _status(output)
    assert status["state"] == "unknown" and "no spec.json" in status["why"], status
    rows, proc = _report_rows(bucket, "study")
    assert rows["borrowed"]["status"] == "unknown" and rows["borrowed"]["steps"] == "", rows
    warnings = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "showing the task as unknown" in warnings[0], proc.stderr


BORROWED = [
    # (id, what the output holds instead of the job's own record, words of run's refusal)
    ("video-missing", lambda r: {"video_mp4": None}, "its video.mp4 is missing"),
    (
        "model-truncated",
        lambda r: {"model_pt": Path(r.output, "model.pt").read_bytes()[:100]},
        "its model.pt is 100 bytes",
    ),
    (
        "spec-fingerprint-forged",
        lambda r: {"spec_json": _edited(r, "spec.json", fingerprint="0" * 16)},
        "does not hold the result fields",
    ),
    (
        "summary-names-a-foreign-file",
        lambda r: {"summary_json": _edited(r, "summary.json", files={"../../etc/passwd": 1})},
        "names files a job does not publish",
    ),
]


@pytest.mark.parametrize("name,replace,words", BORROWED, ids=[b[0] for b in BORROWED])
def test_a_completed_summary_its_own_record_does_not_back_is_refused_and_restart_runs_it(
    reference, tmp_path, name, replace, words
):
    from conftest import _local_bucket, assert_one_error_line

    bucket = _local_bucket(tmp_path)
    output = _copy_job(bucket, reference, "out", **replace(reference))
    spec = _spec_file(tmp_path, reference, output)
    proc = _cli("run", spec)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr
    assert_one_error_line(proc.stderr, words, "--restart")
    status, _ = _status(output)
    assert status["state"] == "unknown" and words in status["why"], status
    if name == "video-missing":  # the way out the line names: --restart discards it and runs the job
        proc = _cli("run", spec, "--restart")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert _status(output)[0]["state"] == "completed"


def test_a_job_moved_whole_is_still_complete_and_run_does_nothing(bucket, reference, tmp_path):
    output = _copy_job(bucket, reference, "moved")
    before = {k: bucket.get(k) for k in bucket.keys()}
    proc = _cli("run", _spec_file(tmp_path, reference, output))
    assert proc.returncode == 0 and "already complete" in proc.stdout, proc.stderr
    assert {k: bucket.get(k) for k in bucket.keys()} == before
    assert _status(output)[0]["state"] == "completed"


# ---------------------------------------------------------------- 4: hand-edited numbers


def test_a_400_digit_number_in_summary_and_spec_reads_as_absent_in_every_command(bucket, reference, tmp_path):
    """status, report, run and compare on a job whose summary.json and spec.json hold integers
    no float can: the numbers read as absent, the job is still complete, nothing raises."""
    output = _copy_job(
        bucket,
        reference,
        "edited/job",
        summary_json=_edited(reference, "summary.json", steps=HUGE, wall_seconds=-HUGE, video={"width": HUGE}),
        spec_json=_edited(reference, "spec.json", width=HUGE, height=HUGE),
    )
    status, proc = _status(output)
    assert status["state"] == "completed" and status["step"] is None and proc.stderr == "", status
    text = _cli("status", output)
    assert text.returncode == 0 and text.stdout.startswith("completed"), text.stderr
    rows, _ = _report_rows(bucket, "edited")
    assert rows["job"]["status"] == "completed" and rows["job"]["steps"] == "" and rows["job"]["psnr_db"] != ""
    proc = _cli("run", _spec_file(tmp_path, reference, output))
    _no_traceback(proc)
    assert proc.returncode == 0 and "already complete" in proc.stdout, proc.stderr
    proc = _cli("compare", output, str(reference.output), "-o", str(tmp_path / "side.mp4"))
    _no_traceback(proc)
    assert proc.returncode == 0 and (tmp_path / "side.mp4").stat().st_size > 0, proc.stderr


def test_a_format_written_as_a_string_says_a_string_where_a_number_belongs(bucket, reference):
    from conftest import assert_one_error_line

    output = _copy_job(bucket, reference, "fmt", summary_json=_edited(reference, "summary.json", format="1"))
    proc = _cli("status", output)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = assert_one_error_line(proc.stderr, 'its "format" is "1" (a string where a number belongs', "--restart")
    assert "reads format 1" not in line or "written by" not in line, line


def _nested(depth: int) -> bytes:
    return b'{"status": "completed", "deep": ' + b"[" * depth + b"]" * depth + b"}"


def _lease(beat) -> bytes:
    import json

    return json.dumps({"id": "someone", "host": "another-node", "pid": 1, "beat": beat}).encode()


# (id, file, what it holds (bytes, "dir" or "fifo"), the state status shows, the one report shows,
# whether a warning says the file was read as absent). report shows a task whose summary.json is
# there and not JSON as unknown; one that is not a file is not listed, and the task reads as status reads it.
HOSTILE_VALUES = [
    (
        "summary-400-digit-steps",
        "summary.json",
        lambda r: _edited(r, "summary.json", steps=HUGE),
        "completed",
        "completed",
        False,
    ),
    (
        "summary-nan-infinity-literals",
        "summary.json",
        lambda r: (
            Path(r.output, "summary.json").read_bytes().replace(b'"ssim": ', b'"ssim": NaN, "x": Infinity, "y": ')
        ),
        "completed",
        "completed",
        False,
    ),
    (
        "summary-wrong-kinds-everywhere",
        "summary.json",
        lambda r: _edited(
            r,
            "summary.json",
            steps="many",
            frames=[1],
            psnr_db={"a": 1},
            resumes=None,
            exact="yes",
            final_loss=True,
            video=[HUGE],
            task="t",
            files={"video.mp4": "big", "loss.csv": [1]},
        ),
        "completed",
        "completed",
        False,
    ),
    ("summary-nested-100k-deep", "summary.json", lambda r: _nested(100_000), "interrupted", "unknown", True),
    (
        "summary-not-utf8",
        "summary.json",
        lambda r: b'{"status": "completed", "\xff\xfe": 1}',
        "interrupted",
        "unknown",
        True,
    ),
    ("summary-a-folder", "summary.json", lambda r: "dir", "interrupted", "interrupted", True),
    ("summary-a-fifo", "summary.json", lambda r: "fifo", "interrupted", "interrupted", True),
    (
        "spec-400-digit-width",
        "spec.json",
        lambda r: _edited(r, "spec.json", width=HUGE, height=-HUGE),
        "completed",
        "completed",
        False,
    ),
    ("lease-400-digit-beat", ".imgfit-lease.json", lambda r: _lease(HUGE), "interrupted", "interrupted", False),
]


@pytest.mark.parametrize("name,file,content,state,reported,warned", HOSTILE_VALUES, ids=[h[0] for h in HOSTILE_VALUES])
def test_any_json_value_in_a_record_reads_as_absent_never_a_crash(
    reference, tmp_path, name, file, content, state, reported, warned
):
    """The lenient reads survive whatever a hand (or another program) put in the file:
    exit 0, the state the rest of the record shows, at most one warning naming the file."""
    from conftest import _local_bucket

    bucket = _local_bucket(tmp_path)
    made = content(reference)
    output = _copy_job(bucket, reference, "study/job")
    path = Path(output, file)
    if isinstance(made, bytes):
        path.write_bytes(made)
    else:
        path.unlink(missing_ok=True)
        path.mkdir() if made == "dir" else os.mkfifo(path)
    if file == ".imgfit-lease.json":  # a lease beside a job that has not completed
        Path(output, "summary.json").unlink()
    status, proc = _status(output)
    assert status["state"] == state, status
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == int(warned), proc.stderr
    if warned:
        assert lines[0].startswith("warning: ") and file in lines[0] and "reading it as absent" in lines[0], lines
    rows, proc = _report_rows(bucket, "study")
    assert rows["job"]["status"] == reported, rows
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == int(warned) and (not warned or file in lines[0]), proc.stderr


# ---------------------------------------------------------------- 6: records that describe their file


def _stream_size(mp4: bytes, tmp_path) -> tuple[int, int]:
    import re
    import subprocess

    from imgfit_batch import video

    path = tmp_path / "probe.mp4"
    path.write_bytes(mp4)
    probe = subprocess.run([video.ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    line = next(line for line in probe.stderr.splitlines() if "Video:" in line)
    found = re.search(r", (\d+)x(\d+)", line)
    assert found, line
    return int(found.group(1)), int(found.group(2))


def test_summary_video_names_the_streams_size_and_the_frames_inside_it_on_every_store(bucket, tmp_path):
    """An odd-sized image is filmed padded to even (yuv420p): summary.json's video says what
    the file is (its stream's size) and where the picture is in it (the frame's size); its
    `files` are the published objects' sizes; and the job's own record proves it complete."""
    import json

    image = tmp_path / "odd.png"
    save_photo(image, 9, 7, seed=5)
    output = bucket.uri("odd")
    spec = write_spec(tmp_path / "odd.yaml", tiny_spec(str(image), output, train={"epochs": 1}))
    proc = _cli("run", spec)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(bucket.get("odd/summary.json"))
    v = summary["video"]
    assert _stream_size(bucket.get("odd/video.mp4"), tmp_path) == (v["width"], v["height"]) == (10, 8), v
    assert (v["frame_width"], v["frame_height"]) == (9, 7) == (summary["width"], summary["height"])
    assert summary["files"] == {n: len(bucket.get(f"odd/{n}")) for n in summary["files"]}
    assert set(summary["files"]) == {"video.mp4", "loss.csv", "final.png", "model.pt", "progress.png"}
    again = _cli("run", spec)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr
    assert _status(output)[0]["state"] == "completed"


def test_a_sigkilled_run_shows_as_interrupted_at_once_not_running_until_its_lease_goes_stale(
    bucket, reference, tmp_path
):
    """Its lease stays behind with a fresh heartbeat; its process is gone from this host, so
    status and report say interrupted (and why) without waiting out the lease's 45 s."""
    from conftest import signal_when

    output = bucket.uri("study/killed")
    spec = _spec_file(tmp_path, reference, output)
    code, _, err = signal_when(spec, signal.SIGKILL, lambda e: e["event"] == "checkpoint")
    assert code == -signal.SIGKILL, err
    assert "study/killed/.imgfit-lease.json" in bucket.keys(), "the killed run's lease is still there"
    status, _ = _status(output)
    assert status["state"] == "interrupted" and "is gone" in status["why"], status
    assert status["step"] >= 4
    rows, _ = _report_rows(bucket, "study")
    assert rows["killed"]["status"] == "interrupted", rows
    text = _cli("status", output)
    assert text.stdout.startswith("interrupted (its run (pid "), text.stdout


def _interrupted_job(bucket, reference, key: str, loss_csv: bytes | None) -> str:
    """A job that has not completed: its spec.json (and loss.csv), no checkpoint yet."""
    bucket.put(f"{key}/spec.json", Path(reference.output, "spec.json").read_bytes())
    if loss_csv is not None:
        bucket.put(f"{key}/loss.csv", loss_csv)
    return bucket.uri(key)


HEADER = b"step,epoch,loss,lr,psnr_db\n"


def test_status_reads_only_the_tail_of_a_local_loss_csv(reference, tmp_path):
    """A loss.csv of 1 TiB (sparse: a header, a hole, the last row): status answers from its
    last row, reading the tail only. Under a 16 GiB address-space limit, reading it whole
    fails, whatever the machine's overcommit policy."""
    import json
    import resource
    import subprocess
    import sys

    from conftest import _local_bucket, cli_env

    bucket = _local_bucket(tmp_path)
    output = _interrupted_job(bucket, reference, "job", None)
    row = b"\n777,3,0.0125,0.001,\n"
    with open(Path(output, "loss.csv"), "wb") as fh:
        fh.write(HEADER)
        fh.truncate((1 << 40) - len(row))
        fh.seek(0, os.SEEK_END)
        fh.write(row)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))

    proc = subprocess.run(
        [sys.executable, "-m", "imgfit_batch", "status", output, "--json"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
        preexec_fn=limit,
    )
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads(proc.stdout)
    assert (status["state"], status["step"], status["loss"]) == ("interrupted", 777, 0.0125), status


@pytest.fixture
def logged(bucket, request, monkeypatch):
    """The fault proxy in front of the bucket's store, logging what the code under test asks for."""
    from conftest import proxy_in_front

    proxy = proxy_in_front(bucket.name, request, monkeypatch)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("bucket", ["s3", "gcs", "azure"], indirect=True)
def test_status_reads_loss_csv_on_a_store_with_ranged_reads_of_its_tail_only(bucket, logged, reference):
    """The same answer as reading it whole (the last row), from ranged GETs of at most the
    tail's bytes: a long job's loss.csv has a row per step."""
    import re

    rows = b"".join(b"%d,0,%.6f,0.001,\n" % (step, 1.0 / step) for step in range(1, 40_001))
    output = _interrupted_job(bucket, reference, "long", HEADER + rows)
    status, _ = _status(output)
    assert (status["state"], status["step"], status["loss"]) == ("interrupted", 40_000, 1.0 / 40_000), status
    # the reads of its bytes (GCS's metadata GETs of an object lack alt=media; the others' are HEADs)
    reads = [r for r in logged.requests("GET", r"loss\.csv") if bucket.name != "gcs" or "alt=media" in r.path]
    assert reads, [r.path for r in logged.requests()]
    for read in reads:
        span = re.fullmatch(r"bytes=(\d+)-(\d+)", read.range or "")
        assert span, f"an unranged read of loss.csv: {read.path} {read.range}"
        assert int(span.group(2)) - int(span.group(1)) < 64 << 10, read.range


def test_a_lease_tells_a_stopped_holder_by_its_pid_here_and_by_missed_heartbeats_anywhere(tmp_path):
    """What status and report ask of a lease (Lease.gone), at chosen moments: a holder on
    another host is running until it misses SILENT_BEATS heartbeats, long before the lease is
    stale enough to take over; one on this host is gone as soon as its process is."""
    import socket
    import subprocess

    from imgfit_batch.lease import Lease
    from imgfit_batch.outputs import LeaseRecord

    lease = Lease(str(tmp_path))
    silent = Lease.SILENT_BEATS * lease.heartbeat_seconds
    assert silent < lease.stale_after, "status tells a stopped run before a new one may take over"
    elsewhere = LeaseRecord(id="x", host="another-node", pid=os.getpid(), beat=1000.0)
    assert lease.gone(elsewhere, now=1000.0 + silent - 1) is None
    assert "stopped renewing its lease" in lease.gone(elsewhere, now=1000.0 + silent + 1)
    assert "last renewed its lease" in lease.gone(elsewhere, now=1000.0 + lease.stale_after + 1)
    assert "in the future" in lease.gone(elsewhere, now=1000.0 - lease.stale_after - 1)
    here = socket.gethostname()
    assert lease.gone(LeaseRecord(id="x", host=here, pid=os.getpid(), beat=1000.0), now=1000.0) is None
    ended = subprocess.Popen(["true"])
    ended.wait()
    gone = lease.gone(LeaseRecord(id="x", host=here, pid=ended.pid, beat=1000.0), now=1000.0)
    assert gone is not None and f"pid {ended.pid} on this host) is gone" in gone


# ---------------------------------------------------------------- issue 28, classes 1, 2 and 5: other clouds' libraries
# Class 1, another library's voice on stderr: under every store fault only our one line
# reaches stderr (gcsfs logged its own tracebacks, azure-core a warning line), and --debug
# lets the libraries speak again. Class 2, the retry window is ours on every store: an
# outage ends within the window (gcsfs retried inside each call for 35 s, "after 1 tries"),
# and a SIGTERM during one ends the retrying in the grace period, through the job itself.
# Class 5, Azure URLs that say more than we read, and names by their store's rules.
# Through the real CLI in subprocesses, against the stores' emulators behind the fault
# proxy (tests/faultproxy.py) or the fake store (tests/fakestore.py) for the answers no
# emulator gives (401 with a JSON body, 500 forever, a body cut short).

WINDOW = 3  # seconds of retrying: small, so the cases are quick
# After the window: the last backoff, the try under way, the process's exit. Generous: a
# behaviour bound (gcsfs's own retries took 35 s), not a speed.
SLACK = 12


@dataclass
class Against:
    """A store the command is pointed at: its URI root, the environment, and when its
    first faulted request came."""

    root: str
    env: dict
    first: Callable[[], float]
    count: Callable[[], int]


def _faulty(store: str, via: str, fault: str, request, monkeypatch) -> Against:
    from conftest import (
        AZURITE_ACCOUNT,
        FAKE_CREDENTIALS,
        _azure_bucket,
        _clean_aws_env,
        _gcs_bucket,
        azurite_connection_string,
        import_or_skip,
    )
    from fakestore import FakeStore
    from faultproxy import FaultProxy

    _clean_aws_env(monkeypatch)
    if via == "fake":
        fake = FakeStore(fault)
        request.addfinalizer(fake.close)
        root, url, first, count = (
            {"gcs": "gs://bkt", "azure": "az://box", "s3": "s3://bkt"}[store],
            fake.url,
            fake.first,
            (lambda: len(fake.requests)),
        )
        library = {"gcs": "gcsfs", "azure": "adlfs", "s3": "boto3"}[store]
        import_or_skip(library, f"needs {library} (pip install -e '.[test]')")  # under CI=true: a failure
    else:
        upstream = {"gcs": "gcs_endpoint", "azure": "azurite_endpoint", "s3": "s3_endpoint"}[store]
        endpoint = request.getfixturevalue(upstream)
        if store == "gcs":
            root = _gcs_bucket(endpoint, monkeypatch).root
        elif store == "azure":
            root = _azure_bucket(endpoint, monkeypatch).root
        else:
            root = f"s3://{request.getfixturevalue('s3').bucket}"
        proxy = FaultProxy(endpoint)
        request.addfinalizer(proxy.close)
        proxy.fault(fault)
        url = proxy.url
        first, count = (lambda: proxy.faulted(fault)[0].at), (lambda: len(proxy.faulted(fault)))
        if store == "azure":
            url = f"{proxy.url}/{AZURITE_ACCOUNT}"
    env = {
        "gcs": {"STORAGE_EMULATOR_HOST": url},
        "azure": {
            "AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(
                url if via == "proxy" else f"{url}/{AZURITE_ACCOUNT}"
            )
        },
        "s3": {"AWS_ENDPOINT_URL": url, **FAKE_CREDENTIALS},
    }[store]
    return Against(root, cli_env(IMGFIT_S3_RETRY_SECONDS=str(WINDOW), **env), first, count)


def _spec_to(folder: Path, output: str) -> str:
    """A spec whose image is local and whose output is `output`."""
    save_photo(folder / "photo.png", 8, 8)
    return write_spec(folder / "spec.yaml", tiny_spec(str(folder / "photo.png"), output, train={"epochs": 1}))


# (id, store, the fake store or the fault proxy, its fault, the command line (on the store's root, in a
# temporary folder), exit, words)
STORE_FAULTS = [
    (
        "gcs-401-json-body",
        "gcs",
        "fake",
        "unauthorized",
        lambda r, t: ["status", f"{r}/job"],
        3,
        ["GCS rejected the credentials"],
    ),
    (
        "gcs-500-forever",
        "gcs",
        "fake",
        "error500",
        lambda r, t: ["status", f"{r}/job"],
        69,
        ["HTTP 500", "run the job again"],
    ),
    ("gcs-500-forever-report", "gcs", "fake", "error500", lambda r, t: ["report", f"{r}/study"], 69, ["HTTP 500"]),
    ("gcs-500-forever-spec", "gcs", "fake", "error500", lambda r, t: ["validate", f"{r}/spec.yaml"], 69, ["HTTP 500"]),
    ("gcs-cut-mid-body", "gcs", "fake", "cut", lambda r, t: ["status", f"{r}/job"], 69, ["run the job again"]),
    ("gcs-dropped", "gcs", "proxy", "drop", lambda r, t: ["status", f"{r}/job"], 69, ["run the job again"]),
    ("gcs-503-forever", "gcs", "proxy", "slowdown", lambda r, t: ["status", f"{r}/job"], 69, ["HTTP 503"]),
    ("gcs-denied", "gcs", "proxy", "denied", lambda r, t: ["status", f"{r}/job"], 3, ["access denied"]),
    (
        "azure-401-json-body",
        "azure",
        "fake",
        "unauthorized",
        lambda r, t: ["status", f"{r}/job"],
        3,
        ["Azure rejected"],
    ),
    ("azure-500-forever", "azure", "proxy", "error500", lambda r, t: ["status", f"{r}/job"], 69, ["HTTP 500"]),
    ("azure-500-forever-report", "azure", "fake", "error500", lambda r, t: ["report", f"{r}/study"], 69, ["HTTP 500"]),
    (
        "azure-cut-mid-body",
        "azure",
        "fake",
        "cut",
        lambda r, t: ["validate", f"{r}/spec.yaml"],
        69,
        ["run the job again"],
    ),
    ("azure-denied", "azure", "proxy", "denied", lambda r, t: ["status", f"{r}/job"], 3, ["access denied"]),
    ("s3-401-json-body", "s3", "fake", "unauthorized", lambda r, t: ["status", f"{r}/job"], 3, ["401"]),
    ("s3-500-forever", "s3", "fake", "error500", lambda r, t: ["status", f"{r}/job"], 69, ["500", "run the job again"]),
    ("s3-cut-mid-body", "s3", "fake", "cut", lambda r, t: ["validate", f"{r}/spec.yaml"], 69, ["run the job again"]),
    ("s3-dropped", "s3", "proxy", "drop", lambda r, t: ["status", f"{r}/job"], 69, ["run the job again"]),
    (
        "gcs-500-forever-output",
        "gcs",
        "fake",
        "error500",
        lambda r, t: ["run", _spec_to(t, f"{r}/out")],
        69,
        ["HTTP 500"],
    ),
    (
        "azure-500-forever-output",
        "azure",
        "fake",
        "error500",
        lambda r, t: ["run", _spec_to(t, f"{r}/out")],
        69,
        ["HTTP 500"],
    ),
    ("s3-500-forever-output", "s3", "fake", "error500", lambda r, t: ["run", _spec_to(t, f"{r}/out")], 69, ["500"]),
]


@pytest.mark.parametrize("name,store,via,fault,build,code,needles", [pytest.param(*c, id=c[0]) for c in STORE_FAULTS])
def test_a_store_fault_is_our_one_line_its_exit_code_and_ends_within_the_retry_window(
    request, monkeypatch, tmp_path, name, store, via, fault, build, code, needles
):
    from conftest import run_cli

    against = _faulty(store, via, fault, request, monkeypatch)
    proc = run_cli(*build(against.root, tmp_path), env=against.env, timeout=120)
    ended = time.monotonic()
    assert proc.returncode == code, f"{name}: exit {proc.returncode}: {proc.stderr[-3000:]}"
    line = assert_one_error_line(proc.stderr, *needles)
    assert len(line) <= MAX_LINE
    if code == 69:  # retried for the window, and no longer: the tries counted are ours
        took = ended - against.first()
        assert took <= WINDOW + SLACK, f"{name}: retried for {took:.0f}s with a {WINDOW}s window: {line}"
        tries = int(re.search(r"after (\d+) tries", line).group(1))
        assert tries >= 2, f"{name}: the line counts one try, the store's own retries hidden inside it: {line}"
        assert against.count() >= tries, "every try reached the store"
    else:
        # not retried: a command asks for a file or two, and gcsfs's info asks for the object and a
        # listing of its name at once (4 requests a file); retried, it was asked dozens of times
        assert against.count() <= 8, f"{name}: a permanent answer is not asked again and again"


def test_debug_lets_the_libraries_log_lines_through(request, monkeypatch):
    from conftest import run_cli

    against = _faulty("azure", "proxy", "error500", request, monkeypatch)
    quiet = run_cli("status", f"{against.root}/job", env=against.env, timeout=120)
    assert_one_error_line(quiet.stderr, "HTTP 500")
    loud = run_cli("--debug", "status", f"{against.root}/job", env=against.env, timeout=120)
    assert "Unexpected return type" in loud.stderr, "azure-core's own warning, shown under --debug"
    assert "azure.core.pipeline" in loud.stderr, "its request log too"
    assert AZURITE_KEY_TAIL not in loud.stderr, "redacted"


AZURITE_KEY_TAIL = "KBHBeksoGMGw=="


@pytest.mark.parametrize("store", ["gcs", "azure", "s3"])
def test_sigterm_during_a_store_outage_ends_the_retrying_within_the_grace_through_the_job(
    store, request, monkeypatch, tmp_path
):
    from conftest import start_cli

    against = _faulty(store, "fake", "error500", request, monkeypatch)
    grace = 8
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(f"{against.root}/photo.png", str(tmp_path / "out")))
    env = {**against.env, "IMGFIT_S3_RETRY_SECONDS": "120", "IMGFIT_STOP_GRACE_SECONDS": str(grace)}
    proc, reader = start_cli("run", spec, env=env)
    try:
        deadline = time.monotonic() + 60
        while against.count() == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert against.count(), (
            f"the job never asked the store:\n{proc.stderr.read() if proc.poll() is not None else ''}"
        )
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = proc.wait(timeout=grace + 60)  # a hung process fails here
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert code == 69, (code, stderr)  # no checkpoint: the image never came
    line = assert_one_error_line(stderr, "SIGTERM")
    assert "still busy" not in line, f"the watchdog's last resort, not the job's own retrying, ended it: {line}"
    assert took <= grace + 2, f"{took:.1f}s after SIGTERM with a {grace}s grace"


# Class 5: an Azure URI naming another account than the credentials' is refused, never
# read in the credentials' account; credentials in a connection string's endpoint URL are
# one line, exit 3, unprinted.


def test_an_azure_uri_naming_another_account_is_refused_and_nothing_is_written(azurite_endpoint, monkeypatch, tmp_path):
    from conftest import _azure_bucket, cli_env, run_cli, save_photo

    box = _azure_bucket(azurite_endpoint, monkeypatch)
    container = box.root.removeprefix("az://")
    box.put("job/summary.json", b'{"status": "completed"}')
    other = f"abfs://{container}@otheraccount.dfs.core.windows.net"
    proc = run_cli("status", f"{other}/job", env=cli_env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert_one_error_line(proc.stderr, "'otheraccount'", "'devstoreaccount1'")

    save_photo(tmp_path / "photo.png", 8, 8)
    spec = write_spec(
        tmp_path / "spec.yaml", tiny_spec(str(tmp_path / "photo.png"), f"{other}/out", train={"epochs": 1})
    )
    proc = run_cli("run", spec, env=cli_env())
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, "'otheraccount'")
    assert box.keys("out") == [], "nothing written to the credentials' account"


def test_an_azure_uri_naming_the_credentials_account_is_read(azurite_endpoint, monkeypatch, tmp_path):
    from conftest import _azure_bucket, cli_env, run_cli

    box = _azure_bucket(azurite_endpoint, monkeypatch)
    container = box.root.removeprefix("az://")
    box.put("spec.yaml", yaml.safe_dump(tiny_spec("photo.png", "out")).encode())
    proc = run_cli("validate", f"abfs://{container}@devstoreaccount1.dfs.core.windows.net/spec.yaml", env=cli_env())
    assert proc.returncode == 0, proc.stderr
    assert "photo.png" in proc.stdout and proc.stderr == ""


def test_credentials_in_a_connection_strings_endpoint_are_exit_3_in_one_line_never_printed(
    azurite_endpoint, monkeypatch
):
    from conftest import AZURITE_ACCOUNT, AZURITE_KEY, cli_env, run_cli

    host = azurite_endpoint.split("//", 1)[1]
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://user:{SECRET}@{host};"
    )
    proc = run_cli("validate", "az://box/spec.yaml", env=cli_env(AZURE_STORAGE_CONNECTION_STRING=connection))
    assert proc.returncode == 3, proc.stderr
    assert_one_error_line(proc.stderr, "BlobEndpoint", "AccountKey=")
    assert SECRET not in proc.stdout + proc.stderr and AZURITE_KEY not in proc.stderr


# Class 5: bucket and container names by their store's rules, at validation, naming the field.
NAMES = [
    (
        "azure-upper-case-output",
        lambda w: ["validate", w.spec("n1", output="az://UPPER_case/x")],
        2,
        ["output", "Azure container"],
    ),
    ("azure-double-hyphen-argument", lambda w: ["status", "az://a--b/job"], 2, ["OUTPUT", "no two hyphens"]),
    (
        "azure-account-upper-case",
        lambda w: ["status", "abfs://box@Other.dfs.core.windows.net/job"],
        2,
        ["OUTPUT", "account"],
    ),
    (
        "gcs-upper-case-image",
        lambda w: ["validate", w.spec("n2", image="gs://My_Bucket/a.png")],
        2,
        ["image", "GCS bucket"],
    ),
    (
        "gcs-two-characters-output",
        lambda w: ["validate", w.spec("n3", output="gs://ab/x")],
        2,
        ["output", "GCS bucket"],
    ),
]


@pytest.mark.parametrize("name,build,code,needles", [pytest.param(*c, id=c[0]) for c in NAMES])
def test_a_bucket_name_its_store_refuses_fails_validation_naming_the_field(cli, world, name, build, code, needles):
    result = cli(*build(world))
    assert result.exit_code == code, result.stdout + result.stderr
    assert_one_error_line(result.stderr, *needles)


def test_s3_keeps_the_legacy_names_s3_compatible_stores_allow(cli, world):
    result = cli("validate", world.spec("n4", output="s3://Legacy_Bucket/x"))
    assert result.exit_code == 0, result.stderr


def jpeg_with_corrupt_exif() -> bytes:
    """A JPEG whose EXIF block promises more than it holds: Pillow decodes the pixels and
    raises a UserWarning of its own about the EXIF (once printed on stderr)."""
    buf = io.BytesIO()
    exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\xff\xff"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def test_a_librarys_warning_about_an_image_on_any_store_stays_off_stderr(bucket, tmp_path):
    from conftest import run_cli

    bucket.put("in/odd.jpg", jpeg_with_corrupt_exif())
    spec = tiny_spec(bucket.uri("in/odd.jpg"), str(tmp_path / "out"), train={"epochs": 1})
    proc = run_cli("run", write_spec(tmp_path / "spec.yaml", spec), env=cli_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", f"a library spoke on stderr:\n{proc.stderr}"


def test_only_our_warnings_reach_stderr_and_debug_brings_the_libraries_back(capsys):
    """What stderr.hold holds, one by one: a library's log record, its warning, a thread's
    uncaught exception, an exception ignored in __del__; ours prints as one line."""
    import logging
    import threading
    import warnings

    from imgfit_batch import stderr
    from imgfit_batch.errors import ImgfitWarning

    class Leaky:
        def __del__(self):
            raise RuntimeError("ignored in __del__")

    def speak() -> None:
        logging.getLogger("gcsfs").error("gcsfs out of retries\nTraceback (most recent call last): ...")
        warnings.warn_explicit("a library's own warning", UserWarning, "site-packages/lib.py", 1)
        thread = threading.Thread(target=lambda: 1 / 0, name="fsspecIO")
        thread.start()
        thread.join()
        Leaky()  # dropped at once: its __del__ raises
        warnings.warn(f"ours, with a secret https://u:{SECRET}@h/x", ImgfitWarning, stacklevel=1)

    capsys.readouterr()
    own = logging.StreamHandler(sys.stderr)  # a library that gives its logger a handler of its own
    logging.getLogger("gcsfs").addHandler(own)
    restore = stderr.hold()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            speak()
    finally:
        restore()
        logging.getLogger("gcsfs").removeHandler(own)
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: ours, with a secret https://u:***@h/x"], err

    restore = stderr.hold(debug=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            speak()
    finally:
        restore()
    err = capsys.readouterr().err
    for said in ("gcsfs out of retries", "a library's own warning", "ZeroDivisionError", "ignored in __del__"):
        assert said in err, f"--debug should show {said!r}:\n{err}"
    assert SECRET not in err

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
import shutil
import signal
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_photo, tiny_spec, write_spec
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

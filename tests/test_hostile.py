"""Hostile specs and inputs: outputs stay inside OUTPUT and never clobber the input,
the spec or a user's files; malformed URIs, YAML bombs, FIFOs, devices, animations,
NaN pixels, foreign .pt files and corrupt leases each end in one clear line and the
contract's exit code (never a hang, a traceback or gigabytes of memory); credentials
in URLs are never printed or stored."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from conftest import assert_one_error_line, cli_env, events, free_port, save_photo, tiny_spec, write_spec
from PIL import Image

from imgfit_batch.spec import image_stem

FAST = {"epochs": 1}  # a run of a couple of steps: these tests are about what surrounds training


def run_bounded(*args: str, timeout: float = 60, stdin=None, cwd=None) -> subprocess.CompletedProcess:
    """The CLI as a real process in its own session, with a deadline and a 3 GiB address-space
    limit (a regression hangs or bloats: it must fail the test, not the machine); the whole
    process group is killed afterwards."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    proc = subprocess.Popen(
        [sys.executable, "-m", "imgfit_batch", *args],
        stdin=stdin or subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=cwd,
        start_new_session=True,
        preexec_fn=limits,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"imgfit-batch {' '.join(args)} still running after {timeout}s (a hang)")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def files_under(folder) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = fh.read()
    return out


# ---------------------------------------------------------------- outputs stay inside OUTPUT


TRICKY_NAMES = [
    "...png",
    "..",
    ".png",
    "....",
    ".",
    "a\\..\\b.png",
    "tab\there.png",
    "x/..",
    "s3://b/k/..",
    "..\\..\\evil.png",
    "\x00.png",
    ". .png",
]


def test_image_stems_are_safe_deterministic_and_distinct():
    stems = [image_stem(name) for name in TRICKY_NAMES]
    for name, stem in zip(TRICKY_NAMES, stems):
        assert stem and not stem.startswith("."), (name, stem)
        assert "/" not in stem and "\\" not in stem and stem not in (".", ".."), (name, stem)
        assert not any(ord(c) < 32 for c in stem), (name, stem)
        assert image_stem(name) == stem, "deterministic"
    distinct_names = {name.rstrip("/").split("/")[-1] for name in TRICKY_NAMES}
    assert len(set(stems)) == len(distinct_names), f"distinct names must keep distinct stems: {stems}"
    # ordinary names are untouched, so existing outputs keep their folders
    assert [image_stem(n) for n in ("photos/cat.png", "s3://b/in/dog.jpeg", "my photo.tif", "a.tar.gz")] == [
        "cat",
        "dog",
        "my photo",
        "a.tar",
    ]


def test_an_image_named_dots_writes_inside_the_output_not_beside_it(cli, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    save_photo(inputs / "ok.png", 12, 9)
    Image.open(inputs / "ok.png").save(inputs / "...png", format="PNG")
    output = tmp_path / "runs" / "out"
    spec = write_spec(
        tmp_path / "spec.yaml", tiny_spec([str(inputs / "ok.png"), str(inputs / "...png")], str(output), train=FAST)
    )
    result = cli("run", spec, "--index", "1")
    assert result.exit_code == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "runs")) == ["out"], "nothing written beside OUTPUT"
    (stem,) = os.listdir(output)
    assert stem == image_stem("...png") and stem.startswith("image-")
    assert (output / stem / "summary.json").exists()


def test_image_list_whose_names_sanitize_alike_is_exit_2(cli, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        save_photo(tmp_path / folder / "pic.png", 8, 8)
        os.rename(tmp_path / folder / "pic.png", tmp_path / folder / "...png")
    spec = write_spec(
        tmp_path / "spec.yaml",
        tiny_spec([str(tmp_path / "a" / "...png"), str(tmp_path / "b" / "...png")], str(tmp_path / "out")),
    )
    result = cli("run", spec, "--index", "0")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "image", image_stem("...png"), "collide")
    assert not (tmp_path / "out").exists()


def test_an_input_inside_the_output_is_refused_and_left_untouched(cli, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    image = output / "final.png"  # the very name the job would write
    save_photo(image, 12, 9)
    before = image.read_bytes()
    os.symlink(output, tmp_path / "link")
    for spelling in (
        str(image),
        f"file://{image}",
        str(tmp_path / "link" / "final.png"),
        str(output / "x" / ".." / "final.png"),
    ):
        spec = write_spec(tmp_path / "spec.yaml", tiny_spec(spelling, str(output), train=FAST))
        for command in (("validate", spec), ("run", spec)):
            result = cli(*command)
            assert result.exit_code == 2, (spelling, command, result.stderr)
            assert_one_error_line(result.stderr, "output", str(output), spelling, "contains the input")
    assert image.read_bytes() == before
    assert sorted(os.listdir(output)) == ["final.png"], "nothing written before refusing"


def test_a_spec_inside_the_output_is_refused_naming_both(cli, tmp_path):
    save_photo(tmp_path / "photo.png", 12, 9)
    output = tmp_path / "out"
    output.mkdir()
    spec = write_spec(output / "spec.json", tiny_spec(str(tmp_path / "photo.png"), str(output), train=FAST))
    before = (output / "spec.json").read_bytes()
    result = cli("run", spec)
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, str(output), spec, "contains this spec")
    assert (output / "spec.json").read_bytes() == before
    # stdin has no path: the same spec piped in runs (it is not clobbered: it is not a file)
    result = cli("run", "-", stdin=before.decode())
    assert result.exit_code == 0, result.stderr


def test_near_misses_are_not_containment(cli, tmp_path):
    save_photo(tmp_path / "out2.png", 8, 8)
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(tmp_path / "out2.png"), str(tmp_path / "out")))
    assert cli("validate", spec).exit_code == 0
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec("s3://bkt/runs/out2.png", "s3://bkt/runs/out"))
    assert cli("validate", spec).exit_code == 0
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec("s3://bkt/runs/out/in.png", "s3://bkt/runs/out/"))
    result = cli("validate", spec)
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "s3://bkt/runs/out/in.png", "contains the input")
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec("s3://bkt/in.png", "S3://bkt"))  # a whole bucket
    assert cli("validate", spec).exit_code == 2


def test_restart_and_the_end_of_the_job_delete_only_the_files_the_job_made(cli, tmp_path):
    save_photo(tmp_path / "photo.png", 12, 9)
    output = tmp_path / "out"
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(tmp_path / "photo.png"), str(output), train=FAST))
    assert cli("run", spec).exit_code == 0
    mine = {
        "checkpoints/resnet50.pth": b"weights",
        "checkpoints/mine/ckpt-0000000001.pt": b"not the job's",
        "checkpoints/ckpt-notes.txt": b"notes",
        "checkpoints/log/mine.csv": b"1,2",
        "checkpoints/video/mine.mp4": b"my clip",
        "notes.txt": b"keep me",
    }
    for name, data in mine.items():
        os.makedirs(os.path.dirname(output / name), exist_ok=True)
        (output / name).write_bytes(data)
    # what an interrupted run leaves, by the job's names: all of it must go
    (output / "checkpoints" / ".tmp-abc123").write_bytes(b"half a checkpoint")
    (output / "checkpoints" / "log" / "loss-000099.csv").write_bytes(b"99,1,0.5,0.001,,\n")  # a stale sealed chunk
    (output / "checkpoints" / "ckpt-0000009999.json").write_text('{"step": 9999}')  # would be resumed from
    result = cli("run", spec, "--restart")
    assert result.exit_code == 0, result.stderr
    files = files_under(output)
    for name, data in mine.items():
        assert files.get(name) == data, f"--restart deleted or changed the user's {name}"
    for name in ("checkpoints/.tmp-abc123", "checkpoints/ckpt-0000009999.json", "checkpoints/log/loss-000099.csv"):
        assert name not in files, f"--restart left the job's {name}"
    assert json.loads(files["summary.json"])["resumes"] == 0


def test_s3_list_image_named_dots_and_restart_keep_to_the_jobs_keys(cli, s3, tmp_path):
    pixels = Image.fromarray(np.full((9, 12, 3), 90, np.uint8))
    for key in ("in/ok.png", "in/...png"):
        pixels.save(tmp_path / "p.png")
        s3.put(key, (tmp_path / "p.png").read_bytes())
    spec = write_spec(
        tmp_path / "spec.yaml", tiny_spec([s3.uri("in/ok.png"), s3.uri("in/...png")], s3.uri("runs/out"), train=FAST)
    )
    assert cli("run", spec, "--index", "1").exit_code == 0
    stem = image_stem("...png")
    keys = s3.keys()
    assert all(k.startswith((f"runs/out/{stem}/", "in/")) for k in keys), keys
    assert not any("/../" in k or k.endswith("/..") for k in keys), keys
    s3.put(f"runs/out/{stem}/checkpoints/resnet50.pth", b"user weights")
    s3.put(f"runs/out/{stem}/checkpoints/video/seg-000042.mp4", b"a stale segment")
    assert cli("run", spec, "--index", "1", "--restart").exit_code == 0
    assert s3.get(f"runs/out/{stem}/checkpoints/resnet50.pth") == b"user weights"
    assert f"runs/out/{stem}/checkpoints/video/seg-000042.mp4" not in s3.keys()


# ---------------------------------------------------------------- malformed URIs


@pytest.mark.parametrize(
    "image, output, needles",
    [
        ("{photo}", "s3://", ("output", "no bucket")),
        ("{photo}", "s3:///runs/x", ("output", "no bucket")),
        ("{photo}", "s3:/bkt/runs", ("output", "did you mean s3://bkt/runs")),
        ("{photo}", "hdfs://bkt/runs", ("output", "hdfs://", "not supported")),
        ("{photo}", "gs://bad bucket/x", ("output", "not a valid GCS bucket name")),
        ("{photo}", "az://-box/x", ("output", "'-box' is not a valid Azure container name")),
        ("{photo}", "s3://bad bucket/x", ("output", "not a valid S3 bucket name")),
        ("{photo}", "s3://-bkt/x", ("output", "'-bkt' is not a valid S3 bucket name")),
        ("{photo}", "s3://user@bkt/x", ("output", "not a valid S3 bucket name")),
        ("s3://bkt", "{out}", ("image", "s3://bkt", "not an object")),
        ("s3://bkt/", "{out}", ("image", "not an object")),
        ("s3://bkt/in/", "{out}", ("image", "not an object")),
        ("http://example.com/a.png", "{out}", ("image", "http://", "not supported")),
        ("HTTPS://example.com/a.png", "{out}", ("image", "HTTPS://", "not supported")),
        ("{photo}\x00.png", "{out}", ("image", "NUL")),
    ],
    ids=[
        "s3-no-bucket",
        "s3-empty-bucket",
        "s3-one-slash",
        "hdfs",
        "gs-bucket-space",
        "az-container-hyphen",
        "bucket-space",
        "bucket-hyphen",
        "bucket-at",
        "image-bucket-only",
        "image-bucket-slash",
        "image-folder",
        "http",
        "https-upper",
        "nul",
    ],
)
def test_malformed_uris_are_spec_errors(cli, tmp_path, monkeypatch, image, output, needles):
    monkeypatch.chdir(tmp_path)  # a URI taken for a relative path would create folders here
    save_photo(tmp_path / "photo.png", 8, 8)
    image, output = (v.format(photo=tmp_path / "photo.png", out=tmp_path / "out") for v in (image, output))
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(image, output, train=FAST))
    for command in (("validate", spec), ("run", spec)):
        result = cli(*command)
        assert result.exit_code == 2, (command, result.stderr)
        assert_one_error_line(result.stderr, *needles)
    assert sorted(os.listdir(tmp_path)) == ["photo.png", "spec.yaml"], "nothing created"


def test_upper_case_s3_scheme_is_read_as_s3(cli, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec("S3://bkt/in/a.png", "S3://bkt/runs/x"))
    result = cli("validate", spec)
    assert result.exit_code == 0, result.stderr
    tree = yaml.safe_load(result.stdout)
    assert (tree["image"], tree["output"]) == ("s3://bkt/in/a.png", "s3://bkt/runs/x")


def test_malformed_locations_on_the_command_line_are_exit_2(cli, tmp_path):
    for args in (
        ("status", "s3://"),
        ("status", "hdfs://b/x"),
        ("status", "gs://"),
        ("render", "s3://", "-o", str(tmp_path / "a.png")),
        ("render", str(tmp_path), "-o", "s3://bkt/"),
    ):
        result = cli(*args)
        assert result.exit_code == 2, (args, result.stderr)
        assert_one_error_line(result.stderr)


# ---------------------------------------------------------------- hostile specs


def billion_laughs(levels: int = 6) -> str:
    """The classic alias bomb, kept small here (9**6 leaves): what matters is that it is refused."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nimage: *a{levels - 1}\noutput: out\n"


def test_yaml_aliases_are_refused_in_one_line(cli, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    assert len(path.read_bytes()) < 500
    for args, stdin in (((str(path),), None), (("-",), path.read_text())):
        result = cli("validate", *args, stdin=stdin)
        assert result.exit_code == 2
        assert_one_error_line(result.stderr, "line 2", "aliases (*a0) are not allowed")


@pytest.mark.parametrize(
    "text, needles",
    [
        ("image: a.png\noutput: o\ntrain: {epochs: " + "[" * 20000 + "}\n", ("nested too deeply",)),
        ("image: a.png\noutput: o\ntrain: {epochs: " + "9" * 5000 + "}\n", ("not a valid spec",)),
        ("image: a.png\noutput: o\ntrain: {epochs: [" + "1, " * 20_000 + "1]}\n", ("train.epochs",)),
        ("image: a.png\noutput: o\nmodel: {kind: '" + "x" * 500_000 + "'}\n", ("model", "unknown kind")),
        ("image: a.png\noutput: o\ntrain:\n  ? " + "k" * 500_000 + "\n  : 1\n", ("train.kkk", "unknown field")),
        ("image: a.png\noutput: o\n#" + "x" * (1 << 20) + "\n", ("over 1 MiB",)),
    ],
    ids=["deep", "huge-int", "huge-list", "huge-string", "huge-key", "over-1-MiB"],
)
def test_oversized_specs_are_exit_2_in_one_short_line(cli, tmp_path, text, needles):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    for args, stdin in (((str(path),), None), (("-",), text)):
        result = cli("validate", *args, stdin=stdin)
        assert result.exit_code == 2, result.stderr[:2000]
        line = assert_one_error_line(result.stderr, *needles)
        assert len(line) <= 400, line[:2000]  # the input is quoted cut short, not whole


def test_a_long_error_line_keeps_its_head_and_its_advice():
    from imgfit_batch.cli import MAX_LINE, _one_line

    line = _one_line(ValueError("s3://bucket/key: " + "x " * 5000 + "\n\n run again to resume"))
    assert len(line) <= MAX_LINE
    assert line.startswith("s3://bucket/key: ") and line.endswith("run again to resume") and "\n" not in line


def test_s3_specs_over_1_mib_or_inside_the_output_are_exit_2(cli, s3):
    s3.put("specs/big.yaml", b"image: a.png\noutput: o\n#" + b"x" * (2 << 20))
    result = cli("validate", s3.uri("specs/big.yaml"))
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "over 1 MiB")
    s3.put("runs/out/spec.yaml", yaml.safe_dump({"image": s3.uri("in/a.png"), "output": s3.uri("runs/out")}).encode())
    result = cli("run", s3.uri("runs/out/spec.yaml"))
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, s3.uri("runs/out"), s3.uri("runs/out/spec.yaml"), "contains this spec")
    assert s3.keys("runs/") == ["runs/out/spec.yaml"]


# ---------------------------------------------------------------- secrets


PASSWORD = "Sup3rS3cretPassw0rd"


def test_credentials_in_the_endpoint_url_are_never_printed_or_stored(cli, tmp_path):
    save_photo(tmp_path / "photo.png", 12, 9)
    output = tmp_path / "out"
    endpoint = f"http://minio-user:{PASSWORD}@127.0.0.1:9000"
    spec = write_spec(
        tmp_path / "spec.yaml",
        tiny_spec(str(tmp_path / "photo.png"), str(output), train=FAST, storage={"endpoint_url": endpoint}),
    )
    printed = ""
    for args in (("validate", spec), ("run", spec), ("status", str(output)), ("status", str(output), "--json")):
        result = cli(*args)
        assert result.exit_code == 0, (args, result.stderr)
        printed += result.stdout + result.stderr
    assert PASSWORD not in printed
    assert "minio-user:***@127.0.0.1:9000" in printed, "validate shows the endpoint, redacted"
    for name, data in files_under(output).items():
        assert PASSWORD.encode() not in data, f"the password is stored in {name}"
    stored = json.loads((output / "spec.json").read_text())
    assert stored["spec"]["storage"]["endpoint_url"] == "http://minio-user:***@127.0.0.1:9000"


@pytest.mark.slow  # boto3 retries the refused connection
def test_credentials_in_an_unreachable_endpoint_stay_out_of_the_error_line(cli, s3, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGFIT_S3_RETRY_SECONDS", "0")
    save_photo(tmp_path / "photo.png", 12, 9)
    for where in ("spec", "env"):
        endpoint = f"http://u:{PASSWORD}@127.0.0.1:{free_port()}"  # nothing listens there
        storage = {"endpoint_url": endpoint} if where == "spec" else {}
        if where == "env":
            monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        spec = write_spec(
            tmp_path / "spec.yaml", tiny_spec(str(tmp_path / "photo.png"), s3.uri("out"), storage=storage)
        )
        result = cli("run", spec)
        assert result.exit_code in (3, 69), result.stderr
        assert PASSWORD not in result.stdout + result.stderr
        assert_one_error_line(result.stderr, s3.uri("out"))


def test_redact_hides_passwords_and_presigned_signatures():
    from imgfit_batch.redact import redact

    assert redact("cannot reach http://u:p@ss:w@host:9/b/k now") == "cannot reach http://u:***@host:9/b/k now"
    url = "https://b.s3.amazonaws.com/k.png?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc123&x=1"
    assert redact(url) == (
        "https://b.s3.amazonaws.com/k.png?X-Amz-Algorithm=AWS4&X-Amz-Credential=***&X-Amz-Signature=***&x=1"
    )
    assert redact("s3://bucket/a:b@c.png and /tmp/x") == "s3://bucket/a:b@c.png and /tmp/x"


def test_redact_hides_azure_account_keys_and_sas_tokens():
    from imgfit_batch.redact import redact

    connection = (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0/+key==;EndpointSuffix=core.windows.net"
    )
    assert redact(connection) == (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=***;EndpointSuffix=core.windows.net"
    )
    assert (
        redact("BlobEndpoint=https://a.blob.core.windows.net/;SharedAccessSignature=sv=2022-11-02&ss=b&sig=Zm9v%3D")
        == "BlobEndpoint=https://a.blob.core.windows.net/;SharedAccessSignature=***"
    )
    assert (
        redact("sv=2022-11-02&ss=b&srt=co&sp=rwdl&se=2026-12-31&sig=Zm9vYmFy%3D")
        == "sv=2022-11-02&ss=b&srt=co&sp=rwdl&se=2026-12-31&sig=***"
    )
    assert (
        redact("https://a.blob.core.windows.net/c/k.png?sv=2022&sig=abc&se=x")
        == "https://a.blob.core.windows.net/c/k.png?sv=2022&sig=***&se=x"
    )
    assert redact("az://container/design=sig-flow/k.png") == "az://container/design=sig-flow/k.png"


# ---------------------------------------------------------------- inputs that are not files


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize(
    "case",
    ["image-fifo-run", "image-fifo-validate", "spec-fifo", "image-dev-zero", "spec-dev-urandom", "stdin-dev-zero"],
)
def test_fifos_and_devices_are_refused_without_hanging_or_reading_forever(tmp_path, fifo, case):
    """Each would block forever or read without end; with a 60 s deadline and 3 GiB of address space."""
    image = {"image-fifo-run": fifo, "image-fifo-validate": fifo, "image-dev-zero": "/dev/zero"}.get(
        case, str(tmp_path / "photo.png")
    )
    save_photo(tmp_path / "photo.png", 8, 8)
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(image, str(tmp_path / "out"), train=FAST))
    stdin = None
    if case == "image-fifo-validate":
        args, code, needles = ("validate", spec), 0, ()  # validate only reads the header for the size: it skips it
    elif case.startswith("image"):
        args, code, needles = ("run", spec), 3, (image, "not a regular file")
    elif case == "spec-fifo":
        args, code, needles = ("run", fifo), 3, (fifo, "FIFO", "use -")
    elif case == "spec-dev-urandom":
        args, code, needles = ("run", "/dev/urandom"), 3, ("/dev/urandom", "character device")
    else:
        args, code, needles, stdin = ("run", "-"), 2, ("stdin", "over 1 MiB"), open("/dev/zero", "rb")
    proc = run_bounded(*args, stdin=stdin)
    assert proc.returncode == code, proc.stderr
    if code:
        assert_one_error_line(proc.stderr, *needles)


# ---------------------------------------------------------------- images that are not one still image


def frames(n: int, size=(16, 12)) -> list[Image.Image]:
    return [Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)) for i in range(n)]


@pytest.mark.parametrize(
    "name, save, needles",
    [
        (
            "anim.gif",
            lambda p: frames(3)[0].save(p, save_all=True, append_images=frames(3)[1:]),
            ("animated GIF", "3 frames"),
        ),
        (
            "anim.png",
            lambda p: frames(4)[0].save(p, save_all=True, append_images=frames(4)[1:]),
            ("animated PNG", "4 frames"),
        ),
        (
            "anim.webp",
            lambda p: frames(2)[0].save(p, save_all=True, append_images=frames(2)[1:]),
            ("animated WEBP", "2 frames"),
        ),
        (
            "pages.tif",
            lambda p: frames(3)[0].save(p, save_all=True, append_images=frames(3)[1:]),
            ("TIFF of 3 pages", "page 2"),
        ),
        (
            "bigger.tif",
            lambda p: frames(1)[0].save(p, save_all=True, append_images=frames(2, (32, 24))[1:]),
            ("TIFF of 2 pages", "32x24"),
        ),
        (
            "nan.tif",
            lambda p: Image.fromarray(np.where(np.eye(12, 16) > 0, np.nan, 0.5).astype(np.float32), "F").save(p),
            ("12 pixels are NaN or infinite",),
        ),
        (
            "inf.tif",
            lambda p: Image.fromarray(np.array([[0.5, np.inf], [-np.inf, 1]], np.float32), "F").save(p),
            ("2 pixels are NaN or infinite",),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_animations_extra_pages_and_non_finite_pixels_are_exit_3(cli, tmp_path, name, save, needles):
    path = tmp_path / name
    save(path)
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(path), str(tmp_path / "out"), train=FAST))
    with _no_warnings():
        result = cli("run", spec)
    assert result.exit_code == 3, result.stderr
    line = assert_one_error_line(result.stderr, str(path), *needles)
    assert "frame" in line or "page" in line or "finite" in line


class _no_warnings:
    """numpy's RuntimeWarning on NaN casts was the old symptom: none may be raised."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_a_tiff_with_a_thumbnail_or_pyramid_trains_on_its_first_page(cli, tmp_path):
    first = np.asarray(frames(2, (16, 12))[1])
    path = tmp_path / "pyramid.tif"
    Image.fromarray(first).save(
        path,
        save_all=True,
        append_images=[Image.fromarray(first).resize((8, 6)), Image.fromarray(first).resize((4, 3))],
    )
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(path), str(tmp_path / "out"), train=FAST))
    result = cli("run", spec)
    assert result.exit_code == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["width"], summary["height"]) == (16, 12)


# ---------------------------------------------------------------- foreign files in outputs


def test_render_of_garbage_or_foreign_pt_files_is_exit_3_in_one_line(cli, tmp_path):
    from imgfit_batch.checkpoint import FORMAT
    from imgfit_batch.outputs import MODEL_FORMAT

    cases = {
        "random.pt": (
            lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
            "not a model.pt this tool can read",
        ),
        "tensor.pt": (lambda p: torch.save(torch.zeros(3), p), "no format tag"),
        "dict.pt": (lambda p: torch.save({"state_dict": {}}, p), "no format tag"),
        "other.pt": (lambda p: torch.save({"format": "someone/else/1"}, p), "someone/else/1"),
        "ckpt-0000000004.pt": (lambda p: torch.save({"format": FORMAT, "parts": {}}, p), "training checkpoint"),
        "mismatch.pt": (
            lambda p: torch.save(
                {
                    "format": MODEL_FORMAT,
                    "model": {"kind": "fourier", "fourier_order": 4},
                    "out_features": 3,
                    "width": 8,
                    "height": 8,
                    "state_dict": {"nope": torch.zeros(1)},
                },
                p,
            ),
            "does not match",
        ),
        "pickle.pt": (
            lambda p: torch.save({"format": MODEL_FORMAT, "obj": object()}, p),
            "not a model.pt this tool can read",
        ),
    }
    for name, (make, needle) in cases.items():
        path = tmp_path / name
        make(path)
        result = cli("render", str(path), "-o", str(tmp_path / "r.png"))
        assert result.exit_code == 3, (name, result.stderr)
        assert_one_error_line(result.stderr, str(path), needle)
    assert not (tmp_path / "r.png").exists()


def test_status_of_an_output_with_garbage_files_answers_without_a_traceback(cli, tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "summary.json").write_text("[1, 2, 3]")
    (out / "spec.json").write_bytes(b"\xff\xfe\x00garbage")
    (out / "loss.csv").write_bytes(b"step,loss\n\xff\xfe,,\n")
    (out / ".imgfit-lease.json").write_text('{"beat": "soon", "pid": "x"}')
    (out / "checkpoints" / "ckpt-0000000007.json").write_text('{"step": "seven", "loss": "low", "created": [1]}')
    for args in (("status", str(out)), ("status", str(out), "--json")):
        result = cli(*args)
        assert result.exit_code == 0, result.stderr
        warned = result.stderr.splitlines()  # each record read as absent says so, once
        assert [line.split(": ")[1].rsplit("/", 1)[-1] for line in warned] == ["summary.json", "spec.json"], warned
        assert all(line.startswith("warning: ") and line.endswith("reading it as absent") for line in warned)
        assert "interrupted" in result.stdout
    now = time.time()
    for beat, state in ((now, "running"), (now + 3600, "interrupted")):  # a heartbeat from the future is stale
        (out / ".imgfit-lease.json").write_text(json.dumps({"id": "x", "host": "node", "pid": 1, "beat": beat}))
        result = cli("status", str(out), "--json")
        assert result.exit_code == 0 and json.loads(result.stdout)["state"] == state, result.stdout + result.stderr
    (out / "summary.json").write_text('{"status": "completed", "steps": "many", "final_loss": "low", "psnr_db": null}')
    result = cli("status", str(out))  # no record of its own backs it (spec.json is garbage): not completed
    assert result.exit_code == 0 and result.stdout.startswith("unknown (its summary.json says completed"), result.stdout
    assert result.stdout.rstrip().endswith("it is not this job's record)"), result.stdout
    (out / "checkpoints" / "ckpt-0000000007.json").write_text("[]")
    for name in ("summary.json", ".imgfit-lease.json", "loss.csv"):
        (out / name).unlink()
    result = cli("status", str(out))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, "no imgfit-batch job here")


# ---------------------------------------------------------------- leases


@pytest.mark.parametrize(
    "lease",
    [
        b'{"id": "x", "host": "h", "pid": 1, "beat": "abc"}',
        b"[1, 2, 3]",
        b'{"id": 7, "host": ["h"], "pid": "1", "beat": 1}',
        b'{"id": "x", "host": "h", "pid": 99999999999999999999, "beat": 1e308}',
        b"\x00\xffbinary junk\x80",
        b'{"id": "x", "host": "h", "pid": 1, "beat": NaN}',
    ],
    ids=["text-beat", "list", "wrong-types", "huge-pid", "binary", "nan-beat"],
)
def test_a_malformed_lease_is_taken_over_with_a_warning(cli, tmp_path, lease):
    save_photo(tmp_path / "photo.png", 12, 9)
    output = tmp_path / "out"
    output.mkdir()
    (output / ".imgfit-lease.json").write_bytes(lease)
    spec = write_spec(
        tmp_path / "spec.yaml",
        tiny_spec(str(tmp_path / "photo.png"), str(output), train=FAST, checkpoint={"lease_wait_seconds": 5}),
    )
    result = cli("run", spec)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "malformed" in warnings[0], result.stderr
    assert not (output / ".imgfit-lease.json").exists(), "released at the end"


def test_a_lease_from_the_future_is_stale_but_a_slightly_skewed_one_is_respected(cli, tmp_path):
    save_photo(tmp_path / "photo.png", 12, 9)
    output = tmp_path / "out"
    output.mkdir()
    lease = output / ".imgfit-lease.json"
    spec = write_spec(
        tmp_path / "spec.yaml",
        tiny_spec(str(tmp_path / "photo.png"), str(output), train=FAST, checkpoint={"lease_wait_seconds": 0}),
    )
    other = {"id": "other", "host": "another-node", "pid": 1}
    lease.write_text(json.dumps({**other, "beat": time.time() + 20}))  # a clock 20 s ahead: a live run
    result = cli("run", spec)
    assert result.exit_code == 75, result.stderr
    assert_one_error_line(result.stderr, "another run", "another-node")
    lease.write_text(json.dumps({**other, "beat": time.time() + 3600}))  # an hour ahead: skewed or forged
    result = cli("run", spec)
    assert result.exit_code == 0, result.stderr
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("warning:") and "s in the future" in warning, warning
    assert events(result.stdout)[-1]["event"] == "completed"


@pytest.mark.parametrize("tty", [False, True], ids=["json-lines", "terminal"])
def test_progress_events_and_warnings_are_redacted(capsys, tty):
    from imgfit_batch.progress import Reporter

    reporter = Reporter(tty=tty)
    reporter.event(
        "waiting", f"S3 at http://u:{PASSWORD}@minio:9000 is slow", endpoint=f"http://u:{PASSWORD}@minio:9000"
    )
    reporter.warn(f"checkpoint write failed: cannot reach http://u:{PASSWORD}@minio:9000/b/k")
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    assert (out + err).count("u:***@minio:9000") == (2 if tty else 3)


def test_a_spec_that_is_not_utf8_is_refused_rather_than_naming_another_file(cli, tmp_path):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes("image: caf\u00e9.png\noutput: out\n".encode("latin-1"))
    result = cli("validate", str(spec))
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "line 1", "not UTF-8")

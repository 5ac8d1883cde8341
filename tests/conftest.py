"""Shared fixtures: tiny images and specs, the CLI in-process and as a real
subprocess, a real S3 server (moto's server mode) on loopback, and one
uninterrupted reference run that the resume tests compare against bit for bit.

Everything runs on the CPU with tiny models so the suite stays fast on a small
machine. Job runs (subprocesses, and in-process through the `cli` fixture) use
one torch thread: on a shared 2-core box the thread pool otherwise spends more
time spinning than computing on these tiny models.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

TINY_MODEL = {"fourier_order": 4, "hidden_size": 16, "num_hidden_layers": 2}


# ---------------------------------------------------------------- skips that CI must not hide


def in_ci() -> bool:
    """CI=true (GitHub Actions, GitLab, .ci/run, ... set it): everything must really run."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip a test of a real part (Slurm, the container, the S3 server, the manifest
    validator) that cannot run on this machine, saying why; under CI=true fail instead,
    so a green CI never hides a part that did not run."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: tests that cannot run fail instead of skipping)", pytrace=False)
    pytest.skip(reason)


def import_or_skip(module: str, reason: str):
    """pytest.importorskip for a fixture or test, except that under CI=true a missing
    module is a failure."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        skip_or_fail(reason)


# ---------------------------------------------------------------- images and specs


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image: smooth shading, an edge, a little noise (uint8, H x W x 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / max(width, 1) * 3.1 + 0.5)
    g = 90 + 120 * (y / max(height - 1, 1))
    b = np.where((x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 3) ** 2, 220, 40)
    a = np.stack([r, g, b], -1) + rng.normal(0, 6, (height, width, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


def save_photo(path, width: int = 31, height: int = 23, seed: int = 0) -> np.ndarray:
    from PIL import Image

    pixels = photo(width, height, seed)
    Image.fromarray(pixels, "RGB").save(str(path))
    return pixels


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def tiny_spec(image: str, output: str, **sections) -> dict:
    """A spec that trains in a second or two on one CPU core."""
    spec = {
        "image": image,
        "output": output,
        "model": dict(TINY_MODEL),
        "train": {"color": "rgb", "epochs": 2, "batch_size": 128, "device": "cpu"},
        "video": {"every_n_steps": 2, "fps": 4},
        "checkpoint": {"every_n_steps": 4},
        "log": {"every_seconds": 0.2},
    }
    for name, values in sections.items():
        spec[name] = {**spec.get(name, {}), **values} if isinstance(values, dict) else values
    return spec


def write_spec(path, spec: dict) -> str:
    with open(path, "w") as fh:
        yaml.safe_dump(spec, fh, sort_keys=False)
    return str(path)


# ---------------------------------------------------------------- the CLI


def cli_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict | None = None, input: str | None = None, timeout: float = 120, cwd=None
) -> subprocess.CompletedProcess:
    """`imgfit-batch ARGS` as a real process (the console script's code path)."""
    return subprocess.run(
        [sys.executable, "-m", "imgfit_batch", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        input=input,
        timeout=timeout,
        cwd=cwd,
    )


def events(stdout: str) -> list[dict]:
    """The JSON-lines events a non-TTY run printed."""
    out = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def assert_one_error_line(stderr: str, *needles: str) -> str:
    """The contract's error shape: exactly one line, `error: ...` (`stopped: ...` for
    exit 75, which is not a failure), no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith(("error: ", "stopped: ")), line
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Call `imgfit_batch.cli.main` in-process (the same one-line/exit-code handling as
    the console script, without paying torch's import per call)."""
    from imgfit_batch import signals, storage

    saved = {s: signal.getsignal(s) for s in signals.NAMES}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses' OMP_NUM_THREADS=1

    def call(*args: str, stdin: str | None = None) -> Result:
        from imgfit_batch import cli as cli_module

        monkeypatch.setattr(sys, "argv", ["imgfit-batch", *args])
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        cli_module._state["debug"] = False
        signals.reset()
        storage._client.cache_clear()  # boto3 reads AWS_ENDPOINT_URL when a client is made
        capsys.readouterr()
        code = None
        try:
            cli_module.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            for s, handler in saved.items():
                signal.signal(s, handler)
            signals.reset()
            storage.configure(None, None)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    yield call
    storage._client.cache_clear()
    torch.set_num_threads(threads)


class LineReader:
    """Reads a subprocess's stdout lines on a thread, so tests can wait for one
    with a deadline instead of sleeping."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines, self._q = proc, [], queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, predicate, timeout: float = 120) -> dict | None:
        """The first JSON event (from now on) satisfying predicate; None if the process ended first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no matching event within {timeout}s; saw:\n{''.join(self.lines[-20:])}"
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                return None
            self.lines.append(line)
            if line.startswith("{"):
                event = json.loads(line)
                if predicate(event):
                    return event

    def rest(self) -> str:
        self._thread.join(timeout=60)
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)


def start_cli(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, LineReader]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgfit_batch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or cli_env(),
    )
    return proc, LineReader(proc)


def signal_when(spec_path: str, sig: int, predicate, env: dict | None = None) -> tuple[int, str, str]:
    """Run the job; send `sig` once it prints an event satisfying `predicate`.
    Returns (exit code, stdout, stderr); fails if the run ends first."""
    proc, reader = start_cli("run", spec_path, env=env)
    try:
        event = reader.wait_for(predicate)
        assert event is not None, f"the run ended before the awaited event:\n{reader.rest()}{proc.stderr.read()}"
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, reader.rest(), proc.stderr.read()


# ---------------------------------------------------------------- S3 on loopback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server, over HTTP on 127.0.0.1 (the same wire protocol as MinIO or AWS)."""
    import_or_skip("moto.server", "needs moto[server] (pip install -e '.[test]')")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@dataclass
class S3:
    endpoint: str
    bucket: str
    client: object = field(repr=False)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)


def _clean_aws_env(monkeypatch) -> None:
    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3(s3_endpoint, monkeypatch) -> S3:
    """A fresh bucket on the loopback S3 server; the environment points boto3 (here and
    in subprocesses) at it with fake credentials."""
    import boto3

    _clean_aws_env(monkeypatch)
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        **{"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"},
    )
    bucket = f"imgfit-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3(s3_endpoint, bucket, client)


# ---------------------------------------------------------------- outputs


CONTRACT_FILES = ("video.mp4", "loss.csv", "summary.json", "final.png", "model.pt")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def check_outputs(files: dict[str, bytes], input_pixels: np.ndarray, tmp_path) -> dict:
    """Everything the contract says about a finished output, from its files' bytes."""
    from imgfit_batch import video
    from imgfit_batch.models.skipconn import FourierConfig
    from imgfit_batch.rendering import render

    h, w, c = input_pixels.shape
    summary = json.loads(files["summary.json"])
    assert summary["status"] == "completed"
    for key in ("steps", "frames", "psnr_db", "wall_seconds", "resumes", "device"):
        assert key in summary, key
    assert summary["resumes"] == 0 and summary["device"] == "cpu"

    final = np.asarray(Image.open(io.BytesIO(files["final.png"])))
    final = final[..., None] if final.ndim == 2 else final
    assert final.shape == (h, w, c), "final.png is the input's resolution"
    assert summary["psnr_db"] == pytest.approx(psnr(final, input_pixels), abs=1e-3)

    rows = files["loss.csv"].decode().splitlines()
    header = rows[0].split(",")
    assert {"step", "loss"} <= set(header)
    steps = [int(r.split(",")[header.index("step")]) for r in rows[1:]]
    assert steps == list(range(1, summary["steps"] + 1))

    model = torch.load(io.BytesIO(files["model.pt"]), weights_only=True)
    net = FourierConfig(**{k: v for k, v in model["model"].items()}).build(c)
    net.load_state_dict(model["state_dict"])
    again = render(net, w, h, torch.device("cpu")).numpy()
    assert np.array_equal(again, final), "model.pt renders exactly final.png"

    mp4 = tmp_path / "check.mp4"
    mp4.write_bytes(files["video.mp4"])
    probe = subprocess.run([video.ffmpeg_exe(), "-hide_banner", "-i", str(mp4)], capture_output=True, text=True)
    stream = next(line for line in probe.stderr.splitlines() if "Video:" in line)
    assert "h264" in stream and "yuv420p" in stream, stream
    assert video.count_frames(str(mp4)) == summary["frames"]
    v = summary["video"]
    frame_w, frame_h = v["frame_width"], v["frame_height"]  # width, height: the stream's (padded to even)
    assert (v["width"], v["height"]) == (frame_w + frame_w % 2, frame_h + frame_h % 2)
    frames = video.decode_frames(str(mp4), frame_w, frame_h, c)
    assert len(frames) == summary["frames"]
    if (frame_w, frame_h) == (w, h):
        # the last frame is rendered from the final weights; yuv420p halves the chroma
        # resolution of these tiny frames, so compare loosely
        scores = [psnr(f, final) for f in frames]
        assert scores[-1] > 22 and scores[-1] >= max(scores) - 0.5, "the last frame shows the final reconstruction"
    return summary


def read_outputs(folder: str) -> dict:
    """What a finished local output holds, in comparable form."""
    from imgfit_batch import video

    with open(os.path.join(folder, "summary.json")) as fh:
        summary = json.load(fh)
    model = torch.load(os.path.join(folder, "model.pt"), weights_only=True)
    with open(os.path.join(folder, "loss.csv")) as fh:
        rows = fh.read().splitlines()
    v = summary["video"]
    channels = 1 if summary["color"] == "gray" else 3
    frames = video.decode_frames(os.path.join(folder, "video.mp4"), v["frame_width"], v["frame_height"], channels)
    with open(os.path.join(folder, "video.mp4"), "rb") as fh:
        video_bytes = fh.read()
    return {
        "summary": summary,
        "state_dict": model["state_dict"],
        "rows": rows,
        "frames": frames,
        "video_bytes": video_bytes,
    }


def assert_same_result(got: dict, want: dict) -> None:
    """Bit for bit: weights, loss rows, every decoded frame in order, video.mp4's bytes."""
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for name, tensor in want["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), f"weights differ in {name}"
    assert got["rows"] == want["rows"], "loss.csv rows differ"
    steps = [int(r.split(",")[0]) for r in got["rows"][1:]]
    assert steps == list(range(1, len(steps) + 1)), "each step must appear exactly once, in order"
    assert got["frames"].shape == want["frames"].shape, "frame count or size differs"
    assert np.array_equal(got["frames"], want["frames"]), "decoded frames differ"
    assert got["video_bytes"] == want["video_bytes"], "video.mp4 is not byte-identical (README promises it)"
    for key in ("steps", "frames", "psnr_db"):
        assert got["summary"][key] == want["summary"][key], key


# ---------------------------------------------------------------- the reference run


RESUME_TRAIN = {"color": "rgb", "epochs": 10, "batch_size": 64, "device": "cpu"}  # 12 steps/epoch, 120 steps


@dataclass
class Reference:
    image: str
    spec: dict
    output: str
    result: dict

    def spec_for(self, output: str, **sections) -> dict:
        spec = json.loads(json.dumps(self.spec))
        spec["output"] = output
        for name, values in sections.items():
            spec[name] = {**spec.get(name, {}), **values}
        return spec


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Reference:
    """One uninterrupted run of the job the resume tests interrupt (120 steps, 60 frames
    in two video segments, a checkpoint every 4 steps)."""
    root = tmp_path_factory.mktemp("reference")
    image = str(root / "photo.png")
    save_photo(image, 31, 23, seed=3)
    output = str(root / "out")
    spec = tiny_spec(image, output, train=RESUME_TRAIN)
    path = write_spec(root / "spec.yaml", spec)
    proc = run_cli("run", path)
    assert proc.returncode == 0, proc.stderr
    result = read_outputs(output)
    assert result["summary"]["steps"] == 120 and result["summary"]["frames"] == 60
    assert result["summary"]["video"]["segments"] >= 2, "the resume tests need a video cut into segments"
    return Reference(image, spec, output, result)


# ---------------------------------------------------------------- GCS and Azure Blob on loopback


@pytest.fixture(scope="session")
def gcs_endpoint():
    """gcp-storage-emulator (PyPI): GCS's JSON API over HTTP on 127.0.0.1, in memory."""
    import_or_skip("gcsfs", "needs gcsfs (pip install -e '.[test]')")
    server_module = import_or_skip(
        "gcp_storage_emulator.server", "needs gcp-storage-emulator (pip install -e '.[test]')"
    )
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    port = free_port()
    server = server_module.create_server("127.0.0.1", port, in_memory=True)
    server.start()
    # its http.server prints a traceback for a client that went away mid-reply: the fault proxy's
    # cut connections do that on purpose, so those are not worth a traceback in the log
    httpd = server._api._httpd
    report = httpd.handle_error

    def handle_error(request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            report(request, client_address)

    httpd.handle_error = handle_error
    yield f"http://127.0.0.1:{port}"
    server.stop()


# Azurite's documented development account (public, in Microsoft's docs): not a secret
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_connection_string(blob_endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={blob_endpoint};"
    )


def proxy_in_front(store: str, request, monkeypatch):
    """The fault proxy (tests/faultproxy.py) in front of `store`'s emulator ("s3", "gcs" or
    "azure"), with the environment pointing the code under test at it; close it when done."""
    from faultproxy import FaultProxy

    endpoint = {"s3": "s3_endpoint", "gcs": "gcs_endpoint", "azure": "azurite_endpoint"}[store]
    proxy = FaultProxy(request.getfixturevalue(endpoint))
    if store == "s3":
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    elif store == "gcs":
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    else:
        monkeypatch.setenv(
            "AZURE_STORAGE_CONNECTION_STRING", azurite_connection_string(f"{proxy.url}/{AZURITE_ACCOUNT}")
        )
    return proxy


@pytest.fixture(scope="session")
def azurite_endpoint(tmp_path_factory):
    """Azurite's blob service (npm; scripts/setup.sh installs it) on 127.0.0.1, in memory."""
    import shutil

    import_or_skip("adlfs", "needs adlfs (pip install -e '.[test]')")
    exe = os.environ.get("AZURITE_BLOB") or shutil.which("azurite-blob")
    if not exe:
        skip_or_fail("needs Azurite's azurite-blob on PATH (scripts/setup.sh: npm install -g azurite)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    proc = subprocess.Popen(
        [
            exe,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=str(workdir),
    )
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            skip_or_fail(f"Azurite did not start: {proc.stderr.read().decode(errors='replace')[-500:]}")
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Bucket:
    """A fresh bucket (container, folder) on one store, and a client of the store's own
    (not the code under test) to look at it: uri(key), keys(prefix), get(key), put(key, data)."""

    name: str  # local, s3, gcs, azure
    root: str  # the URI of the bucket's root, without a trailing slash
    _keys: object = field(repr=False)
    _get: object = field(repr=False)
    _put: object = field(repr=False)

    def uri(self, key: str) -> str:
        return f"{self.root}/{key}"

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self._keys() if k.startswith(prefix))

    def get(self, key: str) -> bytes:
        return self._get(key)

    def put(self, key: str, data: bytes) -> None:
        self._put(key, data)


def _gcs_bucket(endpoint: str, monkeypatch) -> Bucket:
    from gcsfs.core import GCSFileSystem

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    fs = GCSFileSystem(
        token="anon", endpoint_url=endpoint, project="test", skip_instance_cache=True, use_listings_cache=False
    )
    name = f"imgfit-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)

    def keys() -> list[str]:
        fs.invalidate_cache()
        return [p[len(name) + 1 :] for p in fs.find(name)]

    return Bucket(
        "gcs", f"gs://{name}", keys, lambda k: fs.cat_file(f"{name}/{k}"), lambda k, d: fs.pipe_file(f"{name}/{k}", d)
    )


def _azure_bucket(endpoint: str, monkeypatch) -> Bucket:
    from azure.storage.blob import BlobServiceClient

    for var in (
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_STORAGE_CLIENT_ID",
        "AZURE_STORAGE_CLIENT_SECRET",
        "AZURE_STORAGE_TENANT_ID",
    ):
        monkeypatch.delenv(var, raising=False)
    connection = azurite_connection_string(endpoint)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
    name = f"imgfit-{uuid.uuid4().hex[:12]}"
    container = BlobServiceClient.from_connection_string(connection).create_container(name)
    return Bucket(
        "azure",
        f"az://{name}",
        lambda: [b.name for b in container.list_blobs()],
        lambda k: container.download_blob(k).readall(),
        lambda k, d: container.upload_blob(k, d, overwrite=True),
    )


def _local_bucket(tmp_path) -> Bucket:
    root = tmp_path / "store"
    root.mkdir()

    def keys() -> list[str]:
        return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]

    def put(key: str, data: bytes) -> None:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)

    return Bucket("local", str(root), keys, lambda k: (root / k).read_bytes(), put)


STORES = ("local", "s3", "gcs", "azure")


@pytest.fixture(params=STORES)
def bucket(request, tmp_path, monkeypatch) -> Bucket:
    """The same test on every store, each on its real server on loopback (moto, the GCS
    emulator, Azurite) and a folder; the environment points subprocesses at it."""
    monkeypatch.setenv("IMGFIT_S3_RETRY_SECONDS", "20")
    if request.param == "local":
        return _local_bucket(tmp_path)
    if request.param == "s3":
        s3 = request.getfixturevalue("s3")
        return Bucket("s3", f"s3://{s3.bucket}", s3.keys, s3.get, s3.put)
    if request.param == "gcs":
        return _gcs_bucket(request.getfixturevalue("gcs_endpoint"), monkeypatch)
    return _azure_bucket(request.getfixturevalue("azurite_endpoint"), monkeypatch)


# ---------------------------------------------------------------- parallel runs (pytest-xdist)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    """Under `-n N --dist loadgroup` (as .ci/run runs the suite) the tests that drive one
    machine-wide service run on one worker, one after another: the Slurm daemons of
    tests/cluster and the container runtime's image builds. Everything else (servers on
    free ports, tmp_path folders, tmpfs mounts of their own) runs on any worker."""
    for item in items:
        if item.get_closest_marker("slurm") or item.get_closest_marker("container"):
            item.add_marker(pytest.mark.xdist_group("machine-wide"))

"""The job on a CUDA GPU. Marked `cuda`: skipped where no GPU is visible (CI has none;
.ci/run deselects them), run by benchmarks/gpu.sh on a machine with one.

What a GPU session must prove: every kind trains on CUDA; a run interrupted and
resumed on the GPU with train.deterministic is bit-identical; a checkpoint moves
CPU -> CUDA and CUDA -> CPU; precision settings are what the spec's text says;
metrics stay exact; the GPU's peak memory is reported.
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch

from conftest import assert_same_result, read_outputs, run_cli, save_photo, signal_when, tiny_spec, write_spec

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")]

KINDS = {
    "fourier": {"kind": "fourier", "fourier_order": 4, "hidden_size": 32, "num_hidden_layers": 3},
    "skipconn": {"kind": "skipconn", "hidden_size": 32, "num_hidden_layers": 3},
    "hashgrid": {"kind": "hashgrid", "num_levels": 4, "base_resolution": 4, "finest_resolution": 32,
                 "log2_hashmap_size": 10},
    "siren": {"kind": "siren", "hidden_size": 32, "num_hidden_layers": 2},
}


def _spec(tmp_path, kind: str, output: str, **train) -> dict:
    image = str(tmp_path / "photo.png")
    save_photo(image, 48, 32, seed=1)
    spec = tiny_spec(image, output, train={"device": "cuda", "epochs": 8, "batch_size": 256, **train},
                     checkpoint={"every_n_steps": 8})
    spec["model"] = KINDS[kind]
    return spec


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_trains_on_cuda_and_reports_the_gpu_and_its_peak_memory(kind, tmp_path):
    spec = _spec(tmp_path, kind, str(tmp_path / "out"))
    proc = run_cli("run", write_spec(tmp_path / "spec.yaml", spec))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["device"].startswith("cuda (")
    assert summary["peak_memory_mb"]["cuda"] > 0
    assert summary["psnr_db"] > 12  # learned something (a flat grey image scores ~8 dB on this photo)


@pytest.mark.parametrize("kind", ["fourier", "skipconn", "siren"])
def test_deterministic_cuda_run_interrupted_and_resumed_is_bit_identical(kind, tmp_path):
    # long enough that a GPU is still training when the signal comes
    straight = _spec(tmp_path, kind, str(tmp_path / "straight"), deterministic=True, epochs=100)
    assert run_cli("run", write_spec(tmp_path / "a.yaml", straight)).returncode == 0
    want = read_outputs(str(tmp_path / "straight"))

    spec = dict(straight, output=str(tmp_path / "resumed"))
    path = write_spec(tmp_path / "b.yaml", spec)
    code, out, err = signal_when(path, signal.SIGTERM, lambda e: e["event"] == "checkpoint" and e["step"] >= 8)
    assert code == 75, out + err
    proc = run_cli("run", path)
    assert proc.returncode == 0, proc.stderr
    got = read_outputs(str(tmp_path / "resumed"))
    assert got["summary"]["resumes"] == 1
    assert_same_result(got, want)


@pytest.mark.parametrize("first, then", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_checkpoint_moves_between_cpu_and_cuda(first, then, tmp_path):
    spec = _spec(tmp_path, "fourier", str(tmp_path / "out"), device=first, epochs=200)
    path = write_spec(tmp_path / "spec.yaml", spec)
    code, out, err = signal_when(path, signal.SIGTERM, lambda e: e["event"] == "checkpoint" and e["step"] >= 8)
    assert code == 75, out + err
    proc = run_cli("run", path, "--set", f"train.device={then}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["resumes"] == 1 and summary["device"].startswith(then)
    assert summary["steps"] == 200 * 6  # 48x32 pixels / 256 per batch = 6 steps per epoch


def test_precision_settings_mean_what_the_spec_says_on_cuda():
    from imgfit_batch import device as devices

    gpu = torch.device("cuda", torch.cuda.current_device())
    devices.configure(gpu, deterministic=False, threads=None, precision="fp32")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    devices.configure(gpu, deterministic=False, threads=None, precision="auto")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with devices.exact_fp32("cuda"):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert not torch.is_autocast_enabled("cuda")
    assert torch.backends.cuda.matmul.allow_tf32, "restored afterwards"
    devices.configure(gpu, deterministic=True, threads=None, precision="auto")
    assert not torch.backends.cuda.matmul.allow_tf32
    assert devices.native_bf16(gpu) == (torch.cuda.get_device_capability(gpu) >= (8, 0))


def test_metrics_on_cuda_with_tf32_on_match_the_cpu():
    from imgfit_batch import device as devices, metrics

    devices.configure(torch.device("cuda"), deterministic=False, threads=None, precision="auto")  # TF32 on
    rng = np.random.default_rng(0)
    a = 0.9 + 0.01 * rng.random((64, 64, 3))
    b = a + 0.002 * rng.standard_normal((64, 64, 3))
    ta, tb = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    cpu = metrics.ssim(ta, tb).item()
    gpu = metrics.ssim(ta.cuda(), tb.cuda()).item()
    assert abs(gpu - cpu) < 1e-5 and gpu <= 1.0
    assert abs(metrics.psnr(ta.cuda(), tb.cuda()).item() - metrics.psnr(ta, tb).item()) < 1e-4

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
    "hashgrid": {
        "kind": "hashgrid",
        "num_levels": 4,
        "base_resolution": 4,
        "finest_resolution": 32,
        "log2_hashmap_size": 10,
    },
    "siren": {"kind": "siren", "hidden_size": 32, "num_hidden_layers": 2},
}


def _spec(tmp_path, kind: str, output: str, **train) -> dict:
    image = str(tmp_path / "photo.png")
    save_photo(image, 48, 32, seed=1)
    spec = tiny_spec(
        image,
        output,
        train={"device": "cuda", "epochs": 8, "batch_size": 256, **train},
        checkpoint={"every_n_steps": 8},
    )
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
    assert got["summary"]["step"]["graphed"] and want["summary"]["step"]["graphed"], "the graphed step resumes exactly"
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
    from imgfit_batch import device as devices
    from imgfit_batch import metrics

    devices.configure(torch.device("cuda"), deterministic=False, threads=None, precision="auto")  # TF32 on
    rng = np.random.default_rng(0)
    a = 0.9 + 0.01 * rng.random((64, 64, 3))
    b = a + 0.002 * rng.standard_normal((64, 64, 3))
    ta, tb = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    cpu = metrics.ssim(ta, tb).item()
    gpu = metrics.ssim(ta.cuda(), tb.cuda()).item()
    assert abs(gpu - cpu) < 1e-5 and gpu <= 1.0
    assert abs(metrics.psnr(ta.cuda(), tb.cuda()).item() - metrics.psnr(ta, tb).item()) < 1e-4


# ---------------------------------------------------------------- the graphed step (imgfit_batch.graphed)


def _models_and_optimizers(kind: str, channels: int = 3):
    """Two identical models on the GPU, each with the job's fused Adam and an average."""
    from imgfit_batch.specfile import parse_spec
    from imgfit_batch.train import Averager

    model_spec = parse_spec({"image": "a.png", "output": "o", "model": KINDS[kind]}).model
    out = []
    for _ in range(2):
        torch.manual_seed(0)
        model = model_spec.build(channels, 48, 32).cuda()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        out.append((model, optimizer, Averager(model, 0.9)))
    return out


def _steps(step_fn, model, optimizer, averager, batches, lrs):
    losses = []
    for (xy, y), lr in zip(batches, lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr  # as Schedule.apply sets it: a float, each step
        losses.append(step_fn(model, optimizer, xy, y, 0.01, False))
        averager.update(model)
    torch.cuda.synchronize()
    return torch.stack(losses)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_graphed_step_gives_the_eager_steps_result_including_an_epochs_short_last_batch(kind):
    import warnings

    from imgfit_batch.graphed import GraphedStep
    from imgfit_batch.train import train_step

    g = torch.Generator().manual_seed(1)
    sizes = [64, 64, 64, 40, 64, 64, 64, 40]  # two epochs of 232 pixels: the last batch of each is short
    batches = [((torch.rand(n, 2, generator=g) * 2 - 1).cuda(), torch.rand(n, 3, generator=g).cuda()) for n in sizes]
    lrs = [1e-3 * 0.8**i for i in range(len(sizes))]
    (m1, o1, a1), (m2, o2, a2) = _models_and_optimizers(kind)
    eager = _steps(train_step, m1, o1, a1, batches, lrs)
    graphed_step = GraphedStep(a2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback warning would fail the test
        graphed = _steps(graphed_step, m2, o2, a2, batches, lrs)
    assert graphed_step.graphed and len(graphed_step.graphs) == 2, "one graph per batch shape"
    # the same kernels; only Adam's lr comes from a device tensor: equal to fp32 rounding
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-7)
    for (name, p), q in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg=f"weights differ in {name}")
    for p, q in zip(a1.model.parameters(), a2.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg="the average differs")
    assert a1.updates == a2.updates == len(sizes)
    for p in m1.parameters():
        s1, s2 = o1.state[p], o2.state[p]
        assert float(s1["step"]) == float(s2["step"]) == len(sizes), "capture's warm-up steps were undone"


def test_a_step_that_cannot_be_captured_falls_back_to_eager_with_one_warning():
    from imgfit_batch.graphed import GraphedStep
    from imgfit_batch.train import Averager, train_step

    class Syncs(torch.nn.Module):  # .item() inside the forward: a host sync, which capture refuses
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 3)

        def forward(self, xy):
            return self.lin(xy) * (1.0 + 0.0 * float(xy.sum().item()))

    torch.manual_seed(0)
    models = [Syncs().cuda() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2, fused=True) for m in models]
    averagers = [Averager(m, 0.9) for m in models]
    xy, y = torch.rand(32, 2, device="cuda"), torch.rand(32, 3, device="cuda")
    step = GraphedStep(averagers[1])
    with pytest.warns(RuntimeWarning, match="CUDA graph capture of the training step failed") as caught:
        got = _steps(step, models[1], optimizers[1], averagers[1], [(xy, y)] * 4, [1e-2] * 4)
    assert len([w for w in caught if "CUDA graph" in str(w.message)]) == 1, "one warning, not one a step"
    want = _steps(train_step, models[0], optimizers[0], averagers[0], [(xy, y)] * 4, [1e-2] * 4)
    assert step.failed and not step.graphed
    assert torch.equal(got, want), "the fallback is the eager step"
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(p, q)
    for p, q in zip(averagers[0].model.parameters(), averagers[1].model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kind", ["fourier", "skipconn", "siren"])
def test_a_cuda_job_trains_with_the_graphed_step_and_says_so(kind, tmp_path):
    spec = _spec(tmp_path, kind, str(tmp_path / "out"), epochs=2)
    proc = run_cli("run", write_spec(tmp_path / "spec.yaml", spec))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["step"] == {"graphed": True, "capture_failed": None}, summary["step"]
    assert "CUDA graph capture" not in proc.stderr


def test_a_budget_job_on_cuda_records_its_calibrated_recipe(tmp_path):
    image = str(tmp_path / "photo.png")
    save_photo(image, 400, 300, seed=1)  # 120,000 pixels: more than the image-derived batch
    spec = {
        "image": image,
        "output": str(tmp_path / "out"),
        "model": {"kind": "hashgrid"},
        "train": {"color": "rgb", "device": "cuda", "max_seconds": 10},
        "video": {"fps": 4, "max_side": 64},
    }
    proc = run_cli("run", write_spec(tmp_path / "spec.yaml", spec))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    calibration = summary["recipe"]["calibration"]
    assert calibration["device"].startswith("cuda (") and set(calibration["samples_per_second"]) == {"65536", "120000"}
    assert summary["derived"]["train.batch_size"] == summary["recipe"]["chosen"]["train.batch_size"]


# ---------------------------------------------------------------- the film stream (imgfit_batch.film.FilmStream)


@pytest.mark.parametrize("kind", ["hashgrid", "skipconn"])
def test_a_frame_drawn_on_the_film_stream_shows_its_steps_weights_while_the_next_steps_change_them(kind):
    from imgfit_batch.film import FilmStream
    from imgfit_batch.rendering import render_image

    (model, _, _), _ = _models_and_optimizers(kind)
    device = torch.device("cuda")

    def draw(m):
        frame = render_image(m, 1536, 1024, 768, 512, device)  # box-filtered: a long frame, many kernels
        return frame, (frame.float().mean(),)

    with torch.no_grad():
        expected = render_image(model, 1536, 1024, 768, 512, device).cpu()
        stream = FilmStream(device)
        frames = []
        for i in range(3):
            frames.append(stream.film(model, draw))
            for p in model.parameters():  # the next steps, queued on the main stream right behind the frame
                p.mul_(-3.0).add_(1.0)
            if i == 0:
                after = [p.clone() for p in model.parameters()]
        host, (mean,) = frames[0]
        assert torch.equal(host.cpu(), expected), "the frame saw weights changed after its step"
        torch.cuda.synchronize()
        assert mean.item() == pytest.approx(expected.float().mean().item())
        assert not torch.equal(frames[1][0].cpu(), expected), "the second frame must show the changed weights"
        assert torch.equal(frames[1][0].cpu(), render_image(_with(model, after), 1536, 1024, 768, 512, device).cpu())


def _with(model, params):
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        for p, q in zip(other.parameters(), params):
            p.copy_(q)
    return other

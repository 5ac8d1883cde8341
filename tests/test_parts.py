"""Each training part owns its state: what it saves and loads back continues exactly."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from imgfit_batch.checkpoint import CheckpointPolicy, CheckpointStore
from imgfit_batch.data import Pixels
from imgfit_batch.errors import SpecError
from imgfit_batch.film import Filmer
from imgfit_batch.losslog import LogChunks, LossLog
from imgfit_batch.spec import TrainSpec, VideoSpec
from imgfit_batch.train import Averager, Budget, PixelSampler, Schedule


def through_a_checkpoint(state: dict) -> dict:
    """What torch.save + torch.load(weights_only=True) gives back: a checkpoint's round trip."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_sampler_resumed_mid_epoch_continues_the_same_pixel_order():
    a = PixelSampler(num_pixels=103, batch_size=10, seed=7, device=torch.device("cpu"))
    for _ in range(25):  # two epochs and a half (11 batches per epoch)
        a.next_batch()
    b = PixelSampler(num_pixels=103, batch_size=10, seed=7, device=torch.device("cpu"))
    b.load_state_dict(through_a_checkpoint(a.state_dict()))
    for _ in range(30):
        assert torch.equal(a.next_batch(), b.next_batch())
    assert (a.epoch, a.batch) == (b.epoch, b.batch)


def test_sampler_visits_every_pixel_once_per_epoch_in_a_new_order_each_epoch():
    s = PixelSampler(num_pixels=50, batch_size=8, seed=0, device=torch.device("cpu"))
    epochs = [torch.cat([s.next_batch() for _ in range(s.steps_per_epoch)]) for _ in range(2)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(50))
    assert not torch.equal(epochs[0], epochs[1])


def test_budget_plans_once_and_a_resumed_budget_keeps_the_plan():
    b = Budget(epochs=None, steps_per_epoch=5, max_seconds=0.2)
    b.start_clock()
    while b.total_steps is None:
        b.tick()
    plan = b.total_steps
    assert plan >= b.step and b.planned
    state = through_a_checkpoint(b.state_dict())
    resumed = Budget(epochs=None, steps_per_epoch=5, max_seconds=1000.0)  # a clock that would plan otherwise
    resumed.load_state_dict(state)
    assert (resumed.total_steps, resumed.step, resumed.planned) == (plan, b.step, True)
    resumed.start_clock()
    while not resumed.done():
        resumed.tick()
    assert resumed.step == plan and resumed.why() == "max_seconds"


def test_budget_with_epochs_is_epochs_times_steps_and_not_planned():
    b = Budget(epochs=3, steps_per_epoch=4, max_seconds=None)
    b.start_clock()
    while not b.done():
        b.tick()
    assert b.step == 12 and b.why() == "epochs"


def test_step_schedule_is_torch_steplr_per_epoch():
    cfg = TrainSpec(lr=0.003, lr_schedule="step", lr_step_epochs=2, lr_gamma=0.7)
    param = torch.nn.Parameter(torch.zeros(1))
    reference_opt = torch.optim.Adam([param], lr=cfg.lr)
    reference = torch.optim.lr_scheduler.StepLR(reference_opt, step_size=2, gamma=0.7)
    schedule = Schedule(torch.optim.Adam([param], lr=cfg.lr), cfg)
    for epoch in range(9):
        assert schedule.lr(step=epoch * 5, epoch=epoch, total_steps=None) == reference_opt.param_groups[0]["lr"]
        reference_opt.step()
        reference.step()


@pytest.mark.parametrize("shape", ["exponential", "cosine"])
def test_planned_schedule_falls_from_lr_to_lr_final_over_the_planned_steps(shape):
    cfg = TrainSpec(lr=0.01, lr_schedule=shape, lr_final=0.05)
    schedule = Schedule(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr), cfg)
    rates = [schedule.lr(step, 0, total_steps=100) for step in range(100)]
    assert rates[0] == pytest.approx(0.01) and rates[-1] == pytest.approx(0.0005)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert schedule.lr(3, 0, total_steps=None) == 0.01, "before a time budget is planned: lr"


def test_averager_state_round_trips_and_averages():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    avg = Averager(model, decay=0.9)
    for _ in range(20):
        with torch.no_grad():
            model.weight.add_(1.0)
        avg.update(model)
    assert torch.all(avg.model.weight < model.weight), "the average lags the moving weights"
    other = Averager(torch.nn.Linear(3, 2), decay=0.9)
    other.load_state_dict(through_a_checkpoint(avg.state_dict()))
    assert other.updates == 20 and torch.equal(other.model.weight, avg.model.weight)


def test_averager_with_decay_zero_is_the_model_itself():
    model = torch.nn.Linear(2, 1)
    assert Averager(model, 0.0).model is model


def test_loss_log_round_trips_rows_including_unscored_steps(tmp_path):
    log = LossLog(LogChunks(str(tmp_path / "log")))
    log.record(1, 0, torch.tensor(0.5), 0.01)
    log.record(2, 0, torch.tensor(0.25), 0.01, torch.tensor(20.0), torch.tensor(0.9))
    other = LossLog(LogChunks(str(tmp_path / "log")))
    other.load_state_dict(through_a_checkpoint(log.state_dict()))
    assert (
        other.csv() == log.csv() == b"step,epoch,loss,lr,psnr_db,ssim\n1,0,0.5,0.01,,\n2,0,0.25,0.01,20.0000,0.90000\n"
    )
    assert (other.last_loss, other.last_psnr) == (0.25, 20.0)


def test_filmer_state_carries_the_open_segment_and_a_resumed_filmer_continues_it(tmp_path):
    pixels = Pixels(torch.zeros(12 * 8, 1, dtype=torch.uint8), 12, 8)
    cfg = VideoSpec(every_n_steps=1, fps=4)
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Sigmoid())
    a = Filmer(cfg, pixels, torch.device("cpu"), str(tmp_path / "a"), None)
    for step in range(1, 4):
        a.maybe_film(model, step, last=False)
    state = through_a_checkpoint(a.state_dict())
    a.abandon()
    assert state["frames"] == 3 and tuple(state["open_segment"].shape) == (3, 8, 12, 1)
    b = Filmer(cfg, pixels, torch.device("cpu"), str(tmp_path / "b"), None)
    b.load_state_dict(state)
    b.maybe_film(model, 4, last=True)
    assert b.frames == 4
    segments = b.finish(str(tmp_path / "video.mp4"))
    from imgfit_batch.video import count_frames

    assert segments == 1 and count_frames(str(tmp_path / "video.mp4")) == 4


def test_checkpointer_is_due_every_n_steps_and_refuses_a_changed_spec(tmp_path):
    def make(fields):
        return CheckpointPolicy(
            CheckpointStore(str(tmp_path / "checkpoints"), keep=2, warn=lambda m: None),
            every_n_steps=3,
            every_seconds=None,
            result_fields=fields,
            job_state=lambda: {"resumes": 0},
            event=lambda *a, **k: None,
        )

    first = make({"train.lr": 0.1})
    assert [s for s in range(1, 10) if first.due(s)] == [3, 6, 9]
    first.store.save({"parts": {"budget": {"step": 3}}, "result_fields": '{"train.lr": 0.1}', "resumes": 0})
    assert make({"train.lr": 0.1}).resume(first.store.load())[1]["parts"]["budget"]["step"] == 3
    with pytest.raises(SpecError, match="train.lr"):
        make({"train.lr": 0.2}).resume(first.store.load())


def _job_parts(tmp_path, name: str):
    """A job's real training parts for a tiny image, as Job builds them."""
    import numpy as np

    from imgfit_batch.data import Target
    from imgfit_batch.parts import Places, build_parts, pixels_on
    from imgfit_batch.specfile import parse_spec

    spec = parse_spec(
        {
            "image": "x.png",
            "output": str(tmp_path / name),
            "model": {"kind": "fourier", "fourier_order": 2, "hidden_size": 8, "num_hidden_layers": 1},
        }
    )
    cpu = torch.device("cpu")
    pixels = pixels_on(Target(np.zeros((4, 6, 1), np.uint8), "x.png"), cpu)
    return build_parts(spec, pixels, cpu, Places(str(tmp_path / name), str(tmp_path / name)))


def test_a_resumed_optimizer_runs_the_way_this_device_runs_it_not_the_way_the_checkpoint_says(tmp_path):
    written = _job_parts(tmp_path, "a")
    state = through_a_checkpoint(written.state_dict())
    written.filmer.abandon()
    for group in state["optimizer"]["param_groups"]:  # as written where fused Adam was not available
        group.update(fused=None, foreach=True)
    resumed = _job_parts(tmp_path, "b")
    resumed.load_state_dict(state)
    assert [(g["fused"], g["foreach"]) for g in resumed.optimizer.param_groups] == [(True, None)]
    resumed.filmer.abandon()


def test_sampler_state_is_the_same_whatever_device_the_batches_go_to():
    """The order is drawn on the CPU and only copied to the device: a state saved on one
    device (here `meta`, a device with no data, standing in for a GPU) resumes the same
    pixel order on another (CUDA's own generators depend on the GPU model)."""
    cpu = PixelSampler(num_pixels=103, batch_size=10, seed=7, device=torch.device("cpu"))
    elsewhere = PixelSampler(num_pixels=103, batch_size=10, seed=7, device=torch.device("meta"))
    for _ in range(25):
        cpu.next_batch()
        assert elsewhere.next_batch().device.type == "meta"
    saved = through_a_checkpoint(elsewhere.state_dict())
    assert torch.equal(saved["epoch_state"], cpu.state_dict()["epoch_state"])
    resumed = PixelSampler(num_pixels=103, batch_size=10, seed=7, device=torch.device("cpu"))
    resumed.load_state_dict(saved)
    for _ in range(30):
        assert torch.equal(resumed.next_batch(), cpu.next_batch())


# ---------------------------------------------------------------- the CPU's Adam (imgfit_batch.adam)


def _adam_pair():
    from imgfit_batch.adam import FusedAdam

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    twin = copy.deepcopy(model)
    ours = FusedAdam(model.parameters(), lr=3e-3, betas=(0.8, 0.99), eps=1e-7)
    theirs = torch.optim.Adam(twin.parameters(), lr=3e-3, betas=(0.8, 0.99), eps=1e-7, fused=True)
    return (model, ours), (twin, theirs)


def _steps(model, optimizer, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        x, y = torch.rand(64, 2, generator=g), torch.rand(64, 3, generator=g)
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * 0.9**i  # as the schedule sets it
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def _same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_the_cpus_adam_is_torchs_fused_adam_bit_for_bit_and_writes_torchs_state_dict():
    (model, ours), (twin, theirs) = _adam_pair()
    _steps(model, ours, 12, seed=1)
    _steps(twin, theirs, 12, seed=1)
    assert _same_weights(model, twin)
    mine, torchs = ours.state_dict(), theirs.state_dict()
    assert mine["param_groups"] == torchs["param_groups"]
    assert mine["state"].keys() == torchs["state"].keys()
    for i, state in torchs["state"].items():
        assert mine["state"][i].keys() == state.keys()
        for name, value in state.items():
            assert value.dtype == mine["state"][i][name].dtype and torch.equal(value, mine["state"][i][name]), name


@pytest.mark.parametrize("direction", ["ours -> torch", "torch -> ours"])
def test_a_checkpoint_of_the_cpus_adam_and_of_torchs_resume_in_each_other_exactly(direction):
    from imgfit_batch.adam import FusedAdam

    (model, ours), (twin, theirs) = _adam_pair()
    first, then = (ours, theirs) if direction == "ours -> torch" else (theirs, ours)
    first_model, then_model = (model, twin) if first is ours else (twin, model)
    _steps(first_model, first, 5, seed=2)
    then_model.load_state_dict(first_model.state_dict())
    then.load_state_dict(through_a_checkpoint(first.state_dict()))
    reference = copy.deepcopy(first_model)
    ref_optimizer = torch.optim.Adam(reference.parameters(), lr=3e-3, fused=True)
    ref_optimizer.load_state_dict(through_a_checkpoint(first.state_dict()))
    _steps(then_model, then, 7, seed=3)
    _steps(reference, ref_optimizer, 7, seed=3)
    assert _same_weights(then_model, reference), "resumed in the other optimizer, the steps differ"
    assert isinstance(ours, FusedAdam)


def test_a_cpu_job_builds_the_cpus_adam_and_never_imports_torch_dynamo(tmp_path):
    import subprocess
    import sys

    from imgfit_batch.adam import FusedAdam

    code = (
        "import sys, torch\n"
        "from imgfit_batch.adam import FusedAdam\n"
        "p = torch.nn.Parameter(torch.ones(3)); o = FusedAdam([p], lr=0.1)\n"
        "p.grad = torch.ones(3); o.step(); o.zero_grad()\n"
        "print('torch._dynamo' in sys.modules, p.grad is None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True"]
    parts = _job_parts(tmp_path, "c")
    assert isinstance(parts.optimizer, FusedAdam)
    parts.filmer.abandon()

"""The training loop and the parts it drives.

    while not budget.done():
        lr = schedule.apply(step, epoch)          # StepLR by epoch (the seed's), or planned in steps
        idx = sampler.next_batch()                # this epoch's pixel order, a slice at a time
        loss = train_step(model, optimizer, ...)  # the seed's math: MSE, backward, clip, Adam
        budget.tick()                             # counts the step; plans the steps of a time budget
        averager.update(model)                    # the weights the film and the final image use
        maybe film a frame; log the step; maybe checkpoint; stop on a signal

Each stateful part owns its `state_dict()`; a checkpoint is the union of the
parts' states (`Parts.state_dict`), so a resumed run continues bit for bit and
adding a part adds its state without touching the others. Losses stay on the
device until the log is flushed, so a step never waits for the GPU.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from imgfit_batch.data import Pixels
from imgfit_batch.errors import Interrupted, UnavailableError
from imgfit_batch.losslog import LossLog
from imgfit_batch.spec import TrainSpec

if TYPE_CHECKING:  # the loop's collaborators, as types only
    from imgfit_batch.checkpoint import CheckpointPolicy
    from imgfit_batch.film import Filmer
    from imgfit_batch.tensorboard_log import EventLog


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    xy: torch.Tensor,
    y: torch.Tensor,
    grad_clip: float,
    bf16: bool,
) -> torch.Tensor:
    """One optimisation step on a batch: xy (B, 2) coordinates, y (B, C) targets in [0, 1]."""
    with torch.autocast(xy.device.type, dtype=torch.bfloat16, enabled=bf16):
        pred = model(xy)
    loss = F.mse_loss(pred.float(), y)  # the loss in fp32 even when the matmuls are bf16
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


class PixelSampler:
    """Each epoch visits every pixel once, in an order drawn from one seeded generator.

    The order is drawn on the CPU and copied to the device, so the same state gives
    the same order on any device. Batches are consecutive slices of it (the last
    one of an epoch may be shorter). State: epoch, batch, and the generator state
    the current epoch's order was drawn from.
    """

    def __init__(self, num_pixels: int, batch_size: int, seed: int, device: torch.device):
        self.num_pixels, self.device = num_pixels, device
        self.batch_size = min(batch_size, num_pixels)
        self.steps_per_epoch = math.ceil(num_pixels / self.batch_size)
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        self.epoch_state = self.generator.get_state()
        self.epoch = 0
        self.batch = 0  # next batch within the epoch
        self._order: torch.Tensor | None = None

    def next_batch(self) -> torch.Tensor:
        if self._order is None:
            self.generator.set_state(self.epoch_state)
            # int32 (4 bytes a pixel, half of int64's: a gigapixel image's order is 4 GB): the same
            # permutation as int64's, value for value, so checkpoints of either resume alike
            dtype = torch.int32 if self.num_pixels < 2**31 else torch.int64
            self._order = torch.randperm(self.num_pixels, generator=self.generator, dtype=dtype).to(self.device)
        idx = self._order[self.batch * self.batch_size : (self.batch + 1) * self.batch_size]
        self.batch += 1
        if self.batch == self.steps_per_epoch:
            self.epoch, self.batch, self._order = self.epoch + 1, 0, None
            self.epoch_state = self.generator.get_state()
        return idx

    def release(self) -> None:
        """Drop this epoch's order (training is over); a next_batch would draw it again."""
        self._order = None

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.batch / self.steps_per_epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "epoch_state": self.epoch_state}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.epoch_state, self._order = state["epoch_state"], None


class Budget:
    """How many steps the run takes, and the training clock.

    With `epochs`: epochs x steps per epoch (`max_seconds`, if also set, is then a
    hard stop). With only `max_seconds`: the steps are planned once, from the
    speed measured over the first steps, and the plan is part of the state, so a
    resumed run takes exactly the planned steps whatever its clock says. Should the
    machine turn out much slower than planned, the run still stops at
    OVERRUN x max_seconds.
    """

    OVERRUN = 1.5

    def __init__(self, epochs: int | None, steps_per_epoch: int, max_seconds: float | None):
        self.max_seconds = max_seconds
        self.total_steps: int | None = epochs * steps_per_epoch if epochs else None
        self.planned = False  # total_steps came from the clock
        self.step = 0
        self.train_seconds = 0.0
        self.stop_reason: str | None = None
        self._first_step_seconds: float | None = None
        self._clock: tuple[float, float] | None = None
        # of train_seconds, how long the loop waited on filming and on checkpoints (summed over resumes)
        self.waited = {"film": 0.0, "checkpoint": 0.0}

    @contextlib.contextmanager
    def waiting(self, what: str):
        """Time the loop spends inside: on a GPU, what a frame or a checkpoint made training wait for."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.waited[what] += time.monotonic() - t0

    def start_clock(self) -> None:
        self._clock = (time.monotonic(), self.train_seconds)

    def tick(self) -> None:
        """One step was taken."""
        assert self._clock is not None  # start_clock() comes first
        started, before = self._clock
        self.step += 1
        self.train_seconds = before + (time.monotonic() - started)
        budget = self.max_seconds
        if budget is None:
            return
        if self.total_steps is None:
            self._maybe_plan(budget)
        elif self.train_seconds >= (self.OVERRUN * budget if self.planned else budget):
            self.stop_reason = "max_seconds"

    def _maybe_plan(self, budget: float) -> None:
        """Plan once the speed was measured over a tenth of the budget (at most 30 s)."""
        if self._first_step_seconds is None:
            self._first_step_seconds = self.train_seconds  # the first step pays for warm-up; not measured
        measured = self.train_seconds - self._first_step_seconds
        if self.train_seconds >= budget:
            self.total_steps = self.step
        elif self.step >= 3 and measured >= min(0.1 * budget, 30.0):
            per_step = measured / (self.step - 1)
            self.total_steps = self.step + int((budget - self.train_seconds) / per_step)
        else:
            return
        self.planned = True

    def done(self) -> bool:
        return self.stop_reason is not None or (self.total_steps is not None and self.step >= self.total_steps)

    def why(self) -> str:
        if self.stop_reason:
            return self.stop_reason
        return "max_seconds" if self.planned else "epochs"

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "total_steps": self.total_steps or 0,
            "planned": self.planned,
            "stop_reason": self.stop_reason or "",
            "first_step_seconds": -1.0 if self._first_step_seconds is None else self._first_step_seconds,
            "waited": dict(self.waited),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])
        self.planned, self.stop_reason = bool(state["planned"]), state["stop_reason"] or None
        if self.planned:
            self.total_steps = int(state["total_steps"])
        first = float(state["first_step_seconds"])
        self._first_step_seconds = None if first < 0 else first
        self.waited.update({k: float(v) for k, v in state.get("waited", {}).items()})  # older checkpoints: none


class Schedule:
    """The learning rate of each step: a pure function of (step, epoch, planned steps).

    step: the seed's StepLR, lr x gamma every `lr_step_epochs` epochs (multiplied
    out as StepLR does). exponential / cosine: from lr at the first step to
    lr x lr_final at the last planned step; until a time budget is planned, lr.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainSpec):
        self.optimizer, self.cfg = optimizer, cfg

    def lr(self, step: int, epoch: int, total_steps: int | None) -> float:
        # the spec's validator fills lr from the kind's defaults and requires each schedule's settings
        cfg, lr = self.cfg, self.cfg.lr
        assert lr is not None
        if cfg.lr_schedule == "step":
            assert cfg.lr_step_epochs is not None and cfg.lr_gamma is not None
            for _ in range(epoch // cfg.lr_step_epochs):
                lr *= cfg.lr_gamma
            return lr
        if not total_steps:
            return lr
        final = cfg.lr_final
        assert final is not None
        t = min(step / max(total_steps - 1, 1), 1.0)
        if cfg.lr_schedule == "exponential":
            return lr * final**t
        return lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t)))

    def apply(self, step: int, epoch: int, total_steps: int | None) -> float:
        lr = self.lr(step, epoch, total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr


class Averager:
    """An exponential moving average of the weights (Polyak averaging, as Instant-NGP's
    optimizer keeps one): frames and the final image come from it, so the film does
    not flicker with each step's noise. The decay ramps up over the first steps,
    (1 + n) / (10 + n), so early frames are not dominated by the initial weights.
    decay 0: no copy; `model` is the trained network itself."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model) if decay > 0 else model
        self.updates = 0
        self.in_graph = False  # a graphed step (imgfit_batch.graphed) moves the weights; update() only counts

    def decay_at(self, n: int) -> float:
        """The decay of the n-th update."""
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        if self.decay == 0:
            return
        self.updates += 1
        if self.in_graph:
            return
        decay = self.decay_at(self.updates)
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        if self.decay == 0:
            return {"updates": 0}
        return {"updates": self.updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        if self.decay > 0:
            self.model.load_state_dict(state["weights"])


class RandomState:
    """torch's global generators (the CPU's, and the GPU's when training on one)."""

    def __init__(self, device: torch.device):
        self.device = device

    def state_dict(self) -> dict:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["cpu"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)


@dataclass
class Parts:
    """Everything the loop reads and changes. `state_dict()` is a checkpoint's training state."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    pixels: Pixels
    sampler: PixelSampler
    budget: Budget
    schedule: Schedule
    averager: Averager
    filmer: Filmer  # imgfit_batch.film.Filmer
    log: LossLog  # the open chunk's rows; sealed chunks live in checkpoints/log/ (imgfit_batch.losslog)
    rng: RandomState
    cfg: TrainSpec
    bf16: bool  # train_step under bf16 autocast
    step_fn: Callable[..., torch.Tensor] = train_step  # graphed.pick_step: a CUDA graph on CUDA

    # a part added later gives older checkpoints a `missing_state()` (its documented default), else they are refused
    STATEFUL = ("model", "optimizer", "sampler", "budget", "averager", "filmer", "log", "rng")

    def state_dict(self) -> dict:
        return {name: getattr(self, name).state_dict() for name in self.STATEFUL}

    def send_events_to(self, events: EventLog) -> None:
        """TensorBoard: the loss log's rows and the filmer's frames go to `events` too."""
        self.log.events = self.filmer.events = events

    def marker(self) -> dict:
        """What a checkpoint's marker tells without loading it (outputs.Marker; `status` reads it)."""
        return {
            "total_steps": self.budget.total_steps,
            "epoch": self.sampler.epoch,
            "frames": self.filmer.frames,
            "loss": self.log.last_loss,
            "psnr_db": self.log.last_psnr,
            "train_seconds": round(self.budget.train_seconds, 3),
        }

    def load_state_dict(self, state: dict) -> None:
        # how Adam runs is this process's choice, not the checkpoint's: a checkpoint
        # written on another device (or torch) carries that device's fused/foreach flags
        how: list[dict[str, Any]] = [
            {k: group[k] for k in ("fused", "foreach", "capturable") if k in group}
            for group in self.optimizer.param_groups
        ]
        for name in self.STATEFUL:
            part = getattr(self, name)
            if name not in state:  # a checkpoint from before this part existed
                default = getattr(part, "missing_state", None)  # a part's documented default, where it has one
                if default is None:
                    raise UnavailableError(
                        f"the checkpoint holds no state for the training part {name!r} (it was written before that "
                        "part existed); resume with the imgfit-batch version that wrote it, or rerun with --restart"
                    )
                part.load_state_dict(default())
                continue
            part.load_state_dict(state[name])
        for group, flags in zip(self.optimizer.param_groups, how):
            group.update(flags)


def train(
    parts: Parts,
    checkpointer: CheckpointPolicy,
    stop_requested: Callable[[], str | None],
    report: Callable[[Parts], None],
) -> str:
    """Train until the budget is spent; returns why it stopped ("epochs" or "max_seconds").
    A stop signal checkpoints and raises Interrupted."""
    p = parts
    p.budget.start_clock()
    while not p.budget.done():
        epoch = p.sampler.epoch
        lr = p.schedule.apply(p.budget.step, epoch, p.budget.total_steps)
        xy, y = p.pixels.batch(p.sampler.next_batch())
        loss = p.step_fn(p.model, p.optimizer, xy, y, p.cfg.grad_clip, p.bf16)
        p.budget.tick()
        p.averager.update(p.model)
        with p.budget.waiting("film"):
            scores = p.filmer.maybe_film(p.averager.model, p.budget.step, last=p.budget.done())
        p.log.record(p.budget.step, epoch, loss, lr, *scores)
        if (signal := stop_requested()) is not None:
            checkpointer.save(p, f"signal {signal}", wait=True)
            report(p)  # loss.csv up to this checkpoint
            raise Interrupted(
                f"by {signal} at step {p.budget.step}; checkpoint saved to {checkpointer.folder}; "
                "run the same command again to resume"
            )
        if checkpointer.due(p.budget.step) and not p.budget.done():
            with p.budget.waiting("checkpoint"):
                checkpointer.save(p, "periodic")
        report(p)  # progress lines, loss.csv
    return p.budget.why()

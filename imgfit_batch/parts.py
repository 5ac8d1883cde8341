"""Building the training parts (imgfit_batch.train.Parts) from a resolved spec.

One place assembles model, optimizer, averager and step: the job trains with what
`build_parts` returns, and the recipe's calibration times a throwaway set built by
the same function, so what it measures is the step the job will run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from imgfit_batch import adam as fused_adam
from imgfit_batch import device as devices
from imgfit_batch import outputs, storage
from imgfit_batch.data import Pixels, Target
from imgfit_batch.film import Filmer
from imgfit_batch.graphed import pick_step
from imgfit_batch.losslog import LogChunks, LossLog
from imgfit_batch.spec import JobSpec, TrainSpec
from imgfit_batch.train import Averager, Budget, Parts, PixelSampler, RandomState, Schedule


@dataclass(frozen=True)
class Places:
    """Where the parts keep their files: `local` is the output's folder on this machine (a
    temp folder when the output is remote), `output` the output location itself."""

    local: str
    output: str

    @property
    def checkpoints(self) -> str:
        """OUTPUT/checkpoints/ on this machine: the open video segment, the loss log's chunks."""
        return os.path.join(self.local, outputs.CHECKPOINTS)

    def remote(self, folder: str) -> str | None:
        """OUTPUT/checkpoints/<folder> on a remote store (closed segments, sealed chunks), else None."""
        if not storage.is_remote(self.output):
            return None
        return storage.join(storage.join(self.output, outputs.CHECKPOINTS), folder)


def pixels_on(target: Target, device: torch.device) -> Pixels:
    """The target on the device, uint8 (a CPU device shares the decoded array)."""
    return Pixels(torch.from_numpy(target.pixels.reshape(-1, target.channels)).to(device), target.width, target.height)


def build_parts(spec: JobSpec, pixels: Pixels, device: torch.device, places: Places) -> Parts:
    """The training parts, fresh (a checkpoint's state is loaded into them afterwards).
    Nothing is written until they train."""
    cfg = spec.train
    torch.manual_seed(cfg.seed)
    model = spec.model.build(pixels.channels, pixels.width, pixels.height).to(device)
    optimizer = make_optimizer(model, cfg)
    assert cfg.batch_size is not None and cfg.ema_decay is not None  # set: by the spec, its kind or for_image
    sampler = PixelSampler(pixels.num_pixels, cfg.batch_size, cfg.seed, device)
    averager = Averager(model, cfg.ema_decay)
    return Parts(
        model=model,
        optimizer=optimizer,
        pixels=pixels,
        sampler=sampler,
        budget=Budget(cfg.epochs, sampler.steps_per_epoch, cfg.max_seconds),
        schedule=Schedule(optimizer, cfg),
        averager=averager,
        filmer=Filmer(spec.video, pixels, device, places.checkpoints, places.remote("video")),
        log=LossLog(LogChunks(os.path.join(places.checkpoints, "log"), places.remote("log"))),
        rng=RandomState(device),
        cfg=cfg,
        bf16=use_bf16(cfg, model, device),
        step_fn=pick_step(device, averager),
    )


def make_optimizer(model: torch.nn.Module, cfg: TrainSpec) -> Any:
    """Fused Adam (one pass, no temporaries: 3x on the CPU): on the CPU our FusedAdam, the same
    kernel without torch.optim's 0.9 s import of torch._dynamo; on CUDA torch's, which the
    graphed step captures."""
    adam: dict[str, Any] = {k: v for k, v in (("eps", cfg.adam_eps), ("betas", cfg.adam_betas)) if v is not None}
    assert cfg.lr is not None  # filled from the kind's defaults by JobSpec's validation
    if next(model.parameters()).device.type == "cpu" and fused_adam.available():
        return fused_adam.FusedAdam(model.parameters(), lr=cfg.lr, **adam)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True, **adam)


def use_bf16(cfg: TrainSpec, model: torch.nn.Module, device: torch.device) -> bool:
    """Whether the step runs under bf16 autocast: asked for, or `auto` on a model that gains
    from it on a device with native bf16."""
    return cfg.precision == "bf16" or (
        cfg.precision == "auto" and getattr(model, "bf16_when_native", False) and devices.native_bf16(device)
    )


def calibration_step(spec: JobSpec, pixels: Pixels, device: torch.device, places: Places) -> Callable[[int], None]:
    """One real training step (model, loss, backward, clip, Adam, the average) at a given
    batch, on a throwaway set of parts built as the job builds its own (it films nothing
    and writes nothing); the job's own generators are left untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        parts = build_parts(spec, pixels, device, places)
    generator = torch.Generator().manual_seed(0)
    batches: dict[int, torch.Tensor] = {}

    def step(batch: int) -> None:
        if batch not in batches:
            batches[batch] = torch.randint(0, pixels.num_pixels, (batch,), generator=generator).to(device)
        xy, y = pixels.batch(batches[batch])
        parts.step_fn(parts.model, parts.optimizer, xy, y, spec.train.grad_clip, parts.bf16)
        parts.averager.update(parts.model)

    return step

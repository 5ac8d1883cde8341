"""The training loop: the seed's algorithm, done the fast way.

The whole target lives on the device as uint8 (N, C). Each epoch is a
permutation of pixel indices drawn from a seeded generator; batches are slices
of it; coordinates are computed from the indices. Losses stay on the device
until someone logs them, so a step never waits for the GPU.

Everything that decides what happens next (weights, Adam, StepLR, epoch,
position in the epoch, the generator state the epoch's permutation came from,
the frame counter, the loss log) is in `state_dict()`, so a resumed run
continues bit for bit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional, Protocol

import torch
import torch.nn.functional as F

from imgfit_batch import metrics
from imgfit_batch.data import coords
from imgfit_batch.render import frame_dtype, native_bf16, render
from imgfit_batch.spec import TrainSpec, VideoSpec


class Hooks(Protocol):
    def frame(self, trainer: "Trainer", image: torch.Tensor) -> None: ...
    def after_step(self, trainer: "Trainer") -> None: ...


@dataclass
class LogRow:
    step: int
    epoch: int
    loss: float
    lr: float
    psnr_db: float  # nan where no frame was scored
    ssim: float = math.nan  # every SSIM_EVERY_N_FRAMES-th frame and the last

    CSV_HEADER = "step,epoch,loss,lr,psnr_db,ssim"

    def csv(self) -> str:
        psnr = "" if math.isnan(self.psnr_db) else f"{self.psnr_db:.4f}"
        ssim = "" if math.isnan(self.ssim) else f"{self.ssim:.5f}"
        return f"{self.step},{self.epoch},{self.loss!r},{self.lr!r},{psnr},{ssim}"


SSIM_EVERY_N_FRAMES = 10  # SSIM costs a few image-sized convolutions: score every 10th frame


def psnr_db(pred_u8: torch.Tensor, target_u8: torch.Tensor) -> torch.Tensor:
    """PSNR of two uint8 images of one shape, as a device tensor (no sync)."""
    mse = (pred_u8.float() - target_u8.float()).square().mean() / (255.0 * 255.0)
    return -10 * torch.log10(mse.clamp_min(1e-12))


class Trainer:
    def __init__(self, model: torch.nn.Module, train: TrainSpec, video: VideoSpec, target: torch.Tensor,
                 width: int, height: int, frame_width: int, frame_height: int, device: torch.device):
        self.model, self.cfg, self.video_cfg = model, train, video
        self.target, self.width, self.height = target, width, height  # target: (N, C) uint8 on device
        self.frame_width, self.frame_height = frame_width, frame_height
        self.device = device
        self.frame_dtype = frame_dtype(video.precision, device)  # frames in bf16 where native: ~2x cheaper
        self.train_bf16 = train.precision == "bf16" or (
            train.precision == "auto" and getattr(model, "bf16_when_native", False) and native_bf16(device))
        self.num_pixels = width * height
        self.batch_size = min(train.batch_size, self.num_pixels)
        self.steps_per_epoch = math.ceil(self.num_pixels / self.batch_size)
        self.total_steps: Optional[int] = train.epochs * self.steps_per_epoch if train.epochs else None

        fused = device.type == "cuda"
        adam = {k: v for k, v in (("eps", train.adam_eps), ("betas", train.adam_betas)) if v is not None}
        self.optimizer = torch.optim.Adam(model.parameters(), lr=train.lr, fused=fused or None, **adam)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=train.lr_step_epochs, gamma=train.lr_gamma)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(train.seed)
        self.epoch_generator_state = self.generator.get_state()

        self.step = 0  # optimizer steps taken
        self.epoch = 0
        self.batch = 0  # next batch within the epoch
        self.frames = 0
        self.train_seconds = 0.0
        self.rows: list[LogRow] = []
        self._unlogged: list[tuple[int, int, torch.Tensor, float, Optional[torch.Tensor], Optional[torch.Tensor]]] = []
        self._stop_reason: Optional[str] = None

    # ------------------------------------------------------------ the loop

    def train(self, hooks: Hooks) -> str:
        """Train until the epochs or the time budget are done; returns why it stopped."""
        perm = self._permutation()
        started, base_seconds = time.monotonic(), self.train_seconds
        while not self.finished():
            idx = perm[self.batch * self.batch_size : (self.batch + 1) * self.batch_size]
            loss = self.train_step(idx)
            self.step += 1
            self.batch += 1
            self.train_seconds = base_seconds + (time.monotonic() - started)
            if self.cfg.max_seconds is not None and self.train_seconds >= self.cfg.max_seconds:
                self._stop_reason = "max_seconds"
            psnr = ssim = None
            if self.step % self.video_cfg.every_n_steps == 0 or self.finished():
                psnr, ssim = self.render_frame(hooks)
            self._unlogged.append((self.step, self.epoch, loss.detach(), self.optimizer.param_groups[0]["lr"], psnr, ssim))
            if self.batch == self.steps_per_epoch:
                self.scheduler.step()
                self.epoch += 1
                self.batch = 0
                self.epoch_generator_state = self.generator.get_state()
                if not self.finished():
                    perm = self._permutation()
            hooks.after_step(self)  # logging, checkpoints, signals (may raise Interrupted)
        return self.stop_reason

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        xy = coords(idx, self.width, self.height)  # (B, 2)
        y = self.target[idx].to(torch.float32) / 255.0  # (B, C)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.train_bf16):
            pred = self.model(xy)
        loss = F.mse_loss(pred.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return loss

    def render_frame(self, hooks: Hooks) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Render, score against the target when full size (device tensors, no sync), film it."""
        image = render(self.model, self.frame_width, self.frame_height, self.device, autocast_dtype=self.frame_dtype)  # (h, w, C) uint8
        self.frames += 1
        psnr = ssim = None
        if (self.frame_width, self.frame_height) == (self.width, self.height):
            psnr = psnr_db(image.view(-1, image.shape[-1]), self.target)
            if self.frames % SSIM_EVERY_N_FRAMES == 0 or self.finished():
                ssim = metrics.ssim(image.float() / 255, self.target.view(image.shape).float() / 255)
        hooks.frame(self, image)
        return psnr, ssim

    @property
    def stop_reason(self) -> str:
        """Why training ended (or will): "max_seconds" or "epochs"."""
        return self._stop_reason or "epochs"

    def finished(self) -> bool:
        if self._stop_reason is not None:
            return True
        return self.total_steps is not None and self.step >= self.total_steps

    def _permutation(self) -> torch.Tensor:
        self.generator.set_state(self.epoch_generator_state)
        return torch.randperm(self.num_pixels, generator=self.generator, device=self.device)

    # ------------------------------------------------------------ logging

    def flush_log(self) -> list[LogRow]:
        """Turn device-side losses into rows (one host sync). Returns the new rows."""
        if not self._unlogged:
            return []
        # one host sync for everything logged since the last flush
        scalars = [t for _, _, loss, _, p, s in self._unlogged for t in (loss, p, s) if t is not None]
        values = iter(torch.stack([t.detach().float().reshape(()) for t in scalars]).double().tolist())
        new = []
        for step, epoch, _, lr, psnr, ssim in self._unlogged:
            loss_v = next(values)
            psnr_v = next(values) if psnr is not None else math.nan
            ssim_v = next(values) if ssim is not None else math.nan
            new.append(LogRow(step, epoch, loss_v, lr, psnr_v, ssim_v))
        self._unlogged.clear()
        self.rows.extend(new)
        return new

    @property
    def last_psnr(self) -> Optional[float]:
        for row in reversed(self.rows):
            if not math.isnan(row.psnr_db):
                return row.psnr_db
        return None

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict:
        self.flush_log()
        rows = self.rows
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "epoch_generator_state": self.epoch_generator_state,
            "generator_device": self.device.type,
            "torch_rng": torch.get_rng_state(),
            "frames": self.frames,
            "train_seconds": self.train_seconds,
            "stop_reason": self._stop_reason or "",
            "log": {
                "step": torch.tensor([r.step for r in rows], dtype=torch.int64),
                "epoch": torch.tensor([r.epoch for r in rows], dtype=torch.int64),
                "loss": torch.tensor([r.loss for r in rows], dtype=torch.float64),
                "lr": torch.tensor([r.lr for r in rows], dtype=torch.float64),
                "psnr_db": torch.tensor([r.psnr_db for r in rows], dtype=torch.float64),
                "ssim": torch.tensor([r.ssim for r in rows], dtype=torch.float64),
            },
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch = int(state["step"]), int(state["epoch"]), int(state["batch"])
        self.frames, self.train_seconds = int(state["frames"]), float(state["train_seconds"])
        self._stop_reason = state.get("stop_reason") or None
        if state.get("generator_device") == self.device.type:
            self.epoch_generator_state = state["epoch_generator_state"]
        else:  # moved between CPU and CUDA: the permutations differ from here on
            self.generator.manual_seed(self.cfg.seed + self.epoch)
            self.epoch_generator_state = self.generator.get_state()
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        log = state["log"]
        ssims = log["ssim"].tolist() if "ssim" in log else [math.nan] * len(log["step"])
        self.rows = [
            LogRow(int(s), int(e), float(l), float(r), float(p), float(q))
            for s, e, l, r, p, q in zip(log["step"].tolist(), log["epoch"].tolist(), log["loss"].tolist(),
                                        log["lr"].tolist(), log["psnr_db"].tolist(), ssims)
        ]
        self._unlogged.clear()

"""The training step as one CUDA graph: captured once per batch shape, then replayed.

A step of a small network on a GPU waits on the CPU's kernel launches (README, GPU
configuration: the seed's 300 x 30 SkipConn launched ~550 kernels a step and kept the
GPU busy 22 % of the time). Replaying a captured graph launches the whole step --
forward, loss, backward, grad-norm clip, Adam, the weight average -- as one.

    step(model, optimizer, xy, y, grad_clip, bf16)     # the signature of train.train_step
        copy xy, y into this shape's static inputs      # a full batch, or an epoch's short last one
        lr and the average's weight into device tensors # no host sync, no re-capture when they change
        replay this shape's graph (capture it the first time: a few warm-up steps on a side
        stream, then every weight, Adam moment and average restored, so capturing changes
        nothing the eager step would not)
        return a copy of the static loss                # the log keeps it until it is flushed

Static shapes: one graph per batch size, so the last, shorter batch of an epoch gets its
own (two graphs in all), with the same arithmetic as the eager step (no padding, no
weighted loss). Adam runs with capturable=True and the lr as a device tensor; its
state is the eager step's, so a checkpoint moves between graphed and eager runs.
Where capture fails (an op that syncs with the host, a model or torch that cannot be
captured) the step falls back to eager for the rest of the run, with one warning.
On the CPU there is no graph: `pick_step` returns the eager step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from imgfit_batch.errors import ImgfitWarning
from imgfit_batch.train import Averager, train_step

WARMUP_STEPS = 3  # eager steps on a side stream before capture (lazy init: cuBLAS handles, Adam's state)


class GraphedStep:
    def __init__(self, averager: Averager | None = None):
        self.averager = averager if averager is not None and averager.decay > 0 else None
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.failed: str | None = None  # why capture failed: eager from then on
        self.lr: torch.Tensor | None = None
        self.ema_weight: torch.Tensor | None = None

    @property
    def graphed(self) -> bool:
        return self.failed is None and bool(self.graphs)

    def __call__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        xy: torch.Tensor,
        y: torch.Tensor,
        grad_clip: float,
        bf16: bool,
    ) -> torch.Tensor:
        if self.failed is not None:
            return self._eager(model, optimizer, xy, y, grad_clip, bf16)
        lr = optimizer.param_groups[0]["lr"]
        lr = float(lr) if not torch.is_tensor(lr) else lr  # Schedule.apply sets a float each step
        key = (tuple(xy.shape), tuple(y.shape), xy.dtype, y.dtype)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(model, optimizer, xy, y, grad_clip, bf16)
                for group in optimizer.param_groups:
                    group["lr"] = lr  # the graph reads self.lr; state_dict() keeps the float the eager step has
            except Exception as exc:  # capture is best effort: the eager step is always right
                self._give_up(exc, optimizer, lr)
                return self._eager(model, optimizer, xy, y, grad_clip, bf16)
        graph, static_xy, static_y, static_loss = self.graphs[key]
        static_xy.copy_(xy)
        static_y.copy_(y)
        self._set_scalars(lr)
        graph.replay()
        return static_loss.clone()  # the next replay overwrites static_loss

    # ------------------------------------------------------------ the step's body

    def _body(self, model, optimizer, xy, y, grad_clip, bf16) -> torch.Tensor:
        """train_step's arithmetic, then the average's update, reading the lr and weight from device tensors."""
        loss = train_step(model, optimizer, xy, y, grad_clip, bf16)
        if self.averager is not None:
            with torch.no_grad():
                mine: list[torch.Tensor] = list(self.averager.model.parameters())
                theirs: list[torch.Tensor] = list(model.parameters())
                assert self.ema_weight is not None  # made by _capture with self.lr
                # the eager update's arithmetic with the weight read on the device: a list of tensor weights is
                # the overload that does (a 0-dim tensor as the one weight is read with .item(), a host sync
                # that fails capture); on the CPU bit for bit the float weight's result
                weights: list[torch.Tensor] = [self.ema_weight] * len(mine)
                torch._foreach_lerp_(mine, theirs, weights)
                for a, b in zip(self.averager.model.buffers(), model.buffers()):
                    a.copy_(b)
        return loss

    def _set_scalars(self, lr: float | torch.Tensor) -> None:  # a tensor where the caller set one
        assert self.lr is not None and self.ema_weight is not None  # both made by _capture, first thing
        self.lr.fill_(lr)
        if self.averager is not None:
            # the eager Averager.update's weight for the update about to happen
            self.ema_weight.fill_(1 - self.averager.decay_at(self.averager.updates + 1))

    def _eager(self, model, optimizer, xy, y, grad_clip, bf16) -> torch.Tensor:
        return train_step(model, optimizer, xy, y, grad_clip, bf16)

    # ------------------------------------------------------------ capture

    def _capture(self, model, optimizer, xy, y, grad_clip, bf16):
        device = xy.device
        if self.lr is None:
            self.lr = torch.zeros((), dtype=torch.float32, device=device)
            self.ema_weight = torch.zeros((), dtype=torch.float32, device=device)
        for group in optimizer.param_groups:
            group["capturable"] = True
            group["lr"] = self.lr
        params = list(model.parameters())
        averaged = list(self.averager.model.parameters()) if self.averager is not None else []
        had_state = {p for p in params if optimizer.state.get(p)}
        saved = [(t, t.detach().clone()) for t in params + averaged]
        saved += [(v, v.detach().clone()) for p in had_state for v in optimizer.state[p].values() if torch.is_tensor(v)]
        static_xy, static_y = xy.clone(), y.clone()
        self._set_scalars(0.0)  # lr 0 for the warm-up steps (undone below in any case)
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._body(model, optimizer, static_xy, static_y, grad_clip, bf16)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            optimizer.zero_grad(set_to_none=True)
            # thread_local: the video writer's thread may copy a frame to the host meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_loss = self._body(model, optimizer, static_xy, static_y, grad_clip, bf16)
            torch.cuda.synchronize(device)
        finally:  # undo the warm-up: the weights, the average and Adam's state are as before
            with torch.no_grad():
                for tensor, value in saved:
                    tensor.copy_(value)
                for p in params:
                    if p not in had_state:  # Adam's fresh state is zeros (step 0, both moments 0)
                        for v in optimizer.state.get(p, {}).values():
                            if torch.is_tensor(v):
                                v.zero_()
            torch.cuda.synchronize(device)
        if self.averager is not None:
            self.averager.in_graph = True  # its update now only counts: the graph moves its weights
        return graph, static_xy, static_y, static_loss

    def _give_up(self, exc: Exception, optimizer: torch.optim.Optimizer, lr) -> None:
        self.failed = " ".join(str(exc).split())[:300] or type(exc).__name__
        self.graphs.clear()
        for group in optimizer.param_groups:
            group["lr"] = lr  # this step's rate (the device tensor held the warm-up's 0)
        if self.averager is not None:
            self.averager.in_graph = False
        warnings.warn(
            f"CUDA graph capture of the training step failed ({self.failed}); training goes on with the "
            "eager step (same results, more kernel launches)",
            ImgfitWarning,
            stacklevel=3,
        )


def pick_step(device: torch.device, averager: Averager | None = None) -> Callable[..., torch.Tensor]:
    """The step function for `device`: train_step itself on the CPU (bit for bit today's); on
    CUDA the same step captured as a CUDA graph, with `averager`'s update inside it
    (imgfit_batch.graphed), falling back to train_step where capture fails."""
    if device.type != "cuda":
        return train_step
    return GraphedStep(averager)

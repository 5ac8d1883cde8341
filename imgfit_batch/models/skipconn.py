"""The original networks: SkipConn and Fourier (SkipConn over Fourier features).

Both map pixel coordinates (x, y) in [-1, 1] to intensities in [0, 1]; see the
contract's "The seed's model, exactly".
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from imgfit_batch.device import exact_fp32
from imgfit_batch.models.budget_field import max_parameters_field

# Training settings that reproduce the original train.py (the contract's "seed").
SKIPCONN_TRAIN_DEFAULTS = {
    "epochs": 20,
    "batch_size": 8000,
    "lr": 1e-3,
    "lr_step_epochs": 3,
    "lr_gamma": 0.5,
    "grad_clip": 0.01,
    "lr_schedule": "step",
    "ema_decay": 0.0,
}


class SkipConn(nn.Module):
    """MLP in which each hidden layer sees the two previous activations and the input.

    a0 = act(W_in z); a_i = act(W_i [a_{i-1}, a_{i-2}, z]); y = (tanh(W_out [a_n, a_{n-1}, z]) + 1) / 2.
    The concatenations are computed as sums of matmuls against column blocks of each
    weight: the same parameters and the same math, without copying activations into
    concatenated buffers (2.1x faster per training step than torch.cat on a CPU,
    benchmarks/micro_step.py). Each layer's z-block is its own addmm: slicing one wide
    z-matmul instead makes every slice's backward zero-fill the whole wide gradient.

    `coordinates`: the columns of z that are raw coordinates (all of them for the plain
    SkipConn; u_x and u_y among the Fourier features), the inputs that reduced precision
    must never round (`_forward_bf16`).
    """

    def __init__(
        self,
        in_features: int,
        hidden_size: int,
        num_hidden_layers: int,
        out_features: int,
        coordinates: slice = slice(None),
    ):
        super().__init__()
        h = hidden_size
        self.in_features, self.hidden_size, self.coordinates = in_features, hidden_size, coordinates
        self.in_layer = nn.Linear(in_features, h)
        self.hidden = nn.ModuleList(
            nn.Linear(h + (h if i > 0 else 0) + in_features, h) for i in range(num_hidden_layers)
        )
        self.out_layer = nn.Linear((2 * h if num_hidden_layers > 0 else h) + in_features, out_features)
        # in place: every pre-activation is a fresh matmul output, and autograd then keeps
        # the activation only, not the pre-activation too (less memory per training step)
        self.act = nn.LeakyReLU(inplace=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(z.device.type):
            return self._forward_bf16(z, torch.get_autocast_dtype(z.device.type))
        if z.is_cuda and torch.backends.cuda.matmul.allow_tf32:
            return self._forward_tf32(z)
        h, d = self.hidden_size, self.in_features
        cur, prev = self.act(self.in_layer(z)), None  # (N, h)
        for layer in [*self.hidden, self.out_layer]:
            if prev is None:
                w_cur, w_z = layer.weight.split([h, d], 1)
                y = torch.addmm(torch.addmm(layer.bias, z, w_z.t()), cur, w_cur.t())
            else:
                w_cur, w_prev, w_z = layer.weight.split([h, h, d], 1)
                y = torch.addmm(torch.addmm(torch.addmm(layer.bias, z, w_z.t()), cur, w_cur.t()), prev, w_prev.t())
            if layer is self.out_layer:
                return (torch.tanh(y) + 1) / 2
            prev, cur = cur, self.act(y)
        raise AssertionError("unreachable")

    def _forward_bf16(self, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The same network with its matmuls in bf16 (under autocast), each tensor cast
        once: z once per call, each weight once per layer; activations stay bf16.

        The raw coordinates are never rounded: bf16 keeps 8 bits, so 1024 columns would
        become ~730 distinct x values and no layer could tell the others apart. Each
        enters as the pair hi = bf16(u), lo = bf16(u - hi), whose sum is u to 16 bits;
        both meet the same bf16 weight column inside one matmul that accumulates in
        fp32, so every layer sees u, not its rounding. The bounded sin/cos features are
        rounded like any activation. The output layer's z-block, bias and sum are IEEE
        fp32 (N x C: nothing to gain there), so the output is not rounded either."""
        h, d, x = self.hidden_size, self.in_features, self.coordinates
        hi = z.to(dtype)  # (N, d)
        lo = (z[:, x] - hi[:, x].float()).to(dtype)  # (N, 2): what bf16 dropped from the coordinates
        zx = torch.cat([hi, lo], 1)  # (N, d + 2)

        def pre_activation(layer: nn.Linear, acts: list[torch.Tensor]) -> torch.Tensor:
            *w_acts, w_z = layer.weight.to(dtype).split([h] * len(acts) + [d], 1)
            y = torch.addmm(layer.bias.to(dtype), zx, torch.cat([w_z, w_z[:, x]], 1).t())
            for a, w in zip(acts, w_acts):
                y = torch.addmm(y, a, w.t())
            return y  # (N, h) bf16

        cur, prev = self.act(pre_activation(self.in_layer, [])), None
        for layer in self.hidden:  # nn.Linear each (ModuleList is not generic)
            prev, cur = cur, self.act(pre_activation(cast(nn.Linear, layer), [cur] if prev is None else [cur, prev]))
        layer, acts = self.out_layer, [cur] if prev is None else [cur, prev]
        *w_acts, w_z = layer.weight.split([h] * len(acts) + [d], 1)
        y = torch.mm(acts[0], w_acts[0].to(dtype).t())
        if len(acts) > 1:
            y = torch.addmm(y, acts[1], w_acts[1].to(dtype).t())  # (N, C) bf16
        with exact_fp32(z.device.type):
            y = torch.addmm(layer.bias, z, w_z.t()) + y.float()
        return (torch.tanh(y) + 1) / 2

    def _forward_tf32(self, z: torch.Tensor) -> torch.Tensor:
        """The same network when fp32 matmuls run in TF32 (CUDA): the blocks that read
        the input z stay IEEE fp32, so coordinates are never rounded to TF32's 10 bits;
        only the hidden blocks, which carry nearly all the FLOPs, run at reduced
        precision."""
        h, d = self.hidden_size, self.in_features
        with exact_fp32(z.device.type):
            cur = self.act(self.in_layer(z))
        prev = None
        for layer in [*self.hidden, self.out_layer]:
            if prev is None:
                w_cur, w_z = layer.weight.split([h, d], 1)
            else:
                w_cur, w_prev, w_z = layer.weight.split([h, h, d], 1)
            with exact_fp32(z.device.type):
                y = torch.addmm(layer.bias, z, w_z.t())
            y = y + torch.mm(cur, w_cur.t())
            if prev is not None:
                y = y + torch.mm(prev, w_prev.t())
            if layer is self.out_layer:
                return (torch.tanh(y) + 1) / 2
            prev, cur = cur, self.act(y)
        raise AssertionError("unreachable")


class FourierFeatures(nn.Module):
    """CenteredLinearMap [-1, 1] -> [-pi, pi], then for each coordinate u:
    sin(k u), cos(k u) for k = 1..K, and u itself (4K + 2 features for (x, y))."""

    orders: torch.Tensor  # a buffer: 1..K

    def __init__(self, order: int):
        super().__init__()
        self.register_buffer("orders", torch.arange(1, order + 1, dtype=torch.float32), persistent=False)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        u = (xy * math.pi).unsqueeze(-1)  # (N, 2, 1)
        ku = u * self.orders  # (N, 2, K)
        return torch.cat([torch.sin(ku), torch.cos(ku), u], dim=-1).flatten(1)  # (N, 2(2K+1))


class Fourier(nn.Module):
    # matmul-bound: train.precision auto trains under bf16 autocast where bf16 is native
    # (2.2x per step on an AVX512-BF16 CPU, same PSNR; benchmarks/micro_step.py)
    bf16_when_native = True

    def __init__(self, fourier_order: int, hidden_size: int, num_hidden_layers: int, out_features: int):
        super().__init__()
        self.features = FourierFeatures(fourier_order)
        # per coordinate u: sin(k u) for k = 1..K, cos(k u), then u itself: u_x and u_y are raw
        k = fourier_order
        self.net = SkipConn(
            4 * k + 2, hidden_size, num_hidden_layers, out_features, coordinates=slice(2 * k, 4 * k + 2, 2 * k + 1)
        )

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return self.net(self.features(xy))


class SkipConnNet(nn.Module):
    """SkipConn straight on the mapped coordinates (the seed's plain model)."""

    bf16_when_native = True

    def __init__(self, hidden_size: int, num_hidden_layers: int, out_features: int):
        super().__init__()
        self.net = SkipConn(2, hidden_size, num_hidden_layers, out_features)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return self.net(xy * math.pi)


class _SkipConnConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train_defaults: ClassVar[dict] = SKIPCONN_TRAIN_DEFAULTS

    max_parameters: int | None = max_parameters_field()
    hidden_size: int = Field(300, ge=1, le=8192, description="Width of every hidden layer of the SkipConn MLP.")
    num_hidden_layers: int = Field(30, ge=0, le=512, description="Number of hidden layers of the SkipConn MLP.")


class FourierConfig(_SkipConnConfigBase):
    kind: Literal["fourier"] = Field("fourier", description="The seed's model: Fourier features into a SkipConn MLP.")
    fourier_order: int = Field(
        32, ge=1, le=1024, description="K: sin/cos of k*u for k = 1..K per coordinate (4K+2 features)."
    )

    def build(self, out_features: int, width: int | None = None, height: int | None = None) -> nn.Module:
        return Fourier(self.fourier_order, self.hidden_size, self.num_hidden_layers, out_features)


class SkipConnConfig(_SkipConnConfigBase):
    kind: Literal["skipconn"] = Field(description="SkipConn MLP on the raw (x, y) coordinates, no Fourier features.")

    def build(self, out_features: int, width: int | None = None, height: int | None = None) -> nn.Module:
        return SkipConnNet(self.hidden_size, self.num_hidden_layers, out_features)

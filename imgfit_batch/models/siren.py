"""SIREN: an MLP with sine activations (Sitzmann et al. 2020).

Layer i computes sin(omega_0 * (W_i x + b_i)). Initialisation as in the paper, so
that pre-activations stay roughly unit-variant through depth: the first layer's
weights U(-1/in, 1/in) (with omega_0 = 30 its sines span ~30 periods over [-1, 1]);
every later layer's U(-sqrt(6/in)/omega_0, sqrt(6/in)/omega_0). The last layer is
linear with the same bound; its output y is read as an intensity in [-1, 1] (the
paper's normalisation) and mapped to (y + 1) / 2, clamped to [0, 1] with a
straight-through gradient. The network ignores autocast and computes in fp32.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from imgfit_batch.models.budget_field import max_parameters_field
from imgfit_batch.models.hashgrid import clamp_unit_straight_through

# Measured on a 2-core CPU (docs/models.md): every full-image frame costs a full
# forward pass, so moderately large batches win over the paper's full-image steps
# (too few steps) and over small ones (frames dominate).
SIREN_TRAIN_DEFAULTS = {
    "epochs": 100,
    "batch_size": 1 << 16,
    "lr": 1e-3,
    "lr_step_epochs": 25,
    "lr_gamma": 0.5,
    "grad_clip": 0.0,
}


class SineLayer(nn.Module):
    def __init__(self, in_features: int, out_features: int, omega_0: float, is_first: bool):
        super().__init__()
        self.omega_0 = omega_0
        self.linear = nn.Linear(in_features, out_features)
        bound = 1 / in_features if is_first else math.sqrt(6 / in_features) / omega_0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega_0 * self.linear(x))


class Siren(nn.Module):
    def __init__(
        self, hidden_size: int, num_hidden_layers: int, first_omega_0: float, hidden_omega_0: float, out_features: int
    ):
        super().__init__()
        layers = [SineLayer(2, hidden_size, first_omega_0, is_first=True)]
        layers += [
            SineLayer(hidden_size, hidden_size, hidden_omega_0, is_first=False) for _ in range(num_hidden_layers)
        ]
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(hidden_size, out_features)
        bound = math.sqrt(6 / hidden_size) / hidden_omega_0
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        # Always fp32, even under autocast: bf16's ~3 significant digits in W x + b become
        # phase errors of radians once multiplied by omega_0 = 30 (frames turn to noise).
        with torch.autocast(xy.device.type, enabled=False):
            y = self.head(self.layers(xy.float()))  # in [-1, 1] by convention
        return clamp_unit_straight_through((y + 1) * 0.5)


class SirenConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train_defaults: ClassVar[dict] = SIREN_TRAIN_DEFAULTS

    kind: Literal["siren"] = Field(description="SIREN: an MLP with sine activations and the paper's initialisation.")
    max_parameters: int | None = max_parameters_field()
    hidden_size: int = Field(64, ge=1, le=4096, description="Width of every sine layer.")
    num_hidden_layers: int = Field(
        3,
        ge=0,
        le=64,
        description="Sine layers after the first one (the paper's image fit: 3 at width 256; 64 wide is what a "
        "CPU can train in a minute).",
    )
    first_omega_0: float = Field(
        30.0,
        gt=0,
        le=10_000,
        description="omega_0 of the first layer: sin(omega_0 (W x + b)); higher fits finer detail but noisier.",
    )
    hidden_omega_0: float = Field(
        30.0, gt=0, le=10_000, description="omega_0 of the later sine layers (their init bound is divided by it)."
    )

    def build(self, out_features: int, width: int | None = None, height: int | None = None) -> nn.Module:
        return Siren(self.hidden_size, self.num_hidden_layers, self.first_omega_0, self.hidden_omega_0, out_features)

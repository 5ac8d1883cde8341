"""Multiresolution hash encoding (Instant-NGP, Müller et al. 2022) with a small decoder.

Level l is a grid of N_l cells per side (N_l + 1 vertices) over [-1, 1]^2, the
resolutions spaced geometrically from `base_resolution` to `finest_resolution`.
Each vertex owns F learnable features; a point's features are the bilinear blend
of its cell's 4 corners; the L levels' features are concatenated and decoded.

Two ways to find a vertex's features, both pure PyTorch:
- dense levels ((N_l + 1)^2 <= 2^T): the level is a (F, N_l+1, N_l+1) texture and
  `grid_sample` does the 4-corner lookup and blend. Its CPU/CUDA kernels are an
  order of magnitude faster than a generic gather + scatter (the backward is the
  expensive part of any grid encoding; see benchmarks/quality.py).
- hashed levels: vertex (i, j) -> (i ^ j * 2654435761) mod 2^T into a table of
  2^T rows, all hashed levels and corners gathered in one `embedding_bag` and the
  gradient scattered back with one `index_add_` (custom autograd function).

The decoder maps the L*F features to the outputs: an MLP of `hidden_size` x
`num_hidden_layers` ReLU layers, or (0 layers) one linear layer. The output is
clamped to [0, 1] with a straight-through gradient, so a pixel pushed past the
range still gets pulled back (a plain clamp would freeze it; a sigmoid would need
infinite logits for the many pure-black/white pixels of a photograph).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

# Measured on a 2-core CPU (docs/models.md, benchmarks/quality.py). Full-image batches
# (one step per epoch for up to 512x512) make every step a deterministic full-gradient
# step, so StepLR(1, 0.95) is an exponential decay per step. Adam with beta1 0.9 keeps
# overshooting each table entry's target (39.7 dB after 50 steps on a 512^2 RGB photo);
# beta1 0.5 / beta2 0.9 damps that (55 dB after 30 steps). eps 1e-15: a table entry's
# gradient is ~1/(H*W) of its pixel's error, far below PyTorch's default eps of 1e-8.
HASHGRID_TRAIN_DEFAULTS = {
    "epochs": 100,
    "batch_size": 1 << 18,
    "lr": 5e-2,
    "lr_step_epochs": 1,
    "lr_gamma": 0.95,
    "grad_clip": 0.0,
    "adam_eps": 1e-15,
    "adam_betas": (0.5, 0.9),
}

_PRIME = 2654435761  # the y-coordinate multiplier of Instant-NGP's spatial hash


def level_resolutions(num_levels: int, base: int, finest: int) -> list[int]:
    """Cells per side of each level: geometric from base to finest, strictly increasing."""
    if num_levels == 1:
        return [finest]
    growth = math.exp((math.log(finest) - math.log(base)) / (num_levels - 1))
    out: list[int] = []
    for level in range(num_levels):
        res = int(math.floor(base * growth**level + 0.5))
        out.append(max(res, out[-1] + 1) if out else res)
    return out


def clamp_unit_straight_through(y: torch.Tensor) -> torch.Tensor:
    """clamp(y, 0, 1) in the forward pass, identity in the backward pass."""
    return y + (y.clamp(0.0, 1.0) - y).detach()


class _HashedLookup(torch.autograd.Function):
    """out[k] = sum_j weights[k, j] * table[index[k, j]]; backward scatters into the table."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        rows, corners = index.shape
        offsets = torch.arange(0, rows * corners, corners, device=index.device)
        out = F.embedding_bag(index.reshape(-1), table, offsets, mode="sum", per_sample_weights=weights.reshape(-1))
        ctx.save_for_backward(index, weights)
        ctx.table_shape = table.shape
        return out  # (rows, F)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        index, weights = ctx.saved_tensors
        contrib = (weights.unsqueeze(-1) * grad_out.unsqueeze(1)).reshape(-1, grad_out.shape[-1])  # (rows*4, F)
        grad_table = torch.zeros(ctx.table_shape, dtype=grad_out.dtype, device=grad_out.device)
        grad_table.index_add_(0, index.reshape(-1), contrib)
        return grad_table, None, None


class HashGridEncoding(nn.Module):
    def __init__(self, num_levels: int, features_per_level: int, log2_hashmap_size: int,
                 base_resolution: int, finest_resolution: int, init_scale: float = 1e-4):
        super().__init__()
        self.resolutions = level_resolutions(num_levels, base_resolution, finest_resolution)
        self.features_per_level = features_per_level
        self.table_size = 1 << log2_hashmap_size
        self.dense_levels = [l for l, r in enumerate(self.resolutions) if (r + 1) ** 2 <= self.table_size]
        self.hashed_levels = [l for l, r in enumerate(self.resolutions) if (r + 1) ** 2 > self.table_size]
        feat = features_per_level
        # uniform init in [-init_scale, init_scale], as in Instant-NGP: features start near 0
        # and the decoder sees an almost constant input at step 0.
        self.dense = nn.ParameterList(
            nn.Parameter(torch.empty(1, feat, self.resolutions[l] + 1, self.resolutions[l] + 1).uniform_(-init_scale, init_scale))
            for l in self.dense_levels
        )
        self.hashed = nn.Parameter(
            torch.empty(len(self.hashed_levels) * self.table_size, feat).uniform_(-init_scale, init_scale)
        )
        hashed_res = torch.tensor([self.resolutions[l] for l in self.hashed_levels], dtype=torch.float32)
        self.register_buffer("hashed_res", hashed_res, persistent=False)
        self.register_buffer(
            "hashed_offsets", torch.arange(len(self.hashed_levels), dtype=torch.int64) * self.table_size, persistent=False
        )

    @property
    def out_features(self) -> int:
        return len(self.resolutions) * self.features_per_level

    def hashed_indices(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Table rows and bilinear weights of the 4 corners at every hashed level: (N, Lh, 4) each."""
        u = ((xy.clamp(-1.0, 1.0) + 1.0) * 0.5).unsqueeze(1)  # (N, 1, 2) in [0, 1]
        res = self.hashed_res.view(1, -1, 1)  # (1, Lh, 1)
        pos = u * res  # (N, Lh, 2)
        cell = torch.minimum(pos.floor(), res - 1)  # a point on the far edge stays in the last cell
        frac = pos - cell  # (N, Lh, 2) in [0, 1]
        cell = cell.long()
        ix, iy = cell[..., 0], cell[..., 1]
        # corners in the order (0,0), (1,0), (0,1), (1,1)
        cx = torch.stack([ix, ix + 1, ix, ix + 1], -1)  # (N, Lh, 4)
        cy = torch.stack([iy, iy, iy + 1, iy + 1], -1)
        rows = ((cx ^ (cy * _PRIME)) & (self.table_size - 1)) + self.hashed_offsets.view(1, -1, 1)
        fx, fy = frac[..., 0], frac[..., 1]
        wx = torch.stack([1 - fx, fx, 1 - fx, fx], -1)
        wy = torch.stack([1 - fy, 1 - fy, fy, fy], -1)
        return rows, wx * wy

    def forward_sum(self, xy: torch.Tensor) -> torch.Tensor:
        """The levels' features summed instead of concatenated: (N, F)."""
        n = xy.shape[0]
        grid = xy.view(1, n, 1, 2)
        total = None
        for texture in self.dense:
            sampled = F.grid_sample(texture, grid, mode="bilinear", padding_mode="border", align_corners=True)
            total = sampled if total is None else total + sampled  # (1, F, N, 1)
        total = total.view(self.features_per_level, n).t() if total is not None else 0
        if self.hashed_levels:
            rows, weights = self.hashed_indices(xy)
            lh = len(self.hashed_levels)
            feats = _HashedLookup.apply(self.hashed, rows.view(n * lh, 4), weights.view(n * lh, 4))
            total = total + feats.view(n, lh, self.features_per_level).sum(1)
        return total

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        n = xy.shape[0]
        per_level: list[torch.Tensor] = [None] * len(self.resolutions)  # type: ignore[list-item]
        # grid_sample: x indexes columns (width), y indexes rows; align_corners maps -1/+1 to the
        # first/last vertex, so a level of N cells has exactly N+1 vertices over [-1, 1].
        grid = xy.view(1, n, 1, 2)
        for level, texture in zip(self.dense_levels, self.dense):
            sampled = F.grid_sample(texture, grid, mode="bilinear", padding_mode="border", align_corners=True)
            per_level[level] = sampled.view(self.features_per_level, n).t()  # (N, F)
        if self.hashed_levels:
            rows, weights = self.hashed_indices(xy)
            lh = len(self.hashed_levels)
            feats = _HashedLookup.apply(self.hashed, rows.view(n * lh, 4), weights.view(n * lh, 4))
            feats = feats.view(n, lh, self.features_per_level)
            for j, level in enumerate(self.hashed_levels):
                per_level[level] = feats[:, j]
        return torch.cat(per_level, dim=1)  # (N, L*F)


class HashGridSum(nn.Module):
    """No decoder: each level stores the outputs themselves and the levels add up
    (a learned Laplacian pyramid). Every table entry moves the output directly, so
    Adam's per-entry step is a step in intensity, not one damped by decoder weights."""

    def __init__(self, encoding: HashGridEncoding):
        super().__init__()
        self.encoding = encoding
        self.bias = nn.Parameter(torch.full((encoding.features_per_level,), 0.5))

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return clamp_unit_straight_through(self.encoding.forward_sum(xy) + self.bias)


class HashGrid(nn.Module):
    def __init__(self, encoding: HashGridEncoding, hidden_size: int, num_hidden_layers: int, out_features: int):
        super().__init__()
        self.encoding = encoding
        layers: list[nn.Module] = []
        width = encoding.out_features
        for _ in range(num_hidden_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU()]
            width = hidden_size
        head = nn.Linear(width, out_features)
        nn.init.constant_(head.bias, 0.5)  # start mid-gray: half the first steps' error of 0
        layers.append(head)
        self.decoder = nn.Sequential(*layers)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return clamp_unit_straight_through(self.decoder(self.encoding(xy)))


class HashGridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train_defaults: ClassVar[dict] = HASHGRID_TRAIN_DEFAULTS

    kind: Literal["hashgrid"] = Field(description="Multiresolution hash encoding (Instant-NGP): levels summed (default) or decoded by a small MLP.")
    num_levels: int = Field(8, ge=1, le=32, description="L: number of grid levels, resolutions spaced geometrically.")
    features_per_level: int = Field(2, ge=1, le=16, description="F: learnable features per grid vertex and level (decoder linear or mlp; with sum, F is the number of outputs).")
    log2_hashmap_size: int = Field(21, ge=8, le=26, description="T: each hashed level has 2^T table rows; levels with (res+1)^2 <= 2^T are stored densely.")
    base_resolution: int = Field(16, ge=1, le=1 << 16, description="Cells per side of the coarsest level over [-1, 1].")
    finest_resolution: int = Field(1024, ge=1, le=1 << 20, description="Cells per side of the finest level; around the image's longer side resolves single pixels.")
    hidden_size: int = Field(64, ge=1, le=4096, description="Width of the decoder MLP's hidden layers (decoder: mlp).")
    num_hidden_layers: int = Field(1, ge=1, le=16, description="Hidden layers of the decoder MLP (decoder: mlp).")
    decoder: Literal["sum", "linear", "mlp"] = Field(
        "sum", description="sum: each level stores the outputs and the levels add up (features_per_level, hidden_size "
        "and num_hidden_layers unused); linear: one linear layer on the L*F features; mlp: hidden_size x "
        "num_hidden_layers ReLU layers, then a linear layer.")
    init_scale: float = Field(1e-4, ge=0, le=1, description="Grid features start uniform in [-init_scale, init_scale].")

    @model_validator(mode="after")
    def _finest_not_below_base(self):
        if self.finest_resolution < self.base_resolution:
            raise ValueError(f"finest_resolution ({self.finest_resolution}) must be >= base_resolution ({self.base_resolution})")
        return self

    def build(self, out_features: int, width: int | None = None, height: int | None = None) -> nn.Module:
        features = out_features if self.decoder == "sum" else self.features_per_level
        encoding = HashGridEncoding(self.num_levels, features, self.log2_hashmap_size,
                                    self.base_resolution, self.finest_resolution, self.init_scale)
        if self.decoder == "sum":
            return HashGridSum(encoding)
        layers = self.num_hidden_layers if self.decoder == "mlp" else 0
        return HashGrid(encoding, self.hidden_size, layers, out_features)

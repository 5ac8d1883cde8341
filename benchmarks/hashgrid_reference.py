"""FROZEN BASELINE: the hash grid encoding as it was before the `hashgrid-fast` rewrite
(imgfit_batch/models/hashgrid.py at commit 3f9cb37), kept verbatim so that
benchmarks/hashgrid_speed.py can time the old and the new implementation side by side
in one process. Not used by the package; do not optimise or "fix" it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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

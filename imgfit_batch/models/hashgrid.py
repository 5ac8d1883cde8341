"""Multiresolution hash encoding (Instant-NGP, Müller et al. 2022) with a small decoder.

Level l is a grid of rx x ry cells ((rx+1) x (ry+1) vertices) over [-1, 1]^2, the
resolutions spaced geometrically from `base_resolution` to `finest_resolution`. Given
the image size, a level's resolution applies to the image's longer side and the shorter
side gets proportionally fewer cells (`level_shapes`), so no capacity is spent outside
a 16:9 photo's aspect; without it every level is square. Each vertex owns F learnable
features; a point's features are the bilinear blend of its cell's 4 corners; the L
levels' features are summed (decoder "sum") or concatenated and decoded.

Two ways to find a vertex's features, both pure PyTorch:
- dense levels ((rx+1)(ry+1) <= 2^T): the level is a (F, ry+1, rx+1) texture and
  `grid_sample` does the 4-corner lookup and blend (fast forward and backward kernels).
- hashed levels: vertex (i, j) -> (i ^ j * 2654435761) mod 2^T into a table of
  2^T rows; all hashed levels' corners are computed with int32 arithmetic in a
  level-major layout, gathered in one `embedding_bag`, and the gradient built level by
  level with `bincount` (custom autograd function, deterministic; on CUDA `index_add_`,
  which needs no host sync, so a CUDA graph can capture the step).
A training batch is processed in row-major order of its points' finest cells, so the
backward's scatters walk the tables almost sequentially; the output keeps the caller's
order. (benchmarks/hashgrid_speed.py times it; the comparison with the previous
implementation used benchmarks/hashgrid_reference.py at commit 34c6362, in git history.)

The decoder maps the L*F features to the outputs: an MLP of `hidden_size` x
`num_hidden_layers` ReLU layers, or (0 layers) one linear layer. The output is
clamped to [0, 1] with a straight-through gradient, so a pixel pushed past the
range still gets pulled back (a plain clamp would freeze it; a sigmoid would need
infinite logits for the many pure-black/white pixels of a photograph).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from imgfit_batch.models.budget_field import max_parameters_field

# Training settings for every image size (benchmarks/photos.py and docs/models.md say
# how they were measured). What depends on the image's size -- the grid, the table,
# the batch and how often a frame is filmed -- is derived by HashGridConfig.derive.
HASHGRID_TRAIN_DEFAULTS = {
    "epochs": 100,
    "lr": 1e-2,
    "lr_schedule": "cosine",
    "lr_final": 0.01,
    "grad_clip": 0.0,
    "adam_eps": 1e-15,
    "adam_betas": (0.9, 0.99),
    "ema_decay": 0.9,
}


def derived_layout(width: int, height: int) -> dict:
    """Grid, table and batch for a width x height image (values a spec leaves unset).

    Measured on real photographs (docs/models.md, benchmarks/photos.py): what limits a
    large photo in a budget of minutes is how often each grid vertex is visited, not the
    grid's size. A grid finer than the visits can train turns into speckle, so the
    finest level shrinks from one cell per pixel (up to 1 MP, where a budget buys many
    epochs) to about half a cell per pixel at 12-24 MP: (1 MP / pixels)^(1/4) of the
    longer side, at least 0.35 of it. Levels are spaced by ~1.5x from 16 cells; the
    table has 2-4 rows a pixel (images up to ~1 MP are stored densely), capped at 2^22
    rows so a 50 MP photo's parameters, gradients, Adam moments and average stay within
    ~1.5 GB. Batches of 2^16 pixels: more, cheaper steps beat fewer big ones at equal
    samples (3 epochs of a photo: 34.6 dB with 2^16-sized steps vs 29.6 dB with 4x
    bigger ones).
    """
    longest, pixels = max(width, height), width * height
    scale = min(1.0, max(0.35, (1e6 / pixels) ** 0.25))
    finest = max(16, round(longest * scale))
    num_levels = max(2, min(16, 1 + math.ceil(math.log(finest / 16) / math.log(1.5))))
    log2_table = max(18, min(22, math.ceil(math.log2(max(pixels, 2))) + 1))
    return {
        "num_levels": num_levels,
        "finest_resolution": finest,
        "log2_hashmap_size": log2_table,
        "batch_size": min(1 << 16, pixels),
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


def level_shapes(resolutions: list[int], width: int | None = None, height: int | None = None) -> list[tuple[int, int]]:
    """(cells along x, cells along y) of each level. A level's resolution applies to the
    image's longer side; the shorter side gets max(1, round(res * short / long)) cells, so
    cells are (nearly) square in pixels. Without an image size (None) every level is square."""
    if width is None or height is None or width == height:
        return [(r, r) for r in resolutions]
    long_side, short_side = max(width, height), min(width, height)
    shapes = []
    for r in resolutions:
        s = max(1, int(math.floor(r * short_side / long_side + 0.5)))
        shapes.append((r, s) if width >= height else (s, r))
    return shapes


def _vertex_band(p, pos, w, out: int, cells: int, device):
    """Footprint triplets (output p, position in cells, weight) spread onto a level's
    vertices by the bilinear (hat) weights of each position: a Banded map from the
    cells + 1 vertices to the `out` outputs."""
    import numpy as np

    from imgfit_batch.rendering import Banded

    v0 = np.clip(np.floor(pos), 0, cells - 1)
    f = pos - v0
    return Banded.build(
        np.concatenate([p, p]),
        np.concatenate([v0, v0 + 1]).astype(np.int64),
        np.concatenate([w * (1 - f), w * f]),
        out,
        cells + 1,
        device,
    )


class _ClampUnitStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        return y.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def clamp_unit_straight_through(y: torch.Tensor) -> torch.Tensor:
    """clamp(y, 0, 1) in the forward pass, identity in the backward pass (one kernel)."""
    return _ClampUnitStraightThrough.apply(y)


class _Gather(torch.autograd.Function):
    """rows = x.index_select(0, order) for a permutation `order` (`inverse` its inverse):
    the backward is a gather too (no scatter, no zero-filled gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class _HashedLookup(torch.autograd.Function):
    """Bilinear lookups of the Lh hashed levels at N points, one bag of 4 corner rows per
    (level, point): out[l, b] = sum_c weights[l, b, c] * table[index[l, b, c]], one
    `embedding_bag` for all levels (summed over the levels when `summed`).

    The backward builds each level's block of the dense table gradient with `bincount`, a
    serial loop: the same result bit for bit on every run. One level at a time keeps its
    temporaries at a few tens of MB; on points sorted by position (see `_lookup`) its
    writes walk the table almost sequentially."""

    @staticmethod
    def forward(ctx, table, index, weights, table_size, summed):
        nl, n, _ = index.shape
        out = F.embedding_bag(
            index.view(nl * n, 4), table, mode="sum", per_sample_weights=weights.view(nl * n, 4).to(table.dtype)
        ).view(nl, n, table.shape[1])
        ctx.save_for_backward(index, weights)
        ctx.table_size = table_size
        ctx.table_shape = table.shape
        return out.sum(0) if summed else out  # (N, F) or (Lh, N, F)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        index, weights = ctx.saved_tensors
        rows, feat = ctx.table_shape
        grad_out = grad_out.to(torch.float32)
        spread = torch.arange(feat, dtype=index.dtype, device=index.device)
        parts = []
        for level in range(index.shape[0]):
            g = grad_out if grad_out.dim() == 2 else grad_out[level]  # (N, F)
            keys = torch.addcmul(
                spread - level * ctx.table_size * feat, index[level].unsqueeze(-1), spread.new_tensor(feat)
            )
            vals = weights[level].unsqueeze(-1) * g.unsqueeze(1)  # (N, 4, F)
            if (
                keys.is_cuda
            ):  # CUDA's bincount reads its input's max on the host (no graph capture) and adds atomically anyway
                part = vals.new_zeros(ctx.table_size * feat).index_add_(0, keys.view(-1), vals.view(-1))
            else:
                part = torch.bincount(keys.view(-1), vals.view(-1), minlength=ctx.table_size * feat)
            parts.append(part)
        grad_table = (torch.cat(parts) if len(parts) > 1 else parts[0]).view(rows, feat)
        return grad_table, None, None, None, None


class HashGridEncoding(nn.Module):
    """Level l has rx x ry cells ((rx+1) x (ry+1) vertices) over [-1, 1]^2 (x along the
    image's width); each vertex owns F features. A level whose vertices fit in 2^T rows is
    a dense (1, F, ry+1, rx+1) texture sampled with `grid_sample`; the others share one
    (Lh * 2^T, F) table, vertex (i, j) of hashed level h at row h*2^T + (i ^ j*2654435761) mod 2^T."""

    # buffers (registered in __init__)
    half_res: torch.Tensor
    last_cell: torch.Tensor
    hashed_offsets: torch.Tensor
    sort_scale: torch.Tensor

    def __init__(
        self,
        num_levels: int,
        features_per_level: int,
        log2_hashmap_size: int,
        base_resolution: int,
        finest_resolution: int,
        init_scale: float = 1e-4,
        width: int | None = None,
        height: int | None = None,
    ):
        super().__init__()
        self.resolutions = level_resolutions(num_levels, base_resolution, finest_resolution)
        self.level_shapes = level_shapes(self.resolutions, width, height)
        self.features_per_level = features_per_level
        self.table_size = 1 << log2_hashmap_size
        vertices = [(rx + 1) * (ry + 1) for rx, ry in self.level_shapes]
        self.dense_levels = [l for l, v in enumerate(vertices) if v <= self.table_size]
        self.hashed_levels = [l for l, v in enumerate(vertices) if v > self.table_size]
        feat = features_per_level
        # uniform init in [-init_scale, init_scale], as in Instant-NGP: features start near 0
        # and the decoder sees an almost constant input at step 0.
        self.dense = nn.ParameterList(
            nn.Parameter(
                torch.empty(1, feat, self.level_shapes[l][1] + 1, self.level_shapes[l][0] + 1).uniform_(
                    -init_scale, init_scale
                )
            )
            for l in self.dense_levels
        )
        lh = len(self.hashed_levels)
        self.hashed = nn.Parameter(torch.empty(lh * self.table_size, feat).uniform_(-init_scale, init_scale))
        # int32 rows (half the memory traffic of int64) whenever every row times F (the backward's keys) fits
        self.index_dtype = torch.int32 if lh * self.table_size * feat < 2**31 else torch.int64
        shapes = torch.tensor([self.level_shapes[l] for l in self.hashed_levels], dtype=torch.float32).view(lh, 2)
        shapes = shapes.t().unsqueeze(-1)  # (2, Lh, 1): x, y
        self.register_buffer("half_res", shapes / 2, persistent=False)
        self.register_buffer("last_cell", (shapes - 1).to(self.index_dtype), persistent=False)
        self.register_buffer(
            "hashed_offsets", (torch.arange(lh) * self.table_size).to(self.index_dtype).view(-1, 1, 1), persistent=False
        )
        # the low T bits of j * prime are the same in wrapping int32 arithmetic as in exact arithmetic
        self.hash_prime = _PRIME - (1 << 32) if self.index_dtype == torch.int32 else _PRIME
        # a training batch is processed in row-major order of the points' finest-level cells:
        # its gathers and scatters then walk the tables almost sequentially (an int32 key
        # sorts with a radix sort)
        fx, fy = self.level_shapes[-1]
        self.sort_stride = fx + 1 if (fx + 1) * (fy + 1) < 2**31 else 0
        self.register_buffer("sort_scale", torch.tensor([fx / 2, fy / 2]), persistent=False)

    @property
    def out_features(self) -> int:
        return len(self.resolutions) * self.features_per_level

    def level_table(self, level: int) -> torch.Tensor:
        """A view of one level's features: (ry+1, rx+1, F) for a dense level (row j along y,
        column i along x), (2^T, F) for a hashed one."""
        if level in self.dense_levels:
            return self.dense[self.dense_levels.index(level)][0].permute(1, 2, 0)
        h = self.hashed_levels.index(level)
        return self.hashed[h * self.table_size : (h + 1) * self.table_size]

    def hashed_corners(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of `hashed` and bilinear weights of every hashed level's 4 cell corners,
        (Lh, N, 4) each, corners in the order (dx, dy) = (0,0), (0,1), (1,0), (1,1).
        Level-major layout: every elementwise op runs along N contiguous values."""
        n, lh = xy.shape[0], len(self.hashed_levels)
        xyt = xy.float().clamp(-1.0, 1.0).t().unsqueeze(1)  # (2, 1, N)
        # position in cells: (x + 1) / 2 * res; a point on the far edge stays in the last cell
        pos = torch.addcmul(self.half_res, xyt, self.half_res)  # (2, Lh, N)
        cell = pos.to(self.index_dtype)  # truncation is floor: pos >= 0
        torch.minimum(cell, self.last_cell, out=cell)
        frac = pos.sub_(cell)
        fx, fy = frac[0], frac[1]
        gx, gy = 1.0 - fx, 1.0 - fy
        weights = torch.empty((lh, n, 2, 2), dtype=torch.float32, device=xy.device)
        torch.mul(gx, gy, out=weights[:, :, 0, 0])
        torch.mul(gx, fy, out=weights[:, :, 0, 1])
        torch.mul(fx, gy, out=weights[:, :, 1, 0])
        torch.mul(fx, fy, out=weights[:, :, 1, 1])
        del pos, frac, gx, gy
        index = torch.empty((lh, n, 2, 2), dtype=self.index_dtype, device=xy.device)
        hx0 = cell[0]
        hx1 = hx0 + 1
        hy0 = cell[1] * self.hash_prime
        hy1 = hy0 + self.hash_prime
        torch.bitwise_xor(hx0, hy0, out=index[:, :, 0, 0])
        torch.bitwise_xor(hx0, hy1, out=index[:, :, 0, 1])
        torch.bitwise_xor(hx1, hy0, out=index[:, :, 1, 0])
        torch.bitwise_xor(hx1, hy1, out=index[:, :, 1, 1])
        index = index.view(lh, n, 4)
        index.bitwise_and_(self.table_size - 1).add_(self.hashed_offsets)
        return index, weights.view(lh, n, 4)

    def _levels(self, xy: torch.Tensor, summed: bool):
        n = xy.shape[0]
        # grid_sample: x indexes columns (width), y indexes rows; align_corners maps -1/+1 to the
        # first/last vertex, so a level of N cells has exactly N+1 vertices over [-1, 1].
        grid = xy.view(1, n, 1, 2)
        dense = [
            F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=True).view(-1, n)
            for t in self.dense
        ]  # (F, N) each
        hashed = None
        if self.hashed_levels:
            index, weights = self.hashed_corners(xy)
            hashed = _HashedLookup.apply(self.hashed, index, weights, self.table_size, summed)
        return dense, hashed

    def _sorted(self, xy: torch.Tensor):
        """(order, inverse) to process a training batch in row-major order of its finest cells, or None."""
        if not (self.sort_stride and torch.is_grad_enabled() and xy.shape[0] > 1):
            return None
        key = torch.addcmul(self.sort_scale, xy.float().clamp(-1.0, 1.0), self.sort_scale).to(
            torch.int32
        )  # (N, 2) cells
        key = torch.addcmul(key[:, 0], key[:, 1], key.new_tensor(self.sort_stride))
        order = torch.sort(key, stable=True).indices
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return order, inverse

    def forward_sum(self, xy: torch.Tensor) -> torch.Tensor:
        """The levels' features summed instead of concatenated: (N, F)."""
        perm = self._sorted(xy)
        if perm is not None:
            xy = xy.index_select(0, perm[0])
        dense, hashed = self._levels(xy, summed=True)
        total = hashed
        if dense:
            d = torch.stack(dense).sum(0).t() if len(dense) > 1 else dense[0].t()  # (N, F)
            total = d if total is None else total + d
        return total if perm is None else _Gather.apply(total, perm[1], perm[0])

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        """The levels' features concatenated: (N, L*F)."""
        perm = self._sorted(xy)
        if perm is not None:
            xy = xy.index_select(0, perm[0])
        dense, hashed = self._levels(xy, summed=False)
        per_level = [d.t() for d in dense] + ([] if hashed is None else list(hashed.unbind(0)))
        out = torch.cat(per_level, dim=1)  # dense levels come first: they are the coarse ones
        return out if perm is None else _Gather.apply(out, perm[1], perm[0])

    # ------------------------------------------------------------ images smaller than the field

    def box_levels(self, src_width: int, src_height: int, width: int, height: int):
        """Each level's features averaged over every pixel of a width x height image of the
        src_width x src_height field (the box filter of `imgfit_batch.rendering`), exactly:
        a level is bilinear in its vertex values, so the average over a footprint is a
        separable weighted sum of them, y_l = W_y G_l W_x^T. Yields (position of the level
        in the forward's concatenation, its (height, width, F) image), one level at a time
        so the caller can accumulate. A dense level is its texture; a hashed level's vertex
        values are looked up once per vertex, in bands of rows."""
        device = self.hashed.device
        bands = self._box_bands(src_width, src_height, width, height, device)
        # each pass gathers whole contiguous rows (index_select along the second-to-last
        # dimension), with a transposing copy between the passes
        for position, level in enumerate(self.dense_levels + self.hashed_levels):
            rx, ry = self.level_shapes[level]
            ax, ay = bands[level]
            if level in self.dense_levels:
                grid = self.dense[self.dense_levels.index(level)][0]  # (F, ry+1, rx+1)
                cols = ay.apply(grid, 1).transpose(1, 2).contiguous()  # (F, rx+1, height)
                yield position, ax.apply(cols, 1).permute(2, 1, 0)  # (height, width, F)
                del cols
            else:
                rows = self._hashed_rows(self.hashed_levels.index(level), rx, ry, ax)  # (F, ry+1, width)
                yield position, ay.apply(rows, 1).permute(1, 2, 0)  # (height, width, F)
                del rows

    def _box_bands(self, src_width: int, src_height: int, width: int, height: int, device) -> list:
        """Each level's (x, y) banded weights for this geometry, built once (a film's frames
        all share one geometry; the weights depend on nothing else)."""
        from imgfit_batch.rendering import footprints

        key = (src_width, src_height, width, height, str(device))
        cache = self.__dict__.setdefault("_box_cache", {})
        if key not in cache:
            px, tx, wx = footprints(src_width, width)
            py, ty, wy = footprints(src_height, height)
            cache.clear()
            cache[key] = [
                (
                    _vertex_band(px, tx * (rx / src_width), wx, width, rx, device),
                    _vertex_band(py, (src_height - ty) * (ry / src_height), wy, height, ry, device),
                )
                for rx, ry in self.level_shapes
            ]
        return cache[key]

    def _hashed_rows(self, h: int, rx: int, ry: int, ax) -> torch.Tensor:
        """Hashed level h's vertex rows filtered along x: (F, ry+1, width). Its vertex values are
        looked up once each, a band of rows at a time (bounded memory at any size)."""
        device, feat = self.hashed.device, self.features_per_level
        i = torch.arange(rx + 1, dtype=torch.int64, device=device)
        table = self.hashed[h * self.table_size : (h + 1) * self.table_size].t().float().contiguous()  # (F, 2^T)
        rows = torch.empty((feat, ax.weight.shape[0], ry + 1), dtype=torch.float32, device=device)  # (F, width, ry+1)
        band = max(1, (1 << 20) // (rx + 1))
        for j0 in range(0, ry + 1, band):
            j = torch.arange(j0, min(j0 + band, ry + 1), dtype=torch.int64, device=device)
            index = torch.bitwise_xor(i.unsqueeze(1), j.unsqueeze(0) * _PRIME).bitwise_and_(self.table_size - 1)
            values = table.index_select(1, index.view(-1)).view(feat, rx + 1, j.numel())  # (F, rx+1, b)
            rows[:, :, j0 : j0 + j.numel()] = ax.apply(values, 1)
        return rows.transpose(1, 2).contiguous()


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

    @torch.inference_mode()
    def box_image(self, src_width: int, src_height: int, width: int, height: int) -> torch.Tensor:
        """The field's exact box-filtered image (levels averaged, then the bias and clamp): (height, width, C)."""
        total = self.bias.float().expand(height, width, -1).contiguous()
        for _, level in self.encoding.box_levels(src_width, src_height, width, height):  # (h, w, C) each
            total += level
        return total.clamp_(0, 1)


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

    @torch.inference_mode()
    def box_image(self, src_width: int, src_height: int, width: int, height: int) -> torch.Tensor | None:
        """With a linear decoder the field is linear in the levels' features: their exact
        box average, decoded (then clamped). None for an MLP decoder (the caller supersamples)."""
        if len(self.decoder) != 1:
            return None
        head = cast(nn.Linear, self.decoder[0])  # the decoder's one layer: its linear head
        feat = self.encoding.features_per_level
        out = head.bias.float().expand(height, width, -1).contiguous()
        for position, level in self.encoding.box_levels(src_width, src_height, width, height):  # (h, w, F) each
            out += level @ head.weight[:, position * feat : (position + 1) * feat].float().t()
        return out.clamp_(0, 1)


class HashGridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train_defaults: ClassVar[dict] = HASHGRID_TRAIN_DEFAULTS

    kind: Literal["hashgrid"] = Field(
        description="Multiresolution hash encoding (Instant-NGP): levels summed (default) or decoded by a small MLP."
    )
    max_parameters: int | None = max_parameters_field()
    num_levels: int | None = Field(
        None,
        ge=1,
        le=32,
        description="L: number of grid levels, resolutions spaced geometrically. Unset: derived from the image's size.",
    )
    features_per_level: int = Field(
        2,
        ge=1,
        le=16,
        description="F: learnable features per grid vertex and level (decoder linear or mlp; with sum, F is the "
        "number of outputs).",
    )
    log2_hashmap_size: int | None = Field(
        None,
        ge=8,
        le=26,
        description="T: each hashed level has 2^T table rows; levels with (res+1)^2 <= 2^T are stored densely. "
        "Unset: derived from the image's pixel count.",
    )
    base_resolution: int = Field(16, ge=1, le=1 << 16, description="Cells per side of the coarsest level over [-1, 1].")
    finest_resolution: int | None = Field(
        None,
        ge=1,
        le=1 << 20,
        description="Cells of the finest level along the image's longer side; the longer side in pixels resolves "
        "single pixels. Unset: derived from the image's size.",
    )
    hidden_size: int = Field(64, ge=1, le=4096, description="Width of the decoder MLP's hidden layers (decoder: mlp).")
    num_hidden_layers: int = Field(1, ge=1, le=16, description="Hidden layers of the decoder MLP (decoder: mlp).")
    decoder: Literal["sum", "linear", "mlp"] = Field(
        "sum",
        description="sum: each level stores the outputs and the levels add up (features_per_level, hidden_size "
        "and num_hidden_layers unused); linear: one linear layer on the L*F features; mlp: hidden_size x "
        "num_hidden_layers ReLU layers, then a linear layer. Unset with model.max_parameters: mlp (the budget's "
        "layout).",
    )
    init_scale: float = Field(1e-4, ge=0, le=1, description="Grid features start uniform in [-init_scale, init_scale].")

    @model_validator(mode="after")
    def _finest_not_below_base(self):
        if self.finest_resolution is not None and self.finest_resolution < self.base_resolution:
            raise ValueError(
                f"finest_resolution ({self.finest_resolution}) must be >= base_resolution ({self.base_resolution})"
            )
        return self

    def derive(self, width: int, height: int, spec) -> dict:
        """Values that follow the image's size, by dotted spec field (the spec keeps the ones it sets)."""
        layout = derived_layout(width, height)
        if self.max_parameters is not None:  # a size budget: the batch follows the model's size
            from imgfit_batch.sizing import budget_batch

            layout["batch_size"] = min(budget_batch(self.max_parameters), layout["batch_size"])
        out = {f"model.{k}": v for k, v in layout.items() if k != "batch_size"}
        batch = min(spec.train.batch_size or layout["batch_size"], width * height)
        from imgfit_batch.video import frame_size

        fw, fh = frame_size(width, height, spec.video.max_side)
        # a frame's forward pass costs about a third of a training sample's (forward, backward,
        # Adam); film so frames take a small share of the time whatever the image's size
        every = max(2, math.ceil(2 * fw * fh / batch))
        return {**out, "train.batch_size": layout["batch_size"], "video.every_n_steps": every}

    def build(self, out_features: int, width: int | None = None, height: int | None = None) -> nn.Module:
        """The model for `out_features` channels; with the image's `width` and `height`, each
        level's cells follow the image's aspect (see `level_shapes`), else every level is square.
        Fields left unset take the values derived for that size (1024 x 1024 without one)."""
        derived = derived_layout(width or 1024, height or 1024)
        num_levels = self.num_levels or derived["num_levels"]
        finest = self.finest_resolution or max(derived["finest_resolution"], self.base_resolution)
        table = self.log2_hashmap_size or derived["log2_hashmap_size"]
        features = out_features if self.decoder == "sum" else self.features_per_level
        encoding = HashGridEncoding(
            num_levels, features, table, self.base_resolution, finest, self.init_scale, width=width, height=height
        )
        if self.decoder == "sum":
            return HashGridSum(encoding)
        layers = self.num_hidden_layers if self.decoder == "mlp" else 0
        return HashGrid(encoding, self.hidden_size, layers, out_features)

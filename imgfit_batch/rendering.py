"""Images of the trained field: sampled on a pixel grid (at the input's size or larger),
box-filtered (smaller), in bounded-memory chunks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from imgfit_batch.data import coords
from imgfit_batch.device import exact_fp32, native_bf16

# Pixels per forward pass. On a CPU, activations of 4096 pixels stay in cache: a
# 65536-pixel chunk rendered a 256x256 frame 1.9x slower (benchmarks/micro_step.py).
# A GPU wants big chunks to fill its SMs.
CPU_CHUNK_PIXELS = 1 << 12
CUDA_CHUNK_PIXELS = 1 << 18


def frame_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for frames (None: fp32)."""
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return None


def _forward(
    model: torch.nn.Module, xy: torch.Tensor, device: torch.device, autocast_dtype: torch.dtype | None
) -> torch.Tensor:
    """The field at `xy`: under autocast in `autocast_dtype`, else in IEEE fp32 (no TF32)."""
    if autocast_dtype is not None:
        with torch.autocast(device.type, dtype=autocast_dtype):
            return model(xy)
    with exact_fp32(device.type):
        return model(xy)


@torch.inference_mode()
def render(
    model: torch.nn.Module,
    width: int,
    height: int,
    device: torch.device,
    chunk: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    rows: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The field at width x height as a (height, width, C) uint8 tensor on `device`
    (`rows` = (first, stop): only those rows, (stop - first, width, C); imgfit_batch.final).

    Rows are sampled with the seed's mapping at this resolution, so any size
    samples the same continuous image. Memory is bounded by `chunk` pixels.
    Without `autocast_dtype` the arithmetic is IEEE fp32 on every device (no TF32):
    final.png and `imgfit-batch render` agree whatever the job's train.precision.
    """
    first, stop = rows or (0, height)
    begin, n = first * width, stop * width
    chunk = chunk or (CUDA_CHUNK_PIXELS if device.type == "cuda" else CPU_CHUNK_PIXELS)
    out = None
    for start in range(begin, n, chunk):
        index = torch.arange(start, min(start + chunk, n), device=device)
        y = _forward(model, coords(index, width, height), device, autocast_dtype)
        y = (y.float().clamp_(0, 1) * 255).round_().to(torch.uint8)  # (chunk, C)
        if out is None:
            out = torch.empty((n - begin, y.shape[1]), dtype=torch.uint8, device=device)
        out[start - begin : start - begin + y.shape[0]] = y
    assert out is not None  # at least one row of at least one pixel
    return out.view(stop - first, width, -1)


# ------------------------------------------------------------ images smaller than the field
#
# A frame (or a `render --scale` below 1) smaller than the input is an image of the field
# at that size, not a sample of it: output pixel p is the average of the field over the
# input pixels its footprint covers, each weighted by the area it covers (a box filter,
# exact area coverage). The target is shrunk with the same weights, so a frame is scored
# against exactly what it tries to show. Fields that are linear in their parameters (the
# hash grid's `sum` and `linear` decoders) compute that average exactly, as a separable
# weighted sum of each level's vertex values (`HashGridEncoding.box_levels`); other fields
# are supersampled at up to MAX_SUPERSAMPLE x MAX_SUPERSAMPLE input pixels per output pixel.

MAX_SUPERSAMPLE = 4


def area_footprints(src: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1-D box filter from `src` pixels to `out` (< src): triplets (output p, source
    pixel i, weight), output p averaging source pixels over [p k, (p + 1) k), k = src / out,
    each weighted by its overlap / k (so every output's weights sum to 1)."""
    k = src / out
    i = np.arange(src, dtype=np.float64)
    lo = np.minimum(np.floor(i / k), out - 1)
    hi = np.minimum(np.ceil((i + 1) / k) - 1, out - 1)  # lo or lo + 1: a footprint is >= 1 pixel
    w_lo = (np.minimum((lo + 1) * k, i + 1) - i) / k
    w_hi = (i + 1 - hi * k) / k
    two = hi > lo
    p = np.concatenate([lo, hi[two]]).astype(np.int64)
    j = np.concatenate([i, i[two]]).astype(np.int64)
    w = np.concatenate([np.where(two, w_lo, 1.0 / k), w_hi[two]])
    return p, j, w


def point_footprints(src: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Output p (out >= src) samples the field at source position p * src / out (`render`'s grid)."""
    p = np.arange(out, dtype=np.int64)
    return p, p * (src / out), np.ones(out)


def footprints(src: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return area_footprints(src, out) if out <= src else point_footprints(src, out)


@dataclass(frozen=True)
class Banded:
    """A 1-D linear map as a band: y[p] = sum_k weight[p, k] * x[start[p] + k]."""

    start: torch.Tensor  # (out,) int64
    weight: torch.Tensor  # (out, K) float32
    size: int  # length of x

    @staticmethod
    def build(p: np.ndarray, j: np.ndarray, w: np.ndarray, out: int, size: int, device: torch.device) -> Banded:
        start = np.full(out, size, dtype=np.int64)
        np.minimum.at(start, p, j)
        width = int((j - start[p]).max()) + 1 if len(p) else 1
        weight = np.zeros((out, width), dtype=np.float64)
        np.add.at(weight, (p, j - start[p]), w)
        return Banded(torch.from_numpy(start).to(device), torch.from_numpy(weight).float().to(device), size)

    def apply(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """x resampled along `dim`, one pass per band column (temporaries of the output's size)."""
        shape = [1] * x.dim()
        shape[dim] = -1
        out = None
        for k in range(self.weight.shape[1]):
            g = x.index_select(dim, (self.start + k).clamp_(max=self.size - 1)).float()  # no float copy of all of x
            w = self.weight[:, k].view(shape)
            out = g.mul_(w) if out is None else out.addcmul_(g, w)
        assert out is not None  # build makes at least one band column
        return out


def box_shrink(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """An (H, W, C) image shrunk to (height, width, C) with the frames' box filter (exact
    area coverage), as uint8 on the image's device; `image` as it is when the size matches."""
    h0, w0 = image.shape[0], image.shape[1]
    if (w0, h0) == (width, height):
        return image
    if width > w0 or height > h0:
        raise ValueError(f"box_shrink: {w0}x{h0} cannot shrink to {width}x{height}")
    x = Banded.build(*footprints(w0, width), width, w0, image.device)
    y = Banded.build(*footprints(h0, height), height, h0, image.device)
    rows = y.apply(x.apply(image, 1), 0)  # (height, width, C) float in 0..255
    return rows.round_().clamp_(0, 255).to(torch.uint8)


def _to_uint8(y: torch.Tensor) -> torch.Tensor:
    return (y.float().clamp_(0, 1) * 255).round_().to(torch.uint8)


@torch.inference_mode()
def render_image(
    model: torch.nn.Module,
    src_width: int,
    src_height: int,
    width: int,
    height: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    filter: str = "box",
) -> torch.Tensor:
    """The field of a `src_width` x `src_height` image as a (height, width, C) uint8 image.

    At the source's size or larger: `render`, the field sampled on the output's pixel grid.
    Smaller (along either axis): each output pixel is the box-filtered average of the field
    over the source pixels it covers -- exactly, for fields that are linear in their
    parameters (`box_image`), else from up to MAX_SUPERSAMPLE^2 source pixels spread over
    its footprint. `autocast_dtype` applies to the supersampled forward passes only.
    filter "point": `render` at every size (one sample a pixel; a detailed field aliases)."""
    if filter == "point" or (width >= src_width and height >= src_height):
        return render(model, width, height, device, autocast_dtype=autocast_dtype)
    box = getattr(model, "box_image", None)
    with exact_fp32(device.type):
        image = box(src_width, src_height, width, height) if box is not None else None  # (height, width, C) float
    if image is None:
        image = _supersampled(model, src_width, src_height, width, height, device, autocast_dtype)
    return _to_uint8(image)


def _sample_positions(src: int, out: int) -> torch.Tensor:
    """(out, S) source pixels sampled for each output pixel: S = min(ceil(src / out), MAX_SUPERSAMPLE)
    stratified over its footprint (the pixel under each stratum's centre); one per output
    (render's grid position) when out >= src."""
    if out >= src:
        return (torch.arange(out, dtype=torch.float64) * (src / out)).unsqueeze(1)
    k = src / out
    s = min(math.ceil(k), MAX_SUPERSAMPLE)
    u = torch.arange(out, dtype=torch.float64).unsqueeze(1) * k + (torch.arange(s, dtype=torch.float64) + 0.5) * (k / s)
    return u.floor_().clamp_(0, src - 1)


@torch.inference_mode()
def _supersampled(
    model: torch.nn.Module,
    src_width: int,
    src_height: int,
    width: int,
    height: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> torch.Tensor:
    tx = _sample_positions(src_width, width)  # (width, Sx)
    ty = _sample_positions(src_height, height)  # (height, Sy)
    x = (tx / (src_width / 2) - 1).float().to(device)  # the seed's mapping at the source's size
    y = ((src_height - ty) / (src_height / 2) - 1).float().to(device)
    sx, sy = x.shape[1], y.shape[1]
    chunk = CUDA_CHUNK_PIXELS if device.type == "cuda" else CPU_CHUNK_PIXELS
    rows = max(1, chunk // (width * sx * sy))
    out = None
    for top in range(0, height, rows):
        yr = y[top : top + rows]  # (r, Sy)
        r = yr.shape[0]
        xy = torch.stack(torch.broadcast_tensors(x.view(1, 1, width, sx), yr.view(r, sy, 1, 1)), dim=-1).view(-1, 2)
        v = _forward(model, xy, device, autocast_dtype)
        v = v.float().clamp_(0, 1).view(r, sy, width, sx, -1).mean(dim=(1, 3))  # (r, width, C)
        if out is None:
            out = torch.empty((height, width, v.shape[-1]), dtype=torch.float32, device=device)
        out[top : top + r] = v
    assert out is not None  # height >= 1
    return out

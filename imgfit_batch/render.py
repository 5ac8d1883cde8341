"""Sampling the trained field on a pixel grid, in bounded-memory chunks."""

from __future__ import annotations

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


@torch.inference_mode()
def render(model: torch.nn.Module, width: int, height: int, device: torch.device,
           chunk: int | None = None, autocast_dtype: torch.dtype | None = None,
           rows: tuple[int, int] | None = None) -> torch.Tensor:
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
        xy = coords(index, width, height)
        if autocast_dtype is not None:
            with torch.autocast(device.type, dtype=autocast_dtype):
                y = model(xy)
        else:
            with exact_fp32(device.type):
                y = model(xy)
        y = (y.float().clamp_(0, 1) * 255).round_().to(torch.uint8)  # (chunk, C)
        if out is None:
            out = torch.empty((n - begin, y.shape[1]), dtype=torch.uint8, device=device)
        out[start - begin : start - begin + y.shape[0]] = y
    return out.view(stop - first, width, -1)

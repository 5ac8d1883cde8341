"""Sampling the trained field on a pixel grid, in bounded-memory chunks."""

from __future__ import annotations

import torch

from imgfit_batch.data import coords

CHUNK_PIXELS = 1 << 16


@torch.inference_mode()
def render(model: torch.nn.Module, width: int, height: int, device: torch.device,
           chunk: int = CHUNK_PIXELS, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The field at width x height as a (height, width, C) uint8 tensor on `device`.

    Rows are sampled with the seed's mapping at this resolution, so any size
    samples the same continuous image. Memory is bounded by `chunk` pixels.
    """
    n = width * height
    out = None
    for start in range(0, n, chunk):
        index = torch.arange(start, min(start + chunk, n), device=device)
        xy = coords(index, width, height)
        if autocast_dtype is not None:
            with torch.autocast(device.type, dtype=autocast_dtype):
                y = model(xy)
        else:
            y = model(xy)
        y = (y.float().clamp_(0, 1) * 255).round_().to(torch.uint8)  # (chunk, C)
        if out is None:
            out = torch.empty((n, y.shape[1]), dtype=torch.uint8, device=device)
        out[start : start + y.shape[0]] = y
    return out.view(height, width, -1)

"""final.png and its metrics, rendered in bands of rows so memory stays bounded.

    for each band of rows:
        render it on the device (render.render with `rows`)
        add its squared error to PSNR's sum, and its SSIM over the band plus the previous
        band's last (window - 1) rows (copied back from the host) to SSIM's weighted sum
        copy it into the host image (the one full-size copy: PNG encodes from it)

An image of up to FINAL_BAND_PIXELS is one band: exactly the unbanded render and
metrics. A gigapixel image costs the device a band (2^24 pixels) next to its target,
and the host one uint8 copy of the image.
"""

from __future__ import annotations

import numpy as np
import torch

from imgfit_batch import metrics
from imgfit_batch.rendering import render

FINAL_BAND_PIXELS = 1 << 24  # 16 MP: ~50 MB of RGB a band, on the device
SSIM_WINDOW = 11  # metrics.ssim's


def render_final(
    model: torch.nn.Module, target: torch.Tensor, device: torch.device, band_pixels: int = FINAL_BAND_PIXELS
) -> tuple[np.ndarray, float, float]:
    """(final image (H, W, C) uint8 on the host, PSNR dB, SSIM) of `model` against `target`
    ((H, W, C) uint8 on `device`), in fp32 as render.render does without autocast."""
    height, width = target.shape[0], target.shape[1]
    size = min(SSIM_WINDOW, width, height)
    band = max(size, band_pixels // max(width, 1))
    if band >= height:
        image = render(model, width, height, device)
        psnr, ssim = float(metrics.psnr(image, target)), float(metrics.ssim(image, target))
        return image.cpu().numpy(), psnr, ssim
    out = np.empty((height, width, target.shape[2]), np.uint8)
    squared = torch.zeros((), dtype=torch.float64, device=device)
    ssim_sum, ssim_count = torch.zeros((), dtype=torch.float64, device=device), 0
    for top in range(0, height, band):
        stop = min(top + band, height)
        rows = render(model, width, height, device, rows=(top, stop))  # (stop - top, W, C)
        squared += metrics.squared_error(rows, target[top:stop])
        # SSIM's windows that straddle the band's top edge: the previous band's last rows come back from the host
        lo = max(0, top - (size - 1))
        block = rows if lo == top else torch.cat([torch.from_numpy(out[lo:top]).to(device), rows])
        valid = (stop - lo - size + 1) * (width - size + 1)
        ssim_sum += metrics.ssim(block, target[lo:stop]).double() * valid
        ssim_count += valid
        out[top:stop] = rows.cpu().numpy()
        del rows, block
    psnr = float(metrics.psnr_of(squared, out.size))
    return out, psnr, float(ssim_sum / ssim_count)

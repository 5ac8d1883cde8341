"""Image quality metrics in torch, on whatever device the images live on.

Both take images shaped (H, W) or (H, W, C) — the layout of a rendered frame —
either float in [0, 1] or uint8 (read as value / 255), and return a 0-d tensor (call float()
when you need a number; that is a device sync point).

Both compute in IEEE fp32 (sums in fp64) on every device, whatever the job's
precision: SSIM's variances are E[x²] − μ², which cancel badly when the blur runs
in TF32 (10-bit mantissa; SSIM came out above 1) or bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imgfit_batch.device import exact_fp32


def _as_nchw(image: torch.Tensor) -> torch.Tensor:
    if image.dim() == 2:
        image = image.unsqueeze(-1)
    if image.dim() != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {tuple(image.shape)}")
    return _unit(image).permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W)


def _unit(image: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 1]: uint8 images are divided by 255."""
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def psnr(pred: torch.Tensor, target: torch.Tensor, max_band_elements: int = 1 << 24) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for a peak of 1 (uint8 images: 255): -10 log10(MSE),
    inf when equal. Summed in bands of at most `max_band_elements` values, so a
    200 MP image costs no full-size float copy."""
    return psnr_of(squared_error(pred, target, max_band_elements), pred.numel())


def squared_error(pred: torch.Tensor, target: torch.Tensor, max_band_elements: int = 1 << 24) -> torch.Tensor:
    """The sum of squared differences (peak 1), fp64, summed in bands: PSNR's numerator, which
    bands of an image (imgfit_batch.final) add up."""
    a, b = pred.reshape(-1), target.reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for start in range(0, a.numel(), max_band_elements):
        x, y = a[start : start + max_band_elements], b[start : start + max_band_elements]
        if x.dtype == y.dtype == torch.uint8:
            d = (x.float() - y.float()) / 255.0  # exact integer differences
        else:
            d = _unit(x) - _unit(y)
        total += d.double().square().sum()
    return total


def psnr_of(total: torch.Tensor, numel: int) -> torch.Tensor:
    """PSNR in dB from a sum of squared differences over `numel` values."""
    return (-10.0 * torch.log10(total / max(numel, 1))).float()


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()  # (size,)


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    max_band_pixels: int = 1 << 20,
) -> torch.Tensor:
    """SSIM as below, computed in bands of rows (overlapping by the window) when the image
    is large, so memory stays bounded (an 8K RGB image needs ~8 GB in one piece; a band of
    2^20 pixels needs ~0.25 GB)."""
    height, width = pred.shape[0], pred.shape[1]
    size = min(window_size, width, height)
    band = max(size, max_band_pixels // max(width, 1))  # rows per band, window included
    if band >= height:
        return _ssim(pred, target, window_size, sigma, k1, k2)
    total, count = torch.zeros((), dtype=torch.float64, device=pred.device), 0
    step = band - (size - 1)  # valid output rows per band
    for top in range(0, height - size + 1, step):
        rows = slice(top, min(top + band, height))
        valid = (rows.stop - rows.start - size + 1) * (width - size + 1)
        total += _ssim(pred[rows], target[rows], size, sigma, k1, k2).double() * valid
        count += valid
    return (total / count).float()


def _ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) for a data range of 1.

    Local statistics under an 11x11 Gaussian window (sigma 1.5), valid positions only,
    SSIM map averaged over positions and channels. Images smaller than the window use
    a window as large as the smaller side.
    """
    with exact_fp32(pred.device.type):
        return _ssim_fp32(_as_nchw(pred), _as_nchw(target), window_size, sigma, k1, k2)


def _ssim_fp32(x: torch.Tensor, y: torch.Tensor, window_size: int, sigma: float, k1: float, k2: float) -> torch.Tensor:
    channels = x.shape[1]
    size = min(window_size, x.shape[-1], x.shape[-2])
    g = _gaussian_window(size, sigma, x.device, x.dtype)
    # separable blur of the 5 maps at once, one group per (map, channel)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (1, 5C, H, W)
    if stack.device.type == "cpu":  # the CPU's depthwise-conv fast path (~8x faster than NCHW for 512^2 RGB)
        stack = stack.contiguous(memory_format=torch.channels_last)
    rows = g.view(1, 1, 1, size).repeat(5 * channels, 1, 1, 1)
    cols = g.view(1, 1, size, 1).repeat(5 * channels, 1, 1, 1)
    blurred = F.conv2d(F.conv2d(stack, rows, groups=5 * channels), cols, groups=5 * channels)
    mu_x, mu_y, xx, yy, xy = blurred.split(channels, dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = k1**2, k2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean()


# metrics of a frame: PSNR every frame, SSIM (a few image-sized convolutions) every 10th and the last
SSIM_EVERY_N_FRAMES = 10
MAX_FRAME_PSNR_DB = 120.0


def score(frame: torch.Tensor, target: torch.Tensor, with_ssim: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PSNR (and SSIM) of a uint8 frame against the uint8 target of the same size (device tensors, no sync)."""
    psnr_db = psnr(frame, target).clamp_max(MAX_FRAME_PSNR_DB)  # finite: it goes into JSON lines
    return psnr_db, (ssim(frame, target) if with_ssim else None)

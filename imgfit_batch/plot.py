"""The training curves as a PNG: loss (log scale) and PSNR against step, drawn with PIL.

`training_plot(steps, loss, psnr_db)` returns PNG bytes, so the caller can write them
to any storage (local folder or S3) like every other output.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

WIDTH, PANEL_HEIGHT = 960, 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 90, 30, 44, 56
LOSS_COLOR, PSNR_COLOR = (31, 119, 180), (214, 39, 40)
GRID, AXIS, TEXT = (225, 225, 225), (60, 60, 60), (20, 20, 20)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(target, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-2:
        mantissa, exponent = f"{value:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:g}"


def _finite(xs: Sequence[float], ys: Sequence[float | None]) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(float(y))]


def _panel(
    draw: ImageDraw.ImageDraw,
    top: int,
    points: list[tuple[float, float]],
    x_range: tuple[float, float],
    title: str,
    y_label: str,
    color: tuple,
    log_y: bool,
) -> None:
    font, small = _font(16), _font(13)
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    y_top, y_bottom = top + MARGIN_TOP, top + PANEL_HEIGHT - MARGIN_BOTTOM
    draw.text((left, top + 12), title, fill=TEXT, font=font)
    draw.rectangle([left, y_top, right, y_bottom], outline=AXIS)
    if log_y:
        points = [(x, math.log10(y)) for x, y in points if y > 0]
    if not points:
        draw.text((left + 12, y_top + 12), "no data yet", fill=AXIS, font=small)
        return
    x_lo, x_hi = x_range
    ys = [y for _, y in points]
    y_lo, y_hi = min(ys), max(ys)
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad = (y_hi - y_lo) * 0.05
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def px(x: float) -> float:
        return left + (x - x_lo) / ((x_hi - x_lo) or 1.0) * (right - left)

    def py(y: float) -> float:
        return y_bottom - (y - y_lo) / (y_hi - y_lo) * (y_bottom - y_top)

    for tick, label in _y_ticks(y_lo, y_hi, log_y):
        y = py(tick)
        draw.line([left + 1, y, right - 1, y], fill=GRID)
        draw.line([left - 5, y, left, y], fill=AXIS)
        width = draw.textlength(label, font=small)
        draw.text((left - 9 - width, y - 8), label, fill=TEXT, font=small)
    for tick in nice_ticks(x_lo, x_hi):
        if x_lo <= tick <= x_hi:
            x = px(tick)
            draw.line([x, y_top + 1, x, y_bottom - 1], fill=GRID)
            draw.line([x, y_bottom, x, y_bottom + 5], fill=AXIS)
            label = _fmt(tick)
            draw.text((x - draw.textlength(label, font=small) / 2, y_bottom + 8), label, fill=TEXT, font=small)
    draw.text(((left + right) / 2 - 16, y_bottom + 28), "step", fill=TEXT, font=small)
    _vertical_label(draw, y_label, small, (y_top + y_bottom) / 2)
    line = [(px(x), py(y)) for x, y in points]
    if len(line) == 1:
        x, y = line[0]
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
    else:
        draw.line(line, fill=color, width=2)
    last_x, last_y = points[-1]
    last = f"last: {10**last_y:.3g}" if log_y else f"last: {last_y:.2f} dB"
    last += f" at step {int(last_x)}"
    draw.text((right - draw.textlength(last, font=small), top + 16), last, fill=color, font=small)


def _vertical_label(draw: ImageDraw.ImageDraw, text: str, font: Any, center_y: float) -> None:
    """The y axis's label, written vertically at the left edge."""
    label_img = Image.new("RGBA", (int(draw.textlength(text, font=font)) + 4, 18), (255, 255, 255, 0))
    ImageDraw.Draw(label_img).text((2, 1), text, fill=TEXT, font=font)
    rotated = label_img.rotate(90, expand=True)
    draw._image.paste(rotated, (8, int(center_y - rotated.height / 2)), rotated)


def _y_ticks(y_lo: float, y_hi: float, log_y: bool) -> list[tuple[float, str]]:
    """The y axis's ticks (in plotted units) and their labels."""
    if log_y:  # ticks at powers of ten, with 2x and 5x when less than two decades show
        decades = range(math.floor(y_lo), math.ceil(y_hi) + 1)
        mults = (1, 2, 5) if y_hi - y_lo < 2 else (1,)
        y_ticks = [math.log10(m) + d for d in decades for m in mults if y_lo <= math.log10(m) + d <= y_hi]
        if not y_ticks:  # less than one tick inside: linear ticks on the log axis
            y_ticks = [math.log10(v) for v in nice_ticks(10**y_lo, 10**y_hi, 4) if v > 0]
        return [(t, _fmt(10**t)) for t in y_ticks]
    return [(t, _fmt(t)) for t in nice_ticks(y_lo, y_hi) if y_lo <= t <= y_hi]


def training_plot(
    steps: Sequence[int],
    loss: Sequence[float],
    psnr_db: Sequence[float | None] | None = None,
    title: str = "",
    psnr_steps: Sequence[int] | None = None,
    psnr_title: str = "PSNR of the full image",
) -> bytes:
    """PNG bytes: the loss curve (log scale) and, when given, the PSNR curve, sharing the step axis.

    `psnr_db` is at `steps`, or at `psnr_steps` when given (a log thinned for plotting
    keeps its scored rows apart). Non-finite or missing values (a PSNR not computed
    at that step, an infinite PSNR) are skipped. `psnr_title` says what the PSNR measures.
    """
    loss_points = _finite(steps, loss)
    psnr_points = _finite(steps if psnr_steps is None else psnr_steps, psnr_db) if psnr_db is not None else None
    all_x = [x for x, _ in loss_points] + [x for x, _ in (psnr_points or [])]
    x_range = (min(all_x, default=0.0), max(all_x, default=1.0))
    if x_range[1] <= x_range[0]:
        x_range = (x_range[0], x_range[0] + 1)
    panels = 2 if psnr_points is not None else 1
    header = 36 if title else 0
    image = Image.new("RGB", (WIDTH, header + panels * PANEL_HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((MARGIN_LEFT, 10), title, fill=TEXT, font=_font(20))
    _panel(draw, header, loss_points, x_range, "training loss (MSE)", "loss (log scale)", LOSS_COLOR, log_y=True)
    if psnr_points is not None:
        _panel(draw, header + PANEL_HEIGHT, psnr_points, x_range, psnr_title, "PSNR (dB)", PSNR_COLOR, log_y=False)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()

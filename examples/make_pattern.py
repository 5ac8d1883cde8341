"""Make examples/pattern.png: a 256x256 test card with what coordinate networks
find easy (smooth gradients) and hard (sharp edges, fine rings, stripes).

    python examples/make_pattern.py [OUT.png] [--size N] [--rgb]
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image


def pattern(size: int, rgb: bool = False) -> np.ndarray:
    t = np.linspace(-1, 1, size, dtype=np.float64)
    x, y = np.meshgrid(t, -t)
    r = np.hypot(x, y)
    img = 0.35 + 0.25 * x  # a soft diagonal light
    img += 0.25 * np.cos(18 * r**2 * np.pi) * (r < 0.55)  # rings that tighten outwards
    disk = np.hypot(x - 0.55, y - 0.5) < 0.28  # a bright disc with a hard edge
    img = np.where(disk, 0.92, img)
    square = (np.abs(x + 0.55) < 0.28) & (np.abs(y + 0.5) < 0.28)  # a checkerboard block
    checks = ((np.floor((x + 0.55) * 12) + np.floor((y + 0.5) * 12)) % 2) * 0.7 + 0.1
    img = np.where(square, checks, img)
    band = (y < -0.15) & (y > -0.3) & (x > -0.2)  # stripes of rising frequency
    img = np.where(band, 0.5 + 0.4 * np.sin(40 * (x + 0.2) ** 2 * np.pi), img)
    img = np.clip(img, 0, 1)
    if rgb:
        hue = 0.5 + 0.5 * np.stack([np.cos(3 * x), np.cos(3 * y + 2), np.cos(3 * (x + y) + 4)], -1)
        img = np.clip(img[..., None] * (0.55 + 0.45 * hue), 0, 1)
    return np.rint(img * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="examples/pattern.png")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rgb", action="store_true")
    args = parser.parse_args()
    Image.fromarray(pattern(args.size, args.rgb)).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()

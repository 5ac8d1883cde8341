"""Tile a few frames of a finished job's video next to its input (for the docs).

python scripts/frame_strip.py runs/quickstart docs/quickstart-frames.png
"""

from __future__ import annotations

import json
import sys

import numpy as np
from PIL import Image

from imgfit_batch.video import decode_frames


def main(output: str, out_png: str, count: int = 5) -> None:
    summary = json.load(open(f"{output}/summary.json"))
    spec = json.load(open(f"{output}/spec.json"))
    w, h = summary["video"]["width"], summary["video"]["height"]
    channels = 1 if summary["color"] == "gray" else 3
    frames = decode_frames(f"{output}/video.mp4", w, h, channels)
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    target = Image.open(spec["image"]).convert("L" if channels == 1 else "RGB").resize((w, h))
    tiles = [frames[i][..., 0] if channels == 1 else frames[i] for i in picks] + [np.asarray(target)]
    gap = np.full((h, 6) + (() if channels == 1 else (3,)), 255, np.uint8)
    row = np.concatenate(sum(([t, gap] for t in tiles), [])[:-1], axis=1)
    Image.fromarray(row).save(out_png)
    print(f"{out_png}: frames {list(picks)} of {len(frames)}, then the input")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

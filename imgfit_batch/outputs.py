"""The files a finished job leaves at its output location, and how they are read back."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch

from imgfit_batch import storage

MODEL_FORMAT = "imgfit-batch/model/1"

# What a job writes at its output location (besides checkpoints/); --restart deletes these and nothing else.
JOB_FILES = ("summary.json", "video.mp4", "loss.csv", "final.png", "model.pt", "spec.json", "progress.png")


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    img = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels, "L" if pixels.shape[2] == 1 else "RGB")
    buf = io.BytesIO()
    # zlib's fastest level for huge images: a gigapixel final.png encodes in seconds, not minutes (lossless either way)
    img.save(buf, format="PNG", **({"compress_level": 1} if pixels.size > FAST_PNG_VALUES else {}))
    return buf.getvalue()


FAST_PNG_VALUES = 1 << 27  # 134 M values: a 45 MP RGB image


def model_bytes(model: torch.nn.Module, model_spec: dict, color: str, width: int, height: int) -> bytes:
    """model.pt: the state_dict plus what is needed to rebuild and render it; readable
    with torch.load(path, weights_only=True)."""
    buf = io.BytesIO()
    torch.save(
        {
            "format": MODEL_FORMAT,
            "model": model_spec,
            "color": color,
            "out_features": 1 if color == "gray" else 3,
            "width": width,
            "height": height,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        buf,
    )
    return buf.getvalue()


def read_json(uri: str) -> dict[str, Any] | None:
    """A JSON object the job wrote, or None when absent or not one (garbage, a list)."""
    if not storage.exists(uri):
        return None
    try:
        obj = json.loads(storage.read_bytes(uri))
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()

"""Reading a job back from its output location: `status` and `render`."""

from __future__ import annotations

import io
import time
from typing import Any, Optional

import torch

from imgfit_batch import outputs, storage
from imgfit_batch.checkpoint import CheckpointManager, Lease
from imgfit_batch.errors import SpecError, UnavailableError


def job_status(output: str) -> dict[str, Any]:
    """running / interrupted / completed, with step of total, loss, PSNR, resumes."""
    summary = outputs.read_json(storage.join(output, "summary.json"))
    spec = outputs.read_json(storage.join(output, "spec.json"))
    if summary and summary.get("status") == "completed":
        return {
            "state": "completed", "output": output, "step": summary.get("steps"), "total_steps": summary.get("steps"),
            "loss": summary.get("final_loss"), "psnr_db": summary.get("psnr_db"), "resumes": summary.get("resumes"),
            "frames": summary.get("frames"), "wall_seconds": summary.get("wall_seconds"),
            "video": storage.join(output, "video.mp4"),
        }
    manager = CheckpointManager(storage.join(output, "checkpoints"), keep=2, warn=lambda m: None)
    marker = manager.latest_marker()
    lease = outputs.read_json(storage.join(output, ".imgfit-lease.json"))
    if marker is None and spec is None and lease is None:
        raise UnavailableError(f"{output}: no imgfit-batch job here (no summary.json, spec.json or checkpoints)")
    running = lease is not None and time.time() - float(lease.get("beat", 0)) <= Lease(output).stale_after
    status: dict[str, Any] = {"state": "running" if running else "interrupted", "output": output}
    if marker:
        status.update(step=marker.get("step"), total_steps=marker.get("total_steps"), loss=marker.get("loss"),
                      psnr_db=marker.get("psnr_db"), resumes=marker.get("resumes"), frames=marker.get("frames"),
                      checkpoint_age_seconds=round(time.time() - float(marker.get("created", time.time())), 1))
    else:
        status.update(step=0, total_steps=None, loss=None, psnr_db=None, resumes=0, checkpoint_age_seconds=None)
    rows = _last_loss_row(output)
    if rows and (status.get("step") or 0) < rows[0]:  # the loss log runs ahead of the last checkpoint
        status.update(step=rows[0], loss=rows[1])
    if running:
        status["host"] = lease.get("host")
    status["video"] = None
    return status


def _last_loss_row(output: str) -> Optional[tuple[int, float]]:
    uri = storage.join(output, "loss.csv")
    if not storage.exists(uri):
        return None
    lines = storage.read_bytes(uri).decode().strip().splitlines()
    if len(lines) < 2:
        return None
    step, _, loss = lines[-1].split(",")[:3]
    return int(step), float(loss)


def format_status(s: dict[str, Any]) -> str:
    parts = [s["state"]]
    if s.get("step") is not None:
        parts.append(f"step {s['step']}" + (f" of {s['total_steps']}" if s.get("total_steps") else ""))
    if s.get("loss") is not None:
        parts.append(f"loss {s['loss']:.4g}")
    if s.get("psnr_db") is not None:
        parts.append(f"PSNR {s['psnr_db']:.2f} dB")
    parts.append(f"resumes {s.get('resumes') or 0}")
    if s.get("checkpoint_age_seconds") is not None:
        parts.append(f"newest checkpoint {s['checkpoint_age_seconds']:.0f}s old")
    if s.get("video"):
        parts.append(f"video {s['video']}")
    return ", ".join(parts)


def load_model(source: str) -> tuple[torch.nn.Module, dict]:
    """A trained field from model.pt, an output location (its model.pt, else its newest checkpoint)."""
    from pydantic import TypeAdapter

    from imgfit_batch.models import ModelConfig

    if source.endswith(".pt"):
        blob = torch.load(io.BytesIO(storage.read_bytes(source, what="model")), map_location="cpu", weights_only=True)
        meta, weights = blob, blob["state_dict"]
    elif storage.exists(storage.join(source, "model.pt")):
        return load_model(storage.join(source, "model.pt"))
    else:
        spec = outputs.read_json(storage.join(source, "spec.json"))
        loaded = CheckpointManager(storage.join(source, "checkpoints"), keep=2, warn=lambda m: None).load()
        if spec is None or loaded is None:
            raise UnavailableError(f"{source}: no model.pt and no checkpoint to render from")
        color = spec["spec"]["train"]["color"]
        meta = {"model": spec["spec"]["model"], "out_features": 1 if color == "gray" else 3,
                "width": spec["width"], "height": spec["height"]}
        weights = loaded.state["parts"]["averager"].get("weights", loaded.state["parts"]["model"])
    config = TypeAdapter(ModelConfig).validate_python(meta["model"])
    model = config.build(int(meta["out_features"]), int(meta["width"]), int(meta["height"]))
    model.load_state_dict(weights)
    return model.eval(), meta


def render_to(source: str, out: str, scale: Optional[float], width: Optional[int], height: Optional[int],
              device: str = "auto") -> tuple[int, int]:
    from imgfit_batch.device import pick_device
    from imgfit_batch.render import render

    model, meta = load_model(source)
    w0, h0 = int(meta["width"]), int(meta["height"])
    if width is None and height is None:
        k = 1.0 if scale is None else scale
        width, height = max(1, round(w0 * k)), max(1, round(h0 * k))
    elif width is None:
        width = max(1, round(w0 * height / h0))
    elif height is None:
        height = max(1, round(h0 * width / w0))
    if width * height > 1 << 31:
        raise SpecError(f"--scale/--width/--height: {width}x{height} is too large to render")
    dev = pick_device(device)
    image = render(model.to(dev), width, height, dev).cpu().numpy()
    storage.write_bytes(out, outputs.png_bytes(image))
    return width, height

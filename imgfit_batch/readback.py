"""Reading a job back from its output location: `status` and `render`."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from imgfit_batch import completion, outputs, storage
from imgfit_batch.checkpoint import FORMAT as CHECKPOINT_FORMAT
from imgfit_batch.checkpoint import CheckpointStore
from imgfit_batch.errors import SpecError, UnavailableError
from imgfit_batch.lease import Lease

LOSS_TAIL_BYTES = 64 << 10  # of loss.csv, for its last row: a row is ~40 bytes, the file grows with every step


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def job_status(output: str, warn: Callable[[str], None] = _warn) -> dict[str, Any]:
    """running / interrupted / completed / unknown, with step of total, loss, PSNR, resumes.
    Completed only when the job's own record backs its summary.json (imgfit_batch.completion);
    a summary saying completed that it does not back is unknown, with `why`."""
    problems: list[str] = []  # records read as absent: warned about when there is a state to show
    summary: outputs.Summary | None = outputs.read(
        outputs.Summary, storage.join(output, outputs.SUMMARY), problems.append
    )
    spec: outputs.JobRecord | None = outputs.read(
        outputs.JobRecord, storage.join(output, outputs.SPEC), problems.append
    )
    if summary is not None and summary.completed:
        for problem in problems:
            warn(problem)
        return _completed_status(output, summary, spec)
    store = CheckpointStore(storage.join(output, outputs.CHECKPOINTS), keep=2, warn=lambda m: None)
    marker = store.latest_marker()
    lease_uri = storage.join(output, outputs.LEASE)
    try:
        lease = outputs.parse_lease(storage.read_bytes(lease_uri, what="lease", max_bytes=Lease.MAX_BYTES))
    except UnavailableError:  # none, or not a file
        lease = None
    if marker is None and spec is None and lease is None:
        found = f"; {'; '.join(p.removesuffix('; reading it as absent') for p in problems)}" if problems else ""
        raise UnavailableError(f"{output}: no imgfit-batch job here (no summary.json, spec.json or checkpoints{found})")
    for problem in problems:
        warn(problem)
    gone = None if lease is None else Lease(output).gone(lease)
    running = lease is not None and gone is None
    status: dict[str, Any] = {"state": "running" if running else "interrupted", "output": output}
    if gone is not None:
        status["why"] = gone
    status.update(_checkpointed(marker))
    status["device"] = spec.device if spec else None  # where the newest run trains (spec.json: rewritten by every run)
    rows = _last_loss_row(output)
    if rows and (status.get("step") or 0) < rows[0]:  # the loss log runs ahead of the last checkpoint
        status.update(step=rows[0], loss=rows[1])
    if lease is not None and running:
        status["host"] = lease.host
    status["video"] = None
    return status


def _completed_status(output: str, summary: outputs.Summary, spec: outputs.JobRecord | None) -> dict[str, Any]:
    """A summary saying completed: completed when the job's own record backs it, else unknown."""
    why = completion.doubt(output, summary, spec)
    if why is not None:
        return {
            "state": "unknown",
            "output": output,
            "why": f"its summary.json says completed, but {why}; it is not this job's record",
        }
    return {
        "state": "completed",
        "output": output,
        "step": summary.steps,
        "total_steps": summary.steps,
        "loss": summary.final_loss,
        "psnr_db": summary.psnr_db,
        "parameters": summary.parameters,
        "bits_per_pixel": summary.bits_per_pixel,
        "resumes": summary.resumes,
        "frames": summary.frames,
        "wall_seconds": summary.wall_seconds,
        "train_seconds": summary.train_seconds,
        "device": summary.device,
        "video": storage.join(output, outputs.VIDEO),
    }


def _checkpointed(marker: outputs.Marker | None) -> dict[str, Any]:
    """A job not completed: its progress as of its newest checkpoint (none yet: step 0)."""
    if not marker:
        return {
            "step": 0,
            "total_steps": None,
            "loss": None,
            "psnr_db": None,
            "resumes": 0,
            "train_seconds": None,
            "checkpoint_age_seconds": None,
        }
    created = marker.created
    return {
        "step": marker.step,
        "total_steps": marker.total_steps,
        "loss": marker.loss,
        "psnr_db": marker.psnr_db,
        "resumes": marker.resumes,
        "frames": marker.frames,
        "train_seconds": marker.train_seconds,
        "checkpoint_age_seconds": None if created is None else round(time.time() - created, 1),
    }


def _last_loss_row(output: str) -> tuple[int, float] | None:
    """(step, loss) of loss.csv's last row, from its last LOSS_TAIL_BYTES only (on a store,
    one ranged read): a long job's loss.csv holds a row per step."""
    uri = storage.join(output, outputs.LOSS)
    if not storage.exists(uri):
        return None
    tail = storage.read_tail(uri, LOSS_TAIL_BYTES, what="loss.csv")
    lines = tail.decode(errors="replace").strip().splitlines()
    if len(tail) >= LOSS_TAIL_BYTES:
        lines = lines[1:]  # the first may be cut; the header is further up, so a row remains
    elif len(lines) < 2:  # the whole file: a header and no row
        return None
    if not lines:
        return None
    try:
        step, _, loss = lines[-1].split(",")[:3]
        return int(step), float(loss)
    except ValueError:  # not our loss.csv (or a torn last line): the checkpoint's step stands
        return None


def format_status(s: dict[str, Any]) -> str:
    parts = [s["state"]]
    if s.get("why"):  # unknown: what is there instead; interrupted: how its run was seen to stop
        parts[0] += f" ({s['why']})"
    if s["state"] == "unknown":
        return parts[0]
    if s.get("step") is not None:
        parts.append(f"step {s['step']}" + (f" of {s['total_steps']}" if s.get("total_steps") else ""))
    if s.get("loss") is not None:
        parts.append(f"loss {s['loss']:.4g}")
    if s.get("psnr_db") is not None:
        parts.append(f"PSNR {s['psnr_db']:.2f} dB")
    if s.get("parameters") is not None and s.get("bits_per_pixel") is not None:
        parts.append(f"{s['parameters']} parameters ({s['bits_per_pixel']:.2f} bits per pixel)")
    parts.append(f"resumes {s.get('resumes') or 0}")
    if s.get("checkpoint_age_seconds") is not None:
        parts.append(f"newest checkpoint {s['checkpoint_age_seconds']:.0f}s old")
    if s.get("video"):
        parts.append(f"video {s['video']}")
    return ", ".join(parts)


def _read_torch(uri: str) -> Any:
    data = storage.read_bytes(uri, what="model")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # not a PyTorch file, or one holding more than tensors and plain values
        raise UnavailableError(
            f"{uri}: not a model.pt this tool can read (not a PyTorch file of tensors); "
            "pass a job's model.pt or its output location"
        ) from None


def load_model(source: str) -> tuple[torch.nn.Module, dict]:
    """A trained field from model.pt, an output location (its model.pt, else its newest checkpoint)."""
    if source.endswith(".pt"):
        blob = _read_torch(source)
        fmt = blob.get("format") if isinstance(blob, dict) else None
        if fmt == CHECKPOINT_FORMAT:
            raise UnavailableError(
                f"{source}: is a training checkpoint, not a model.pt; "
                "render the job's output location instead (the folder that holds checkpoints/)"
            )
        if fmt != outputs.MODEL_FORMAT:
            found = "it has no format tag" if fmt is None else f"its format is {str(fmt)[:60]!r}"
            raise UnavailableError(
                f"{source}: not an imgfit-batch model.pt ({found}, expected {outputs.MODEL_FORMAT!r})"
            )
        meta, weights = blob, blob.get("state_dict")
    elif storage.exists(storage.join(source, outputs.MODEL)):
        return load_model(storage.join(source, outputs.MODEL))
    else:
        record: outputs.JobRecord | None = outputs.read(outputs.JobRecord, storage.join(source, outputs.SPEC))
        loaded = CheckpointStore(storage.join(source, outputs.CHECKPOINTS), keep=2, warn=lambda m: None).load()
        if record is None or loaded is None:
            raise UnavailableError(f"{source}: no model.pt and no checkpoint to render from")
        try:
            if record.spec is None or record.width is None or record.height is None:
                raise KeyError("spec, width or height")
            color = record.spec["train"]["color"]
            meta = {
                "model": record.spec["model"],
                "out_features": 1 if color == "gray" else 3,
                "width": record.width,
                "height": record.height,
            }
            weights = loaded.state["parts"]["averager"].get("weights", loaded.state["parts"]["model"])
        except (KeyError, TypeError, AttributeError):
            raise UnavailableError(
                f"{storage.join(source, outputs.SPEC)}: not the spec.json this tool writes "
                "(it has no model, color or size); rerun the job to rewrite it"
            ) from None
    return _build(source, meta, weights)


def _build(source: str, meta: dict, weights: Any) -> tuple[torch.nn.Module, dict]:
    """The model `meta` describes with `weights` loaded; any mismatch is a damaged or foreign file."""
    from pydantic import TypeAdapter

    from imgfit_batch.models import ModelConfig

    try:
        config: Any = TypeAdapter(ModelConfig).validate_python(meta["model"])
        size = {k: int(meta[k]) for k in ("out_features", "width", "height")}
        if not all(0 < v < 1 << 20 for v in size.values()):
            raise ValueError(f"size out of range: {size}")
        model = config.build(size["out_features"], size["width"], size["height"])
        model.load_state_dict(weights)
    except Exception as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UnavailableError(
            f"{source}: its model does not match its weights or description ({reason}); "
            "the file is damaged or was not written by imgfit-batch"
        ) from None
    return model.eval(), {**meta, **size}


def render_to(
    source: str, out: str, scale: float | None, width: int | None, height: int | None, device: str = "auto"
) -> tuple[int, int]:
    from imgfit_batch.device import pick_device
    from imgfit_batch.rendering import render_image

    model, meta = load_model(source)
    w0, h0 = int(meta["width"]), int(meta["height"])
    if width is None and height is None:
        k = 1.0 if scale is None else scale
        width, height = max(1, round(w0 * k)), max(1, round(h0 * k))
    elif width is None:
        assert height is not None
        width = max(1, round(w0 * height / h0))
    elif height is None:
        height = max(1, round(h0 * width / w0))
    if width * height > 1 << 31:
        raise SpecError(f"--scale/--width/--height: {width}x{height} is too large to render")
    dev = pick_device(device)
    image = render_image(model.to(dev), w0, h0, width, height, dev).cpu().numpy()  # box-filtered when smaller
    storage.write_bytes(out, outputs.png_bytes(image))
    return width, height

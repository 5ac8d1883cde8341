"""The recipe: what a spec leaves unset, from the image and, under a time budget, from
what this device measured it can do.

    spec leaves a value unset
      -> the image's size decides it (the kind's `derive`: grid, table, batch, film cadence)
      -> with train.max_seconds set and train.epochs unset, a short calibration on the
         device (samples/s of the real training step at a few batch sizes) decides the
         batch and the checkpoint cadence (`choose`, a pure function of the numbers)
      -> recorded (spec.json, summary.json, every checkpoint); a resumed run takes the
         recorded values, on whatever device it resumes, and never calibrates again

With `epochs` set, or no budget, there is nothing to calibrate and the recipe is the
image's alone (today's derivation, bit for bit). So is it where the image has no more
pixels than the image-derived batch (nothing to choose).

Why the batch: a step of 2^16 pixels is what the image-derived recipe picks, because at
equal samples smaller steps learn more (docs/models.md: 3 epochs of a 1 MP photo, 34.6 dB
in 4x smaller steps against 29.6 dB). But a step's cost is part per sample and part per
parameter (Adam, the average, the table's gradient: the same at any batch), and where the
per-parameter part dominates, a bigger step costs little more than a small one: on one
H100 the hash grid of a 20 MP photo stepped 17.3 M samples/s at 2^16 and 64.1 M at 2^18
(README, GPU configuration); on this 2-core CPU a 1200x800 photo 0.09 M at 2^16 and 0.31 M
at 2^18 (docs/models.md: 30.7 dB instead of 23.0 in 30 s). So a 4x bigger batch is taken
where it buys at least MIN_SPEEDUP_PER_4X_BATCH times the samples per second: half as
many steps, each of 4x the samples. That threshold is a judgement, not a measurement;
`bash benchmarks/gpu.sh recipe` measures a GPU's 20 MP job both ways.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from imgfit_batch import fieldpath

# The job's spec (imgfit_batch.spec.JobSpec), read field by field. Not imported, not even for
# its type: the spec is the schema and knows nothing of the recipe, nor the recipe of it.
Spec = Any

# A 4x bigger batch must buy this many times the samples per second (see the docstring).
MIN_SPEEDUP_PER_4X_BATCH = 2.0
# Batches tried: the image-derived one times these factors (capped at the image's pixels).
BATCH_FACTORS = (1, 4, 16)
# The calibration's share of the budget, and its ceiling; each batch gets an equal part.
CALIBRATION_SHARE, MAX_CALIBRATION_SECONDS = 0.03, 6.0
MIN_CALIBRATION_STEPS = 3  # timed steps per batch (after one untimed warm-up step)
# Periodic checkpoints by steps come no more often than this, measured: the step-based
# cadence (checkpoint.every_n_steps, 500 by default) was chosen for CPU steps of ~0.3 s;
# at a GPU's ~250 steps/s it would checkpoint every 2 s and the writes would queue behind
# each other. Raised only where the spec leaves checkpoint.every_n_steps at its default (500).
MIN_SECONDS_BETWEEN_CHECKPOINTS = 30.0


@dataclass
class Calibration:
    """What the device measured: samples per second of the training step, by batch size."""

    device: str
    samples_per_second: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "samples_per_second": {str(b): round(s, 1) for b, s in sorted(self.samples_per_second.items())},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(str(d["device"]), {int(b): float(s) for b, s in d["samples_per_second"].items()})


def should_calibrate(spec: Spec) -> bool:
    """A time budget without epochs, for a kind whose recipe follows the image, with the batch unset."""
    return (
        spec.train.max_seconds is not None
        and spec.train.epochs is None
        and spec.train.batch_size is None
        and hasattr(spec.model, "derive")
    )


def candidate_batches(image_batch: int, num_pixels: int) -> list[int]:
    """The batches a calibration times: the image-derived one and bigger ones up to the image's pixels.
    Empty when there is nothing to choose (the whole image is one batch already)."""
    if image_batch >= num_pixels:
        return []
    return sorted({min(image_batch * f, num_pixels) for f in BATCH_FACTORS})


def choose(spec: Spec, image_derived: dict[str, Any], calibration: Calibration | None) -> tuple[dict[str, Any], str]:
    """The values the measured numbers decide, by dotted field, and a sentence saying from what.
    A pure function: the same numbers give the same recipe on any machine."""
    if calibration is None or not calibration.samples_per_second:
        return {}, ""
    speed = calibration.samples_per_second
    batches = sorted(speed)
    batch = image_derived.get("train.batch_size", batches[0])
    batch = batch if batch in speed else batches[0]
    for bigger in batches:
        if bigger <= batch:
            continue
        # a step 4x bigger must be worth MIN_SPEEDUP_PER_4X_BATCH x the samples/s; other ratios pro rata (log scale)
        need = MIN_SPEEDUP_PER_4X_BATCH ** (math.log(bigger / batch) / math.log(4))
        if speed[bigger] >= need * speed[batch]:
            batch = bigger
    chosen: dict[str, Any] = {"train.batch_size": batch}
    steps_per_second = speed[batch] / batch
    if _at_default(spec, "checkpoint.every_n_steps"):
        every = max(spec.checkpoint.every_n_steps, math.ceil(steps_per_second * MIN_SECONDS_BETWEEN_CHECKPOINTS))
        if every != spec.checkpoint.every_n_steps:
            chosen["checkpoint.every_n_steps"] = every
    rates = ", ".join(f"{b}: {s / 1e6:.2f} M" for b, s in sorted(speed.items()))
    why = f"calibrated on {calibration.device} (samples/s by batch: {rates}; budget {spec.train.max_seconds:g} s)"
    return chosen, why


def validate_note() -> str:
    """What `validate` says where the job will calibrate (it cannot: it does not run on the job's device)."""
    return (
        "# train.max_seconds without train.epochs: when the job starts it times its training step on its device "
        f"at {', '.join(map(str, BATCH_FACTORS))} times the image's batch and takes a bigger batch (and checkpoints "
        "less often by steps) where that device runs it enough faster; the values above are the image's alone. "
        "summary.json and spec.json record the recipe and what it measured; a resumed run keeps it"
    )


def calibrate(
    step: Callable[[int], None], batches: list[int], seconds: float, device: torch.device, device_name: str
) -> Calibration:
    """Samples/s of `step(batch)` (one real training step on a throwaway copy) at each batch:
    one untimed warm-up step each, then rounds of MIN_CALIBRATION_STEPS timed steps at every
    batch in turn until `seconds` have passed (at least one round), so that what slows the
    machine for a while (a neighbour, a cold cache) slows every batch alike."""
    for batch in batches:
        step(batch)  # warm-up: allocations, kernel selection, graph capture
    _sync(device)
    spent = {b: 0.0 for b in batches}
    done = {b: 0 for b in batches}
    t_start = time.monotonic()
    while not done[batches[0]] or time.monotonic() - t_start < seconds:
        for batch in batches:
            t0 = time.monotonic()
            for _ in range(MIN_CALIBRATION_STEPS):
                step(batch)
            _sync(device)  # the clock only means something once the device caught up
            spent[batch] += time.monotonic() - t0
            done[batch] += MIN_CALIBRATION_STEPS
    return Calibration(device_name, {b: b * done[b] / max(spent[b], 1e-9) for b in batches})


def calibration_seconds(max_seconds: float) -> float:
    return min(CALIBRATION_SHARE * max_seconds, MAX_CALIBRATION_SECONDS)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- what a job records


def record(chosen: dict[str, Any], why: str, calibration: Calibration | None) -> dict:
    """The recipe as plain values: for spec.json, summary.json and every checkpoint (its marker too)."""
    return {
        "chosen": dict(chosen),
        "from": why or "the image's size",
        "calibration": calibration.to_dict() if calibration else None,
    }


def applicable(spec: Spec, chosen: dict[str, Any]) -> dict[str, Any]:
    """The recorded values this spec still leaves to the recipe (a value the user set since wins)."""
    out = {}
    for dotted, value in chosen.items():
        try:
            current = fieldpath.get(spec, dotted)
        except AttributeError:
            continue  # a field this version no longer has
        if current is None or _at_default(spec, dotted):
            out[dotted] = value
    return out


def _at_default(spec: Spec, dotted: str) -> bool:
    """A field the recipe may raise: left at its (non-null) default. Only checkpoint.every_n_steps is one."""
    if dotted != "checkpoint.every_n_steps":
        return False
    value = spec.checkpoint.every_n_steps
    return value is not None and value == type(spec.checkpoint).model_fields["every_n_steps"].default


def recorded_choice(recorded: dict | None) -> dict[str, Any] | None:
    """The values a checkpoint's recipe chose (None: the checkpoint recorded no recipe)."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("chosen"), dict):
        return None
    return dict(recorded["chosen"])

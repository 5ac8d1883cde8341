"""The spec fields that change a job's result are marked on the fields themselves
(spec.RESULT), and only those decide whether a checkpoint or a completed job may be
taken up under a spec."""

from __future__ import annotations

from imgfit_batch.spec import changed_fields, result_fields, result_paths
from imgfit_batch.specfile import parse_spec

# The list spec.py kept by hand before the fields carried the mark (issue 29): none lost it.
BEFORE = (
    "image",
    "model",
    "train.color",
    "train.epochs",
    "train.batch_size",
    "train.lr",
    "train.lr_schedule",
    "train.lr_step_epochs",
    "train.lr_gamma",
    "train.lr_final",
    "train.ema_decay",
    "train.grad_clip",
    "train.adam_eps",
    "train.adam_betas",
    "train.seed",
    "train.precision",
    "video.every_n_steps",
    "video.fps",
    "video.max_side",
    "video.filter",
    "video.crf",
    "video.preset",
)


def test_the_marked_fields_are_the_ones_that_change_a_result_in_declaration_order():
    assert result_paths() == BEFORE


def test_a_marked_field_changes_the_result_fields_and_an_unmarked_one_does_not():
    base = {"image": "in.png", "output": "out", "train": {"lr": 0.01}}
    fields = result_fields(parse_spec(base), "in.png")
    assert fields["model.kind"] == "fourier" and fields["train.lr"] == 0.01, "a marked section counts field by field"
    other_lr = result_fields(parse_spec({**base, "train": {"lr": 0.02}}), "in.png")
    assert changed_fields(fields, other_lr) == ["train.lr"]
    cadence = {**base, "checkpoint": {"every_n_steps": 7}, "log": {"every_seconds": 3}}
    cadence = result_fields(parse_spec(cadence), "in.png")
    assert changed_fields(fields, cadence) == []

"""The size budget's field, declared once for every model kind (imgfit_batch.sizing meets it)."""

from __future__ import annotations

from typing import Any

from pydantic import Field


def max_parameters_field() -> Any:
    """`model.max_parameters`, the same field on every kind (imgfit_batch.sizing)."""
    return Field(
        None,
        ge=1,
        le=1 << 40,
        description="A size budget: at most this many learned parameters (bits per pixel at fp32: 32 x this / "
        "the image's pixels). What the spec leaves unset is derived to fit inside it: the width of the MLP kinds "
        "at their depth; for hashgrid with decoder unset, the budget's layout (decoder mlp, 2 features a level, "
        "the fewest levels whose largest table holds 95% of the most that fits), with a decoder set its table "
        "rows (2^T), then its levels, and either way a batch near this / 64. Explicit settings over it are exit 2. "
        "Unset: no budget.",
    )

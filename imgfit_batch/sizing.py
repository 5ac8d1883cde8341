"""A size budget for the model (`model.max_parameters`), met the way a codec meets a bitrate.

A fit is read by its quality at a size: PSNR against parameters, or bits per pixel. With a
budget set, what the spec leaves unset is derived so the model fits inside it, as large as
it may be: for the MLP kinds (`fourier`, `skipconn`, `siren`) the width at their depth. For
`hashgrid` with its decoder left unset, the budget's layout (`hashgrid_layout`): the small
MLP decoder, F = 2 features a level, and of the levels and table rows the spec leaves
open, the fewest levels that hold nearly the most parameters that fit; with a decoder
set, the table's rows (2^T a level), then the number of levels. A spec whose own settings exceed the budget is
refused (exit 2), naming both numbers.

Sizes are counted, not estimated: the model is built on PyTorch's `meta` device (shapes,
no memory) and its learned parameters are summed, so the count is what the job trains and
`model.pt` holds.
"""

from __future__ import annotations

import math
from typing import Any

from imgfit_batch.errors import SpecError

# The fields a budget may choose, per kind, in the order they are given up: for each, the
# range of values searched (the schema's bounds). The largest value that fits is taken.
KNOBS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "fourier": (("hidden_size", 1, 8192),),
    "skipconn": (("hidden_size", 1, 8192),),
    "siren": (("hidden_size", 1, 4096),),
    "hashgrid": (("log2_hashmap_size", 8, 26), ("num_levels", 1, 32)),
}


def parameters(model: Any, out_features: int, width: int, height: int) -> int:
    """The learned parameters of `model` (a kind's config) built for a width x height image."""
    import torch

    with torch.device("meta"):
        built = model.build(out_features, width, height)
    return sum(p.numel() for p in built.parameters())


def follows_image(spec: Any) -> bool:
    """Whether `spec` has a size budget whose model's size depends on the image's size (so
    it can be met or refused only once the size is known; hashgrid's dense levels, say)."""
    model = spec.model
    if getattr(model, "max_parameters", None) is None:
        return False
    out_features = 1 if spec.train.color == "gray" else 3
    return parameters(model, out_features, 64, 64) != parameters(model, out_features, 4096, 2048)


def fit(model: Any, chosen: set[str], out_features: int, width: int, height: int) -> dict[str, Any]:
    """The values, by dotted field, that bring `model` inside its `max_parameters` (none when
    it fits already or has no budget). `chosen`: the model fields the spec itself sets, which
    the budget never changes. Raises SpecError when the spec's own settings leave no way in."""
    budget = getattr(model, "max_parameters", None)
    if budget is None:
        return {}
    if model.kind == "hashgrid" and "decoder" not in chosen:
        return hashgrid_layout(model, chosen, out_features, width, height)
    free = [knob for knob in KNOBS.get(model.kind, ()) if knob[0] not in chosen]
    size = parameters(model, out_features, width, height)
    if not free:
        if size > budget:
            raise SpecError(
                f"model.max_parameters: {budget:,} parameters, but the model the spec sets has {size:,} "
                f"for this {width}x{height} image; raise the budget, or leave "
                f"{' and '.join('model.' + name for name, *_ in KNOBS.get(model.kind, ())) or 'the model'} "
                "unset to be derived to fit"
            )
        return {}
    values: dict[str, Any] = {}
    for name, low, high in free:
        best = _largest(model, name, low, high, budget, out_features, width, height)
        if best is not None:
            values[name] = best
            return {f"model.{k}": v for k, v in values.items()}
        # even its smallest value is too large: give this one up at its smallest, try the next
        values[name] = low
        model = model.model_copy(update={name: low})
    size = parameters(model, out_features, width, height)
    raise SpecError(
        f"model.max_parameters: {budget:,} parameters, but even at its smallest "
        f"({', '.join(f'model.{k} {v}' for k, v in values.items())}) the model has {size:,} "
        f"for this {width}x{height} image; raise the budget, or set smaller values yourself"
    )


def _largest(
    model: Any, name: str, low: int, high: int, budget: int, out_features: int, width: int, height: int
) -> int | None:
    """The largest value of `name` in [low, high] whose model fits `budget` (the count grows
    with each knob), or None when even `low` does not."""

    def fits(value: int) -> bool:
        return parameters(model.model_copy(update={name: value}), out_features, width, height) <= budget

    if not fits(low):
        return None
    while low < high:  # invariant: fits(low)
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


# The budget's hashgrid layout, measured on one 768x512 photo in 30 s (benchmarks/NOTES.md;
# checked on others by benchmarks/rate_distortion.py): at ~500 k parameters the small MLP
# decoder beat a linear one by 5.8 dB, F = 2 beat F = 1 (by 4 dB) and F = 4 (by 3), and
# fewer levels with larger tables beat more levels with smaller ones (10 levels of 2^16
# rows: 41.0 dB, 16 of 2^15: 37.7). The decoder stays Instant-NGP's one hidden layer of 64
# (two layers: 2.6 dB behind; 32 wide: 1.1 dB ahead at 2^16 a batch, from 47 % more steps,
# not measured at the budget's batch).
BUDGET_DECODER, BUDGET_FEATURES = "mlp", 2
BUDGET_LEVELS = (4, 16)  # the levels searched (Instant-NGP uses 16)
# Near-equal sizes favour fewer levels with larger tables: at 250 k, 8 levels of 2^15 rows
# (241 k) gave 36.0 dB in 30 s where 14 of 2^14 (249 k) gave 35.4 (benchmarks/NOTES.md).
FILL = 0.95


def hashgrid_layout(model: Any, chosen: set[str], out_features: int, width: int, height: int) -> dict[str, Any]:
    """The budget's layout for `hashgrid` (decoder unset): decoder mlp and F = 2 unless set,
    then of the levels and table rows the spec leaves open, the fewest levels whose largest
    table inside the budget holds at least FILL of the most parameters any pair fits (then
    the most parameters, then fewer rows). Raises SpecError when none fits."""
    budget = model.max_parameters
    fixed: dict[str, Any] = {"decoder": BUDGET_DECODER}
    if "features_per_level" not in chosen:
        fixed["features_per_level"] = BUDGET_FEATURES
    model = model.model_copy(update=fixed)
    levels = [model.num_levels] if "num_levels" in chosen else range(BUDGET_LEVELS[0], BUDGET_LEVELS[1] + 1)
    rows = [model.log2_hashmap_size] if "log2_hashmap_size" in chosen else range(8, 27)
    fitting: list[tuple[int, int, int]] = []  # (size, levels, rows) inside the budget
    smallest: tuple[int, int, int] | None = None
    for num_levels in levels:
        previous = -1
        for log2_rows in rows:
            size = parameters(
                model.model_copy(update={"num_levels": num_levels, "log2_hashmap_size": log2_rows}),
                out_features,
                width,
                height,
            )
            if smallest is None or size < smallest[0]:
                smallest = (size, num_levels, log2_rows)
            if size > budget or size == previous:
                break  # more rows only add parameters (none once every level is dense)
            previous = size
            fitting.append((size, num_levels, log2_rows))
    if not fitting:
        assert smallest is not None
        raise SpecError(
            f"model.max_parameters: {budget:,} parameters, but even at its smallest (model.num_levels "
            f"{smallest[1]}, model.log2_hashmap_size {smallest[2]}) the model has {smallest[0]:,} for this "
            f"{width}x{height} image; raise the budget, or set smaller values yourself"
        )
    most = max(size for size, _, _ in fitting)
    num_levels, _, log2_rows = min((levels, -size, rows) for size, levels, rows in fitting if size >= FILL * most)
    values = {**fixed, "num_levels": num_levels, "log2_hashmap_size": log2_rows}
    return {f"model.{k}": v for k, v in values.items() if k not in chosen}


def budget_batch(max_parameters: int) -> int:
    """The training batch under a size budget: a power of two near parameters / 64, 2^12 to
    2^16. A step's cost is part per sample, part per parameter (Adam, the weights' average):
    at 560 k parameters on two CPU cores, 2^13 pixels a step gave 43.9 dB in 30 s against
    43.4 at 2^14, 42.0 at 2^12 and 37.7 at 2^16 (docs/performance.md)."""
    return 1 << max(12, min(16, round(math.log2(max(max_parameters, 1) / 64))))

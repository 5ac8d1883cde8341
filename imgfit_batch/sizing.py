"""A size budget for the model (`model.max_parameters`), met the way a codec meets a bitrate.

A fit is read by its quality at a size: PSNR against parameters, or bits per pixel. With a
budget set, what the spec leaves unset is derived so the model fits inside it, as large as
it may be: for the MLP kinds (`fourier`, `skipconn`, `siren`) the width at their depth; for
`hashgrid` the table's rows (2^T a level), then the number of levels. A spec whose own
settings exceed the budget is refused (exit 2), naming both numbers.

Sizes are counted, not estimated: the model is built on PyTorch's `meta` device (shapes,
no memory) and its learned parameters are summed, so the count is what the job trains and
`model.pt` holds.
"""

from __future__ import annotations

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


def fit(model: Any, chosen: set[str], out_features: int, width: int, height: int) -> dict[str, Any]:
    """The values, by dotted field, that bring `model` inside its `max_parameters` (none when
    it fits already or has no budget). `chosen`: the model fields the spec itself sets, which
    the budget never changes. Raises SpecError when the spec's own settings leave no way in."""
    budget = getattr(model, "max_parameters", None)
    if budget is None:
        return {}
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

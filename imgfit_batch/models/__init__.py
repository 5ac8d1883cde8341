"""Coordinate networks: (x, y) in [-1, 1] -> intensity/RGB in [0, 1].

Every kind is a pydantic config class (its spec section, discriminated by `kind`)
with `build(out_features, width, height) -> nn.Module` (the image's size, for kinds
whose layout follows it) and `train_defaults` (the training settings
it uses when the spec leaves them unset). A built module maps a float32 tensor
(N, 2) of (x, y) — x along columns, y upward along rows — to (N, out_features).
"""

from __future__ import annotations

import typing
from typing import Annotated

from pydantic import Field

from imgfit_batch.models.hashgrid import HashGridConfig
from imgfit_batch.models.siren import SirenConfig
from imgfit_batch.models.skipconn import FourierConfig, SkipConnConfig

# The registry of kinds: a new kind is its module (imported above) and its config class in this union.
ModelConfig = Annotated[FourierConfig | SkipConnConfig | HashGridConfig | SirenConfig, Field(discriminator="kind")]

# every kind's name (its `kind` literal), as the registry lists them
KINDS: tuple[str, ...] = tuple(
    typing.get_args(cls.model_fields["kind"].annotation)[0] for cls in typing.get_args(typing.get_args(ModelConfig)[0])
)

__all__ = ["KINDS", "ModelConfig", "FourierConfig", "SkipConnConfig", "HashGridConfig", "SirenConfig"]

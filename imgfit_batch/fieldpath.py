"""Dotted field paths (`model.kind`, `train.lr`): split, joined, read and written in one place.

A path names a spec field through its sections. It is read along a spec (pydantic
models) or its tree (nested dicts, as YAML and model_dump give it), written into a
tree, and followed through the model classes to the fields it names. Imports no
other module of the package, so spec and study can both use it.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

SEP = "."


class NotASection(ValueError):
    """A path goes on through something that holds no fields (a value, or nothing); `key` names it."""

    def __init__(self, key: str):
        super().__init__(f"{key} is not a section")
        self.key = key


def split(path: str) -> list[str]:
    """The path's names, outermost first: `train.lr` -> ['train', 'lr']."""
    return path.split(SEP)


def join(*names: str) -> str:
    """The path of these names: ('train', 'lr') -> `train.lr`."""
    return SEP.join(names)


def within(path: str, section: str) -> bool:
    """Whether `path` is `section` itself or a field inside it (`model.kind` is within `model`, not within `mod`)."""
    return path == section or path.startswith(section + SEP)


def get(node: Any, path: str) -> Any:
    """The value at `path`, stepping into a mapping by key and into anything else (a model) by attribute."""
    for key in split(path):
        node = node[key] if isinstance(node, Mapping) else getattr(node, key)
    return node


def set_in(tree: dict, path: str, value: Any, *, create: bool = False) -> None:
    """Set `path` in `tree`'s nested dicts in place (`create`: make missing or null sections), else NotASection."""
    *parents, leaf = split(path)
    node = tree
    for key in parents:
        child = node.get(key)
        if child is None and create:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise NotASection(key)
        node = child
    node[leaf] = value


def updated(tree: dict, path: str, value: Any) -> dict:
    """A copy of `tree` with `path` set: the dicts on its way copied (missing or null ones made), the rest shared."""
    *parents, leaf = split(path)
    top = node = dict(tree)
    for key in parents:
        child = node.get(key)
        if child is not None and not isinstance(child, dict):
            raise NotASection(key)
        node[key] = copied = dict(child or {})
        node = copied
    node[leaf] = value
    return top


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (a section, each kind of a union), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def fields_at(models: Iterable[type[BaseModel]], path: str) -> list[FieldInfo]:
    """The fields `path` names from `models` on, through every model a field holds (any kind); [] for no field."""
    classes, found = list(models), []
    for key in split(path):
        found = [cls.model_fields[key] for cls in classes if key in cls.model_fields]
        if not found:
            return []
        classes = [m for f in found for m in models_in(f.annotation)]
    return found

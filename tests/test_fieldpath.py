"""Dotted field paths (imgfit_batch.fieldpath): split and joined, read along models and
trees, written into trees (in place or as a copy), followed through model classes; and
the spec's and the study's errors that name a path, as the user sees them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from imgfit_batch import fieldpath, study
from imgfit_batch.errors import SpecError
from imgfit_batch.specfile import apply_overrides


class Sec(BaseModel):
    z: int = 0


class KindA(BaseModel):
    kind: Literal["a"] = "a"
    x: int = 0
    shared: int = 0


class KindB(BaseModel):
    kind: Literal["b"] = "b"
    y: int = 0
    shared: int = 0


class Root(BaseModel):
    sec: Sec = Field(default_factory=Sec)
    maybe: Sec | None = None
    kind: Annotated[KindA | KindB, Field(discriminator="kind")] = Field(default_factory=KindA)
    leaf: int = 0


def test_a_path_splits_into_its_names_outermost_first_and_joins_back():
    assert fieldpath.split("train.lr") == ["train", "lr"]
    assert fieldpath.split("image") == ["image"]
    assert fieldpath.split("a..b") == ["a", "", "b"]  # an empty name stays, for the caller to refuse
    assert fieldpath.join("train", "lr") == "train.lr"
    assert fieldpath.join(*fieldpath.split("model.encoding.levels")) == "model.encoding.levels"


def test_a_path_is_within_itself_and_its_sections_but_not_a_namesake_prefix():
    assert fieldpath.within("model.kind", "model")
    assert fieldpath.within("model", "model")
    assert fieldpath.within("a.b.c", "a.b")
    assert not fieldpath.within("modelx.kind", "model")
    assert not fieldpath.within("model", "model.kind")


def test_getting_a_path_follows_attributes_of_models_and_keys_of_mappings():
    assert fieldpath.get(Root(leaf=3), "leaf") == 3
    assert fieldpath.get(Root(kind={"kind": "b", "y": 5}), "kind.y") == 5
    assert fieldpath.get({"train": {"lr": 0.5}}, "train.lr") == 0.5
    assert fieldpath.get(SimpleNamespace(log={"tensorboard": {"on": True}}), "log.tensorboard.on") is True


def test_getting_a_missing_field_raises_rather_than_guessing():
    with pytest.raises(KeyError):
        fieldpath.get({"train": {}}, "train.lr")
    with pytest.raises(AttributeError):
        fieldpath.get(Root(), "sec.nope")


def test_setting_a_path_changes_only_its_leaf_in_place():
    tree = {"train": {"lr": 1, "seed": 2}, "video": {"fps": 30}}
    fieldpath.set_in(tree, "train.lr", 5)
    fieldpath.set_in(tree, "output", "out")
    assert tree == {"train": {"lr": 5, "seed": 2}, "video": {"fps": 30}, "output": "out"}


def test_setting_a_path_through_a_leaf_is_refused_naming_the_leaf():
    tree = {"train": {"lr": 1}}
    for create in (False, True):
        with pytest.raises(fieldpath.NotASection) as caught:
            fieldpath.set_in(tree, "train.lr.x", 2, create=create)
        assert (caught.value.key, str(caught.value)) == ("lr", "lr is not a section")
    assert tree == {"train": {"lr": 1}}


def test_setting_a_path_through_a_missing_or_null_section_makes_it_only_when_asked():
    with pytest.raises(fieldpath.NotASection, match="^a is not a section$"):
        fieldpath.set_in({}, "a.b", 1)
    tree: dict = {"n": None}
    fieldpath.set_in(tree, "n.m.k", 1, create=True)
    fieldpath.set_in(tree, "n.m.j", 2, create=True)
    assert tree == {"n": {"m": {"k": 1, "j": 2}}}


def test_an_updated_copy_copies_the_dicts_on_the_path_and_shares_the_rest():
    tree = {"a": {"b": 1}, "c": {"d": 2}, "e": 3}
    new = fieldpath.updated(tree, "a.x", 4)
    assert tree == {"a": {"b": 1}, "c": {"d": 2}, "e": 3}
    assert new == {"a": {"b": 1, "x": 4}, "c": {"d": 2}, "e": 3}
    assert new["c"] is tree["c"]
    assert fieldpath.updated({"n": None}, "n.m.k", 1) == {"n": {"m": {"k": 1}}}


def test_an_updated_copy_through_a_leaf_is_refused_naming_the_leaf():
    tree = {"train": {"lr": 1}}
    with pytest.raises(fieldpath.NotASection, match="^lr is not a section$"):
        fieldpath.updated(tree, "train.lr.x", 2)
    assert tree == {"train": {"lr": 1}}


def test_the_models_an_annotation_holds_are_its_section_or_each_kind_of_a_union():
    fields = Root.model_fields
    assert fieldpath.models_in(fields["sec"].annotation) == [Sec]
    assert fieldpath.models_in(fields["maybe"].annotation) == [Sec]
    assert fieldpath.models_in(fields["kind"].annotation) == [KindA, KindB]
    assert fieldpath.models_in(fields["leaf"].annotation) == []


def test_the_fields_a_path_names_are_found_through_sections_and_any_kind():
    assert fieldpath.fields_at([Root], "sec.z") == [Sec.model_fields["z"]]
    assert fieldpath.fields_at([Root], "kind.y") == [KindB.model_fields["y"]]
    assert fieldpath.fields_at([Root], "kind.shared") == [KindA.model_fields["shared"], KindB.model_fields["shared"]]
    assert fieldpath.fields_at([Root], "sec") == [Root.model_fields["sec"]]


def test_a_path_that_names_no_field_or_goes_on_below_a_value_finds_none():
    for path in ("nope", "sec.nope", "leaf.x", "leaf.leaf", "sec.z.z", "", "sec."):
        assert fieldpath.fields_at([Root], path) == [], path


def test_the_specs_set_errors_name_the_path_and_the_value_in_the_way():
    def error(tree: dict, item: str) -> str:
        with pytest.raises(SpecError) as caught:
            apply_overrides(tree, [item])
        return str(caught.value)

    assert error({"train": {"lr": 1}}, "train.lr.x=2") == "--set train.lr.x: lr is not a section"
    assert error({"train": [1]}, "train.lr=2") == "--set train.lr: train is not a section"
    assert error({}, "train..lr=2") == "--set train..lr=...: not a field path (use a.b=value)"
    assert apply_overrides({"train": None}, ["train.lr=0.5", "new.deep.x=[1, 2]"]) == {
        "train": {"lr": 0.5},
        "new": {"deep": {"x": [1, 2]}},
    }


def test_the_study_tells_leaves_sections_and_unknown_fields_apart():
    kinds = {p: study.field_kind(p) for p in ("model", "model.kind", "model.num_levels", "train.lr", "video")}
    assert kinds == {
        "model": "section",
        "model.kind": "leaf",
        "model.num_levels": "leaf",  # hashgrid's only: a field when any kind has it
        "train.lr": "leaf",
        "video": "section",
    }
    for path in ("train.lr.x", "model.nope", "nope", "", ".lr"):
        assert study.field_kind(path) is None, path

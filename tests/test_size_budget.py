"""`model.max_parameters`: a size budget every kind meets with what the spec leaves unset,
as large as fits; explicit settings over it are exit 2 naming both numbers."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_error_line, save_photo, tiny_spec, write_spec

import imgfit_batch
from imgfit_batch import sizing

WIDTH, HEIGHT = 96, 64  # a Kodak-shaped (3:2) image, small enough to build every kind at once


def resolved(model: dict, color: str = "rgb"):
    spec = imgfit_batch.load({"image": "in.png", "output": "out", "model": model, "train": {"color": color}})
    return spec.for_image(WIDTH, HEIGHT)


@pytest.mark.parametrize("kind", ["fourier", "skipconn", "siren", "hashgrid"])
@pytest.mark.parametrize("budget", [8_000, 60_000, 560_000])
def test_every_kind_fills_its_budget_with_what_the_spec_leaves_unset(kind, budget):
    model = {"kind": kind, "max_parameters": budget}
    if kind == "hashgrid":
        model["decoder"] = "sum"  # a decoder set: the table's rows, then the levels (the budget's layout: below)
    spec, derived = resolved(model)
    size = sizing.parameters(spec.model, 3, WIDTH, HEIGHT)
    assert size <= budget
    (knob, _, high), *_ = sizing.KNOBS[kind]
    chosen = getattr(spec.model, knob)
    assert derived[f"model.{knob}"] == chosen
    if chosen < high:  # as large as it may be: one more step of its knob would not fit
        bigger = spec.model.model_copy(update={knob: chosen + 1})
        assert sizing.parameters(bigger, 3, WIDTH, HEIGHT) > budget


def test_the_budget_leaves_what_the_spec_sets_and_takes_the_other_knob():
    # hashgrid's table rows are set: the levels are what the budget chooses
    for decoder in ({}, {"decoder": "sum"}):
        model = {"kind": "hashgrid", "max_parameters": 20_000, "log2_hashmap_size": 8, **decoder}
        spec, derived = resolved(model)
        assert spec.model.log2_hashmap_size == 8 and "model.log2_hashmap_size" not in derived
        assert sizing.parameters(spec.model, 3, WIDTH, HEIGHT) <= 20_000 and "model.num_levels" in derived


@pytest.mark.parametrize("size", [(WIDTH, HEIGHT), (768, 512), (4000, 3000)])
@pytest.mark.parametrize("budget", [60_000, 560_000, 12_000_000])
def test_hashgrid_with_its_decoder_unset_takes_the_budgets_layout_nearly_full_in_the_fewest_levels(size, budget):
    spec = imgfit_batch.load(
        {
            "image": "in.png",
            "output": "out",
            "model": {"kind": "hashgrid", "max_parameters": budget},
            "train": {"color": "rgb"},
        }
    )
    resolved_spec, derived = spec.for_image(*size)
    model = resolved_spec.model
    assert (model.decoder, model.features_per_level) == ("mlp", 2)
    assert derived["model.decoder"] == "mlp" and derived["model.num_levels"] == model.num_levels
    chosen = sizing.parameters(model, 3, *size)
    assert chosen <= budget
    low, high = sizing.BUDGET_LEVELS
    sizes = {  # every layout of the search that fits: (levels, rows) -> parameters
        (levels, rows): n
        for levels in range(low, high + 1)
        for rows in range(8, 27)
        if (
            n := sizing.parameters(model.model_copy(update={"num_levels": levels, "log2_hashmap_size": rows}), 3, *size)
        )
        <= budget
    }
    most = max(sizes.values())
    assert chosen >= sizing.FILL * most  # nearly as large as anything that fits
    assert not any(  # and no layout with fewer levels is
        n >= sizing.FILL * most for (levels, _), n in sizes.items() if levels < model.num_levels
    )
    assert chosen == max(n for (levels, _), n in sizes.items() if levels == model.num_levels)


def test_a_budget_sets_hashgrids_batch_by_the_models_size_unless_the_spec_sets_it():
    for budget, batch in ((100_000, 4096), (560_000, 8192), (1_000_000, 16384), (10**9, 65536)):
        spec, derived = resolved({"kind": "hashgrid", "max_parameters": budget})
        assert spec.train.batch_size == derived["train.batch_size"] == min(batch, WIDTH * HEIGHT)
    spec, derived = imgfit_batch.load(
        {"image": "in.png", "output": "out", "model": {"kind": "hashgrid", "max_parameters": 560_000}}
    ).for_image(768, 512)
    assert spec.train.batch_size == 8192
    spec, derived = imgfit_batch.load(
        {
            "image": "in.png",
            "output": "out",
            "model": {"kind": "hashgrid", "max_parameters": 560_000},
            "train": {"batch_size": 1000},
        }
    ).for_image(768, 512)
    assert spec.train.batch_size == 1000 and "train.batch_size" not in derived


def test_without_a_budget_the_model_is_todays():
    for kind in ("fourier", "skipconn", "siren", "hashgrid"):
        with_none, derived = resolved({"kind": kind})
        assert not any(k in derived for k in ("model.hidden_size",)), derived
        assert with_none.model.max_parameters is None


def test_explicit_settings_over_the_budget_are_exit_2_naming_both_numbers(cli, tmp_path):
    save_photo(tmp_path / "in.png", WIDTH, HEIGHT)
    spec = tiny_spec(str(tmp_path / "in.png"), str(tmp_path / "out"))
    spec["model"] = {"kind": "fourier", "fourier_order": 8, "hidden_size": 64, "num_hidden_layers": 3}
    spec["model"]["max_parameters"] = 1_000
    built = imgfit_batch.load(spec).model.model_copy()
    size = sizing.parameters(built, 3, WIDTH, HEIGHT)
    result = cli("validate", str(write_spec(tmp_path / "spec.yaml", spec)))
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "model.max_parameters", "1,000", f"{size:,}")


def test_a_job_with_a_budget_trains_a_model_inside_it_and_records_what_was_derived(cli, tmp_path):
    save_photo(tmp_path / "in.png", WIDTH, HEIGHT)
    spec = tiny_spec(str(tmp_path / "in.png"), str(tmp_path / "out"))
    spec["model"] = {"kind": "fourier", "fourier_order": 4, "num_hidden_layers": 2, "max_parameters": 2_000}
    result = cli("run", str(write_spec(tmp_path / "spec.yaml", spec)))
    assert result.exit_code == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert 0 < summary["parameters"] <= 2_000
    # the start line says the rate at fp32 and at fp16
    bpp = summary["bits_per_pixel"]
    assert f"({bpp:.2f} bits per pixel at fp32, {bpp / 2:.2f} at fp16)" in result.stdout + result.stderr
    assert "model.hidden_size" in summary["derived"]
    record = json.loads((tmp_path / "out" / "spec.json").read_text())
    assert record["spec"]["model"]["hidden_size"] == summary["derived"]["model.hidden_size"]


def test_a_budget_too_small_for_any_value_the_spec_leaves_open_is_exit_2_naming_the_smallest(cli, tmp_path):
    save_photo(tmp_path / "in.png", WIDTH, HEIGHT)
    spec = tiny_spec(str(tmp_path / "in.png"), str(tmp_path / "out"))
    spec["model"] = {"kind": "fourier", "max_parameters": 3_000}  # order 32's features alone need more
    result = cli("validate", str(write_spec(tmp_path / "spec.yaml", spec)))
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "model.max_parameters", "3,000", "model.hidden_size 1")


def test_validate_of_a_remote_image_leaves_a_size_dependent_budget_to_the_job_and_says_so(cli, tmp_path):
    # hashgrid's size follows the image (dense levels): at validate the size is unknown, so a
    # guessed size can neither refuse nor pass the budget; the note says when it is met
    spec = {"image": "s3://bucket/photo.jpg", "output": str(tmp_path / "out")}
    spec["model"] = {"kind": "hashgrid", "max_parameters": 50_000, "num_levels": 16, "log2_hashmap_size": 16}
    result = cli("validate", str(write_spec(tmp_path / "spec.yaml", spec)))
    assert result.exit_code == 0, result.stderr
    assert "model.max_parameters: met or refused for each image's size when the job runs" in result.stdout
    # a kind whose size does not follow the image is refused at once, remote image or not
    spec["model"] = {"kind": "fourier", "hidden_size": 64, "max_parameters": 1_000}
    result = cli("validate", str(write_spec(tmp_path / "spec.yaml", spec)))
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "model.max_parameters", "1,000")

"""Sweeps: a spec's tasks are its images x the Cartesian product of its `sweep:`
values, in a stable order, each writing to OUTPUT/<image stem>/<label>/; every value
is validated like its field before anything runs; `plan` lists the tasks."""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
import re

import pytest
import yaml
from conftest import TINY_MODEL, assert_one_error_line, save_photo, tiny_spec, write_spec

from imgfit_batch import study
from imgfit_batch.errors import SpecError
from imgfit_batch.study import load_spec


@pytest.fixture(autouse=True)
def _no_array_index(monkeypatch):
    for var in study.INDEX_VARIABLES:
        monkeypatch.delenv(var, raising=False)


def spec_with(tmp_path, sweep, images=("photo.png",), **sections) -> dict:
    """A tiny spec over local image paths (not created: expanding a spec reads no image)."""
    paths = [str(tmp_path / name) for name in images]
    spec = tiny_spec(paths if len(paths) > 1 else paths[0], str(tmp_path / "out"), **sections)
    if sections.get("model") == {}:  # no model section: the kinds' own defaults
        del spec["model"]
    if sweep is not None:
        spec["sweep"] = sweep
    return spec


def plan_json(cli, path: str, *args: str) -> dict:
    result = cli("plan", path, "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# ---------------------------------------------------------------- order and labels


def test_tasks_run_image_outermost_then_fields_as_written_the_last_fastest(cli, tmp_path):
    sweep = {"model.kind": ["siren", "fourier"], "train.lr": [0.01, 0.001, 0.1]}  # neither sorted
    spec = spec_with(tmp_path, sweep, images=("b.png", "a.png"), model={})
    got = plan_json(cli, write_spec(tmp_path / "spec.yaml", spec))
    expected = [
        (image, {"model.kind": kind, "train.lr": lr})
        for image in ("b.png", "a.png")
        for kind, lr in itertools.product(*sweep.values())
    ]
    assert got["count"] == 12 and got["array"] == "0-11"
    assert [t["index"] for t in got["tasks"]] == list(range(12))
    assert [(t["image"].rsplit("/", 1)[-1], t["overrides"]) for t in got["tasks"]] == expected
    assert got["tasks"][5]["label"] == "kind=fourier,lr=0.1"
    assert got["tasks"][5]["output"] == str(tmp_path / "out" / "b" / "kind=fourier,lr=0.1")
    # task i of the plan is what --index i (and the array variables) resolve to
    loaded = load_spec(write_spec(tmp_path / "spec.yaml", spec))
    for i, row in enumerate(got["tasks"]):
        task_spec, task = study.resolve_task(loaded, i)
        assert (task.index, task.count, task.image, task.label, task.overrides, task.output) == (
            i,
            12,
            row["image"],
            row["label"],
            row["overrides"],
            row["output"],
        )
        assert (task_spec.model.kind, task_spec.train.lr) == (
            row["overrides"]["model.kind"],
            row["overrides"]["train.lr"],
        )


def test_a_swept_sections_bundles_each_count_as_one_value_and_flatten_into_overrides_and_labels(cli, tmp_path):
    small = {"kind": "fourier", "fourier_order": 16, "hidden_size": 128, "num_hidden_layers": 8}
    sweep = {"model": [small, {"kind": "hashgrid"}], "train.max_seconds": [10, 30]}
    spec = {**spec_with(tmp_path, sweep, images=("b.png", "a.png")), "model": {"hidden_size": 16}}  # both kinds have it
    path = write_spec(tmp_path / "spec.yaml", spec)
    got = plan_json(cli, path)
    small_flat = {f"model.{k}": v for k, v in small.items()}
    expected = [
        (image, {**bundle, "train.max_seconds": seconds})
        for image in ("b.png", "a.png")
        for bundle in (small_flat, {"model.kind": "hashgrid"})
        for seconds in (10, 30)
    ]
    assert got["count"] == 8 and [(t["image"].rsplit("/", 1)[-1], t["overrides"]) for t in got["tasks"]] == expected
    assert [list(t["overrides"]) for t in got["tasks"][:3:2]] == [
        [*small_flat, "train.max_seconds"],
        ["model.kind", "train.max_seconds"],
    ]  # as written
    assert [t["label"] for t in got["tasks"][:4]] == [
        "kind=fourier,fourier_order=16,hidden_size=128,num_hidden_layers=8,max_seconds=10",
        "kind=fourier,fourier_order=16,hidden_size=128,num_hidden_layers=8,max_seconds=30",
        "kind=hashgrid,max_seconds=10",
        "kind=hashgrid,max_seconds=30",
    ]
    assert got["tasks"][6]["output"] == str(tmp_path / "out" / "a" / "kind=hashgrid,max_seconds=10")
    loaded = load_spec(path)
    for i, row in enumerate(got["tasks"]):  # --index i runs the plan's task i, with the bundle's values
        task_spec, task = study.resolve_task(loaded, i)
        assert (task.label, task.overrides, task.output) == (row["label"], row["overrides"], row["output"])
        model = task_spec.model.model_dump()
        assert {f"model.{k}": model[k] for k in model if f"model.{k}" in task.overrides} == {
            k: v for k, v in task.overrides.items() if k.startswith("model.")
        }
        assert task_spec.train.max_seconds == task.overrides["train.max_seconds"]
    # a bundle merges onto the spec's model section: the hashgrid tasks get its hidden_size and hashgrid's own
    # defaults, nothing of the fourier bundle
    assert (
        study.resolve_task(loaded, 2)[0].model
        == study.parse({"image": "x.png", "output": "o", "model": {"kind": "hashgrid", "hidden_size": 16}}).model
    )
    # names are last parts over every field any bundle sets; a leaf whose value is a list stays one value
    spec = study.parse(
        spec_with(
            tmp_path,
            {
                "video": [{"every_n_steps": 1}, {"fps": 4}],
                "checkpoint.every_n_steps": [3],
                "train": [{"adam_betas": [0.9, 0.99], "seed": 2}],
            },
        )
    )
    assert [(t.label, t.overrides) for t in study.tasks(spec)] == [
        (
            "video.every_n_steps=1,checkpoint.every_n_steps=3,adam_betas=0.9-0.99,seed=2",
            {"video.every_n_steps": 1, "checkpoint.every_n_steps": 3, "train.adam_betas": [0.9, 0.99], "train.seed": 2},
        ),
        (
            "fps=4,checkpoint.every_n_steps=3,adam_betas=0.9-0.99,seed=2",
            {"video.fps": 4, "checkpoint.every_n_steps": 3, "train.adam_betas": [0.9, 0.99], "train.seed": 2},
        ),
    ]
    assert study.task_spec(spec, study.task(spec, 1)).train.adam_betas == (0.9, 0.99)


@pytest.mark.parametrize(
    "value, shown",
    [
        ("hashgrid", "hashgrid"),
        (60, "60"),
        (60.0, "60.0"),
        (0.001, "0.001"),
        (1e-05, "1e-05"),
        (1e20, "1e20"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ([0.9, 0.99], "0.9-0.99"),
        (-3, "-3"),
    ],
)
def test_values_show_in_labels_as_written(value, shown):
    assert study.format_value(value) == shown


def test_labels_name_fields_by_their_last_part_unless_two_share_it(tmp_path):
    spec = study.parse(
        spec_with(
            tmp_path,
            {
                "video.every_n_steps": [1],
                "checkpoint.every_n_steps": [3],
                "train.adam_betas": [[0.9, 0.99]],
                "train.deterministic": [True],
            },
        )
    )
    assert (
        study.task(spec, 0).label
        == "video.every_n_steps=1,checkpoint.every_n_steps=3,adam_betas=0.9-0.99,deterministic=true"
    )


def test_labels_are_one_safe_folder_name_whatever_the_values(tmp_path):
    nasty = ["../../etc", "a/b\\c", " spaced out ", ".hidden", "tab\there", "ünïcode", "x+y", "..", "CON"]
    spec = study.parse(spec_with(tmp_path, {"storage.region": nasty}))
    labels = [study.task(spec, i).label for i in range(len(nasty))]
    for label in labels:
        assert study._UNSAFE_IN_LABEL.search(label) is None, label
        assert label not in (".", "..") and not label.startswith(".")
        assert study.task(spec, labels.index(label)).output == str(tmp_path / "out" / "photo" / label)
    assert labels[0] == "region=.._.._etc" and labels[2] == "region=_spaced_out_" and labels[6] == "region=x_y"
    assert len(set(labels)) == len(labels)
    # a label is never a dot name of its own, even where no field name precedes it
    assert [study.safe_label(s) for s in (".", "..", ".x")] == ["_", "_.", "_x"]


def test_long_labels_are_cut_and_keep_a_hash_of_the_whole(tmp_path):
    head = "r" * 300
    spec = study.parse(spec_with(tmp_path, {"storage.region": [head + "1", head + "2"], "train.seed": [0, 1]}))
    labels = {study.task(spec, i).label for i in range(4)}
    assert len(labels) == 4
    assert all(len(label) == study.MAX_LABEL and label.startswith("region=rrrr") for label in labels)


@pytest.mark.parametrize("values", [["a/b", "a_b"], ["EU", "eu"], ["a b", "a_b"]])
def test_values_whose_folders_would_coincide_are_refused(cli, tmp_path, values):
    path = write_spec(tmp_path / "spec.yaml", spec_with(tmp_path, {"storage.region": values}))
    result = cli("plan", path)
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "sweep:", f"region={values[0]}", f"region={values[1]}", "share the folder")


def test_outputs_of_all_tasks_never_collide_and_stay_under_the_output(tmp_path):
    """A property over many random sweeps of hostile values: every task gets its own
    folder, one level below its image's, or the spec is refused for a clash."""
    rng = random.Random(13)
    hostile = ["a", "A", "0", ".", "/", "\\", " ", "=", ",", "-", "+", "_", "\x00", "\n", "é", "😀", ":"]
    clashing = ["a", "A", "/", " ", "\n", "é"]  # `/`, ` `, `\n`, `é` all become `_`; `a` and `A` clash on a Mac

    def strings():
        flavour = rng.choice(["hostile", "clashing", "long"])
        chars, num_values, lengths = (
            (clashing, 3, (1, 1)) if flavour == "clashing" else (hostile, rng.randint(1, 4), (0, 3))
        )
        values = ["".join(rng.choice(chars) for _ in range(rng.randint(*lengths))) for _ in range(num_values)]
        if flavour == "long":
            values = [(v or "x") * rng.randint(40, 80) for v in values]
        return list(dict.fromkeys(values))

    def numbers():
        return rng.sample([0.001, 1e-05, 0.1, 1, 2, 3.5, 1e-3 + 1e-18, 0.30000000000000004, 1e-9], rng.randint(1, 3))

    refused = accepted = 0
    for _ in range(150):
        sweep = {"storage.region": strings(), "train.lr": numbers(), "train.grad_clip": numbers()}
        images = ("p.png", "q.png") if rng.random() < 0.5 else ("p.png",)
        try:
            spec = study.parse(spec_with(tmp_path, sweep, images=images))
        except SpecError as exc:
            assert "would share the folder" in str(exc) or "listed twice" in str(exc), exc
            refused += 1
            continue
        accepted += 1
        outputs = [study.task(spec, i).output for i in range(study.num_tasks(spec))]
        assert len({o.casefold() for o in outputs}) == len(outputs)
        for i, output in enumerate(outputs):
            stem_folder, label = output.rsplit("/", 1)
            assert stem_folder == str(tmp_path / "out" / images[i // study.num_combinations(spec)][0])
            assert label not in (".", "..") and not label.startswith(".")
            assert study._UNSAFE_IN_LABEL.search(label) is None and len(label) <= study.MAX_LABEL
    assert refused > 20 and accepted > 50  # both sides of the property were exercised


# ---------------------------------------------------------------- overrides


def test_a_tasks_spec_has_its_values_its_kinds_defaults_and_no_sweep(tmp_path):
    spec = load_spec(
        write_spec(
            tmp_path / "spec.yaml",
            spec_with(
                tmp_path, {"model.kind": ["fourier", "hashgrid"], "train.lr": [0.5, 0.25]}, model={}, train={"lr": 9}
            ),
        ),
        ["train.lr=0.125", "train.seed=7"],
    )
    fourier_spec, _ = study.resolve_task(spec, 0)
    hashgrid_spec, task = study.resolve_task(spec, 3)
    assert task.overrides == {"model.kind": "hashgrid", "train.lr": 0.25}
    assert (hashgrid_spec.model.kind, hashgrid_spec.train.lr) == ("hashgrid", 0.25)  # the sweep beats --set
    assert hashgrid_spec.train.seed == 7 == fourier_spec.train.seed  # other --set values stay
    # each kind brings its own defaults, not those the base spec's kind resolved
    assert hashgrid_spec.train.adam_eps == 1e-15 and fourier_spec.train.adam_eps is None
    assert hashgrid_spec.sweep is None and hashgrid_spec.image == task.image and hashgrid_spec.output == task.output


def test_the_defaults_the_specs_own_kind_filled_in_are_not_carried_into_other_kinds_tasks(tmp_path):
    spec = study.parse(spec_with(tmp_path, {"model.kind": ["fourier", "hashgrid", "siren"]}, model={}))
    assert (spec.train.lr_schedule, spec.train.ema_decay, spec.train.lr) == ("step", 0.0, 0.001)  # fourier's
    for task in study.tasks(spec):
        alone = study.parse({**spec_with(tmp_path, None, model={}), "model": {"kind": task.overrides["model.kind"]}})
        assert study.task_spec(spec, task).train.model_dump() == alone.train.model_dump(), task.label
    hashgrid = study.task_spec(spec, study.task(spec, 1)).train
    assert (hashgrid.lr_schedule, hashgrid.ema_decay, hashgrid.lr) == ("cosine", 0.9, 0.01)


def test_without_a_sweep_tasks_are_as_before(cli, tmp_path, monkeypatch):
    one = load_spec(write_spec(tmp_path / "one.yaml", spec_with(tmp_path, None)))
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "5")  # a lone image ignores the array, as ever
    task_spec, task = study.resolve_task(one, None)
    assert task_spec is one and (task.output, task.index, task.record()) == (one.output, None, None)
    many = write_spec(tmp_path / "many.yaml", spec_with(tmp_path, None, images=("x.png", "y.png")))
    got = plan_json(cli, many)
    assert got["count"] == 2 and [t["output"] for t in got["tasks"]] == [str(tmp_path / "out" / s) for s in "xy"]
    assert all(t["label"] is None and t["overrides"] == {} for t in got["tasks"])
    task_spec, task = study.resolve_task(load_spec(many), 1)
    assert task.record() == {"index": 1, "count": 2, "image": str(tmp_path / "y.png"), "label": None, "overrides": {}}
    assert plan_json(cli, write_spec(tmp_path / "one.yaml", spec_with(tmp_path, None)))["tasks"] == [
        {
            "index": 0,
            "image": str(tmp_path / "photo.png"),
            "label": None,
            "overrides": {},
            "output": str(tmp_path / "out"),
        }
    ]


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "sweep, needles",
    [
        ({"train.lr": [0.01, -1]}, ["sweep: train.lr = -1: must be > 0"]),
        ({"model.kind": ["fourier", "hashgridd"]}, ["sweep: model.kind = hashgridd: unknown kind"]),
        ({"video.fps": [30, 1000]}, ["sweep: video.fps = 1000: must be <= 240"]),
        ({"train.adam_betas": [[0.9, 1.5]]}, ["sweep: train.adam_betas = 0.9-1.5: both betas"]),
        ({"train.color": ["rgb", "grey"]}, ["sweep: train.color = grey:", "'gray'"]),
        (
            {"model.kind": ["hashgrid"], "model.fourier_order": [4, 8]},
            [
                "sweep: the combination kind=hashgrid,fourier_order=4: model.fourier_order: not a field of model "
                "kind hashgrid"
            ],
        ),
        ({"train.lr": [None, 0.001]}, ["lr=null", "lr=0.001", "the same spec"]),
        ({"train.lrr": [1]}, ["sweep: train.lrr: unknown field"]),
        # a swept section's bundles: each checked as the fields it sets, named with the bundle
        (
            {"model": [{"kind": "fourier", "hidden_size": -1}]},
            ["sweep: model = {kind: fourier, hidden_size: -1}: model.hidden_size: must be >= 1"],
        ),
        (
            {"model": [{"kind": "fourier"}, {"kind": "hashgridd"}]},
            ["sweep: model = {kind: hashgridd}: model.kind: unknown kind"],
        ),
        ({"train": [{"lr": 0.1}, {"lrr": 1}]}, ["sweep: train = {lrr: 1}: train.lrr: unknown field"]),
        ({"train": [{"seed": 1, "lr.x": 1}]}, ["sweep: train = {seed: 1, lr.x: 1}: 'lr.x': expected a field's name"]),
        ({"train": [{"lr": 0.1}, {}]}, ["sweep: train = {}: train: an empty mapping", "e.g. {lr: ...}"]),
        (
            {"model": ["siren"]},
            ["sweep: model: a section; expected a non-empty list of mappings of its fields", "['siren']"],
        ),
        ({"train": []}, ["sweep: train: a section; expected a non-empty list of mappings"]),
        (
            {"model": [{"kind": "hashgrid"}, {"kind": "siren"}, {"kind": "hashgrid"}]},
            ["sweep: model: {kind: hashgrid} is listed twice"],
        ),
        (
            {"model": [{"kind": "siren"}], "model.kind": ["siren"]},
            ["sweep: model.kind: inside the swept section model"],
        ),
        (
            {"model": [{"kind": "hashgrid", "fourier_order": 4}]},  # a field of another kind, in the bundle itself
            [
                "sweep: the combination kind=hashgrid,fourier_order=4: model.fourier_order: not a field of model "
                "kind hashgrid"
            ],
        ),
        (
            {"model": [{"kind": "siren"}]},  # ... or in the spec's own model section (TINY_MODEL's fourier_order)
            [
                "sweep: the combination kind=siren: model.fourier_order: not a field of model kind siren",
                "merged into every model bundle",
            ],
        ),
        ({"train": [{"lr": 0.1}, {"lr": 0.1, "lr_schedule": "step"}]}, ["lr=0.1,lr_schedule=step", "the same spec"]),
        # different fields that spell the same label: the 1st and the 4th combination
        (
            {"storage": [{"region": "x,seed=1"}, {"region": "x"}], "train": [{"lr": 0.1}, {"seed": 1, "lr": 0.1}]},
            ["sweep: the combinations", "would share the folder region=x,seed=1,lr=0.1"],
        ),
        # a number and its text: one label, and one task once validated (not a `,` or `=` in a value)
        ({"train.seed": [1, "1"]}, ['sweep: train.seed: 1 and "1" validate to the same value', "list it once"]),
        ({"train.lr": ["0.5", 0.5]}, ['sweep: train.lr: "0.5" and 0.5 validate to the same value']),
        ({"image": ["a.png"]}, ["sweep: image: cannot be swept"]),
        ({"output": ["x"]}, ["sweep: output: cannot be swept"]),
        ({"sweep.x": [1]}, ["sweep: sweep.x: cannot be swept"]),
        ({"train.lr.x": [1]}, ["sweep: train.lr.x: unknown field"]),
        ({"train.lr": []}, ["sweep: train.lr: expected a non-empty list"]),
        ({"train.lr": 0.1}, ["sweep: train.lr: expected a non-empty list"]),
        ({"train.lr": [0.1, 0.2, 0.1]}, ["sweep: train.lr: 0.1 is listed twice"]),
        ({}, ["sweep: is empty"]),
        (
            {"train.seed": list(range(101)), "train.lr": [0.1 * i for i in range(1, 101)]},
            ["10100 combinations; at most 10000"],
        ),
    ],
)
def test_a_bad_sweep_is_refused_by_validate_plan_and_run_before_anything_runs(cli, tmp_path, sweep, needles):
    path = write_spec(tmp_path / "spec.yaml", spec_with(tmp_path, sweep, model=dict(TINY_MODEL)))
    for command in (["validate"], ["plan"], ["plan", "--json"], ["run", "--index", "0"]):
        result = cli(command[0], path, *command[1:])
        assert result.exit_code == 2, (command, result.stdout)
        assert_one_error_line(result.stderr, f"{path}: ", *needles)
    assert not (tmp_path / "out").exists()


def test_more_tasks_than_an_indexed_job_takes_are_refused(cli, tmp_path):
    images = [f"i{i}.png" for i in range(11)]
    path = write_spec(tmp_path / "spec.yaml", spec_with(tmp_path, {"train.seed": list(range(10_000))}, images=images))
    result = cli("plan", path)
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "11 images x 10000 combinations = 110000 tasks; at most 100000")


def test_an_index_out_of_range_is_refused_naming_the_range(cli, tmp_path, monkeypatch):
    image = tmp_path / "photo.png"
    save_photo(image)
    path = write_spec(tmp_path / "spec.yaml", spec_with(tmp_path, {"train.lr": [0.01, 0.02], "train.seed": [0, 1]}))
    result = cli("run", path, "--index", "4")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "--index: index 4 is out of range", "4 tasks", "0..3")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "7")
    result = cli("run", path)
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "JOB_COMPLETION_INDEX: index 7 is out of range", "0..3")
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    result = cli("run", path)  # several tasks and no index at all
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "--index N")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- plan


def test_plan_lists_every_task_and_the_array_size_and_hides_credentials(cli, tmp_path):
    sweep = {
        "storage.endpoint_url": ["http://user:s3cr3t@minio-a:9000", "http://user:s3cr3t@minio-b:9000"],
        "train.lr": [0.001, 0.01],
    }
    path = write_spec(tmp_path / "spec.yaml", spec_with(tmp_path, sweep, images=("x.png", "y.png")))
    got = plan_json(cli, path)
    assert got["count"] == 8 and got["array"] == "0-7" and len(got["tasks"]) == 8
    assert json.loads(json.dumps(got)) == got and set(got["tasks"][0]) == {
        "index",
        "image",
        "label",
        "overrides",
        "output",
    }
    table = cli("plan", path)
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["INDEX", "IMAGE", "LABEL", "OUTPUT"] and len(lines) == 1 + 8 + 1
    for line, task in zip(lines[1:], got["tasks"]):
        assert line.split() == [str(task["index"]), task["image"], task["label"], task["output"]]
    assert "completions: 8" in lines[-1] and "--array=0-7" in lines[-1]
    assert "s3cr3t" not in table.stdout + json.dumps(got)
    assert got["tasks"][0]["label"] == "endpoint_url=http___user_____minio-a_9000,lr=0.001"


def test_validate_says_how_many_tasks_a_sweep_makes(cli, tmp_path):
    path = write_spec(
        tmp_path / "spec.yaml", spec_with(tmp_path, {"train.lr": [0.01, 0.02, 0.03]}, images=("a.png", "b.png"))
    )
    result = cli("validate", path)
    assert result.exit_code == 0, result.stderr
    assert yaml.safe_load(result.stdout)["sweep"] == {"train.lr": [0.01, 0.02, 0.03]}
    assert "# sweep: 2 image(s) x 3 combination(s) = 6 tasks" in result.stdout


# ---------------------------------------------------------------- real runs


def test_a_swept_task_trains_with_its_values_into_its_own_folder(cli, tmp_path, monkeypatch):
    image = tmp_path / "photo.png"
    save_photo(image, 9, 7)
    path = write_spec(
        tmp_path / "spec.yaml",
        spec_with(tmp_path, {"train.lr": [0.001, 0.004], "model.hidden_size": [8]}, train={"epochs": 1}),
    )
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    result = cli("run", path, "--set", "train.lr=0.5")
    assert result.exit_code == 0, result.stderr
    folder = tmp_path / "out" / "photo" / "lr=0.004,hidden_size=8"
    assert sorted(p.name for p in (tmp_path / "out").rglob("summary.json")) == ["summary.json"]
    summary = json.loads((folder / "summary.json").read_text())
    written = json.loads((folder / "spec.json").read_text())
    want = {
        "index": 1,
        "count": 2,
        "image": str(image),
        "label": "lr=0.004,hidden_size=8",
        "overrides": {"train.lr": 0.004, "model.hidden_size": 8},
    }
    assert summary["status"] == "completed" and summary["task"] == want == written["task"]
    assert written["spec"]["train"]["lr"] == 0.004 and written["spec"]["model"]["hidden_size"] == 8
    assert written["spec"]["sweep"] is None
    assert written["result_fields"]["train.lr"] == 0.004  # the fingerprint holds the swept values
    again = cli("run", path, "--set", "train.lr=0.5")  # the same task again: already complete
    assert again.exit_code == 0 and "already complete" in again.stdout


def test_tasks_without_a_sweep_record_their_place_or_none(cli, tmp_path):
    paths = []
    for name in ("one", "two"):
        save_photo(tmp_path / f"{name}.png", 9, 7)
        paths.append(str(tmp_path / f"{name}.png"))
    single = write_spec(tmp_path / "single.yaml", tiny_spec(paths[0], str(tmp_path / "single"), train={"epochs": 1}))
    listed = write_spec(tmp_path / "list.yaml", tiny_spec(paths, str(tmp_path / "list"), train={"epochs": 1}))
    assert cli("run", single).exit_code == 0
    assert cli("run", listed, "--index", "1").exit_code == 0
    for name in ("summary.json", "spec.json"):
        assert json.loads((tmp_path / "single" / name).read_text())["task"] is None
        assert json.loads((tmp_path / "list" / "two" / name).read_text())["task"] == {
            "index": 1,
            "count": 2,
            "image": paths[1],
            "label": None,
            "overrides": {},
        }


def test_a_bundle_task_trains_with_its_bundle_into_its_folder_and_report_shows_each_field(cli, tmp_path):
    """Two real tasks of a model bundle sweep, then `report`: one column per field any bundle
    sets, blank where a task's bundle leaves it out, and the kind shown for every task."""
    from imgfit_batch import reporting as report

    save_photo(tmp_path / "photo.png", 9, 7)
    fourier = {"fourier_order": 2, "hidden_size": 8, "num_hidden_layers": 1}  # no kind: the default, fourier
    hashgrid = {"kind": "hashgrid", "num_levels": 2, "log2_hashmap_size": 8}
    path = write_spec(
        tmp_path / "spec.yaml", spec_with(tmp_path, {"model": [fourier, hashgrid], "train.epochs": [1]}, model={})
    )
    for index in (1, 0):
        result = cli("run", path, "--index", str(index))
        assert result.exit_code == 0, result.stderr
    folder = tmp_path / "out" / "photo" / "kind=hashgrid,num_levels=2,log2_hashmap_size=8,epochs=1"
    written = json.loads((folder / "spec.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    overrides = {"model.kind": "hashgrid", "model.num_levels": 2, "model.log2_hashmap_size": 8, "train.epochs": 1}
    assert summary["status"] == "completed" and summary["task"] == written["task"] == {
        "index": 1,
        "count": 2,
        "image": str(tmp_path / "photo.png"),
        "label": "kind=hashgrid,num_levels=2,log2_hashmap_size=8,epochs=1",
        "overrides": overrides,
    }
    model = written["spec"]["model"]
    assert (model["kind"], model["num_levels"], model["log2_hashmap_size"], written["spec"]["train"]["epochs"]) == (
        "hashgrid",
        2,
        8,
        1,
    )
    assert "fourier_order" not in model and summary["model"] == "hashgrid"

    assert cli("report", str(tmp_path / "out")).exit_code == 0
    fields = [
        "model.fourier_order",
        "model.hidden_size",
        "model.num_hidden_layers",
        "train.epochs",
        "model.kind",
        "model.num_levels",
        "model.log2_hashmap_size",
    ]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "results.csv").read_text())))
    assert list(rows[0])[: 3 + len(fields)] == ["folder", "image", "label", *fields]
    assert [{f: row[f] for f in [*fields, "model"]} for row in rows] == [
        {**dict(zip(fields, ["2", "8", "1", "1", "", "", ""])), "model": "fourier"},
        {**dict(zip(fields, ["", "", "", "1", "hashgrid", "2", "8"])), "model": "hashgrid"},
    ]
    page = (tmp_path / "out" / "index.html").read_text()
    titles = re.findall(r"<th [^>]*>([^<]*)</th>", page)
    assert titles[3 : 3 + len(fields) + 1] == [f.rsplit(".", 1)[-1] for f in fields] + ["model"]
    # where every bundle names its kind, the kind column alone shows it
    rows = [
        report.Row(
            folder=f"photo/{k}",
            image="photo.png",
            stem="photo",
            label=f"kind={k}",
            overrides={"model.kind": k},
            model=k,
        )
        for k in ("fourier", "hashgrid")
    ]
    titles = re.findall(r"<th [^>]*>([^<]*)</th>", report.page("out", rows, ["model.kind"]))
    assert "kind" in titles and "model" not in titles


def test_the_sweep_checker_reads_the_sweep_fields_own_type():
    # study.SWEEP_TYPE is spelled out for the type checker; it must stay the field's type
    assert study.SWEEP_TYPE == study.JobSpec.model_fields["sweep"].annotation

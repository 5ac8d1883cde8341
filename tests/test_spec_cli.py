"""The spec and the CLI surface: resolved defaults, one-line errors that name the
field, --set, stdin, schema, and help with examples."""

from __future__ import annotations

import json

import pytest
import typer.main
import yaml
from conftest import assert_one_error_line, run_cli
from typer.testing import CliRunner

from imgfit_batch.cli import app

runner = CliRunner()

MINIMAL = "image: examples/pattern.png\noutput: runs/pattern\n"


def validate_tree(tmp_path, text: str = MINIMAL, *extra: str) -> dict:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    result = runner.invoke(app, ["validate", str(spec), *extra])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


def test_validate_fills_in_the_seed_defaults(tmp_path):
    tree = validate_tree(tmp_path)
    assert tree["model"] == {
        "kind": "fourier",
        "max_parameters": None,  # no size budget
        "fourier_order": 32,
        "hidden_size": 300,
        "num_hidden_layers": 30,
    }
    train = tree["train"]
    assert (train["epochs"], train["batch_size"], train["lr"]) == (20, 8000, 0.001)
    assert (train["lr_step_epochs"], train["lr_gamma"], train["grad_clip"]) == (3, 0.5, 0.01)
    assert (train["color"], train["seed"], train["device"]) == ("gray", 0, "auto")
    assert tree["video"]["every_n_steps"] == 2
    assert tree["checkpoint"]["every_n_steps"] == 500


def test_validate_skipconn_gets_the_seed_network_and_training(tmp_path):
    tree = validate_tree(tmp_path, MINIMAL + "model: {kind: skipconn}\n")
    assert tree["model"]["kind"] == "skipconn"
    assert (tree["model"]["hidden_size"], tree["model"]["num_hidden_layers"]) == (300, 30)
    assert (tree["train"]["epochs"], tree["train"]["batch_size"], tree["train"]["lr"]) == (20, 8000, 0.001)


def test_validate_output_is_a_spec_that_validates_to_itself(tmp_path):
    tree = validate_tree(tmp_path)
    again = validate_tree(tmp_path, yaml.safe_dump(tree))
    assert again == tree


def test_set_overrides_nested_fields_with_typed_values(tmp_path):
    tree = validate_tree(
        tmp_path,
        MINIMAL,
        "--set",
        "train.epochs=5",
        "--set",
        "train.lr=0.01",
        "--set",
        "model.fourier_order=8",
        "--set",
        "train.color=rgb",
    )
    assert tree["train"]["epochs"] == 5 and isinstance(tree["train"]["epochs"], int)
    assert tree["train"]["lr"] == 0.01
    assert tree["model"]["fourier_order"] == 8
    assert tree["train"]["color"] == "rgb"
    assert tree["train"]["batch_size"] == 8000  # untouched fields keep their defaults


def test_set_can_create_a_missing_section(tmp_path):
    tree = validate_tree(tmp_path, MINIMAL, "--set", "video.fps=12")
    assert tree["video"]["fps"] == 12


def test_spec_is_read_from_stdin_with_dash():
    result = runner.invoke(app, ["validate", "-"], input=MINIMAL + "train: {epochs: 3}\n")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["train"]["epochs"] == 3


@pytest.mark.parametrize(
    "text, field",
    [
        (MINIMAL + "train: {lrr: 0.1}\n", "train.lrr"),
        (MINIMAL + "colour: rgb\n", "colour"),
        (MINIMAL + "model: {fourier_order: 4, depth: 3}\n", "model.depth"),
    ],
    ids=["train-key", "top-level-key", "model-key"],
)
def test_unknown_key_is_exit_2_naming_the_field(cli, tmp_path, text, field):
    path = write_text(tmp_path, text)
    result = cli("validate", path)
    assert result.exit_code == 2
    line = assert_one_error_line(result.stderr, f"{field}: ")
    assert "unknown field" in line


@pytest.mark.parametrize(
    "text, field",
    [
        (MINIMAL + "train: {epochs: many}\n", "train.epochs"),
        (MINIMAL + "train: {lr: fast}\n", "train.lr"),
        (MINIMAL + "video: {fps: [30]}\n", "video.fps"),
        (MINIMAL + "train: {color: sepia}\n", "train.color"),
        (MINIMAL + "model: {kind: transformer}\n", "model"),
    ],
    ids=["int", "float", "list-for-int", "literal", "model-kind"],
)
def test_wrong_type_is_exit_2_naming_the_field(cli, tmp_path, text, field):
    result = cli("validate", write_text(tmp_path, text))
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, f"{field}: ")


@pytest.mark.parametrize(
    "text, field, why",
    [
        (MINIMAL + "train: {lr: 0}\n", "train.lr", "must be > 0"),
        (MINIMAL + "train: {lr: -0.1}\n", "train.lr", "must be > 0"),
        (MINIMAL + "train: {epochs: 0}\n", "train.epochs", "must be >= 1"),
        (MINIMAL + "model: {hidden_size: 0}\n", "model.hidden_size", "must be >= 1"),
        (MINIMAL + "video: {fps: 100000}\n", "video.fps", "must be <= 240"),
        (MINIMAL + "checkpoint: {keep: 1}\n", "checkpoint.keep", "must be >= 2"),
    ],
)
def test_out_of_range_is_exit_2_naming_the_field_and_the_limit(cli, tmp_path, text, field, why):
    result = cli("validate", write_text(tmp_path, text))
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, f"{field}: ", why)


def test_missing_required_field_is_exit_2_naming_it(cli, tmp_path):
    result = cli("validate", write_text(tmp_path, "image: a.png\n"))
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "output: ", "missing")


def test_bad_set_value_is_exit_2_naming_the_field(cli, tmp_path):
    result = cli("validate", write_text(tmp_path, MINIMAL), "--set", "train.lr=abc")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "train.lr: ")


def test_set_without_equals_is_exit_2(cli, tmp_path):
    result = cli("validate", write_text(tmp_path, MINIMAL), "--set", "train.lr")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "train.lr")


def test_invalid_yaml_is_exit_2_with_the_line(cli, tmp_path):
    result = cli("validate", write_text(tmp_path, MINIMAL + "train: {epochs: [\n"))
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "line")


def test_run_refuses_a_bad_spec_before_doing_anything(cli, tmp_path):
    out = tmp_path / "out"
    result = cli("run", write_text(tmp_path, f"image: a.png\noutput: {out}\ntrain: {{lr: 0}}\n"))
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "train.lr: ")
    assert not out.exists()


def test_missing_spec_file_is_exit_3_naming_it(cli, tmp_path):
    missing = str(tmp_path / "nope.yaml")
    result = cli("validate", missing)
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, missing)


def test_spec_error_from_the_console_script_is_one_line_without_traceback(tmp_path):
    proc = run_cli("validate", "-", input=MINIMAL + "train: {lr: -1}\n")
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "train.lr: ")


def test_schema_is_json_schema_with_a_description_for_every_field():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["type"] == "object"
    assert {"image", "output"} <= set(schema["required"])
    assert schema.get("additionalProperties") is False

    # every leaf field, in every section and model kind, carries a description
    defs = schema.get("$defs", {})
    undescribed = []
    for owner, node in [("JobSpec", schema), *defs.items()]:
        for name, prop in node.get("properties", {}).items():
            if "$ref" in prop or ("allOf" in prop and "description" not in prop):
                continue  # a section: its own fields are checked under $defs
            if name == "kind":
                continue
            if not prop.get("description"):
                undescribed.append(f"{owner}.{name}")
    assert not undescribed, f"fields without a description: {undescribed}"
    assert "lr" in defs["TrainSpec"]["properties"]
    lr = defs["TrainSpec"]["properties"]["lr"]
    assert {"type": "null"} in lr["anyOf"]  # unset: the model kind's default
    assert any(branch.get("exclusiveMinimum") == 0 for branch in lr["anyOf"])  # the range is in the schema


def command_names() -> list[str]:
    return sorted(typer.main.get_command(app).commands)


def test_the_contracts_core_commands_exist():
    assert {"run", "validate", "schema"} <= set(command_names())


@pytest.mark.parametrize("command", command_names())
def test_every_command_help_has_a_purpose_and_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    assert "imgfit-batch " + command in result.stdout.split("Example:", 1)[1]


def test_top_level_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in command_names():
        assert command in result.stdout


def write_text(tmp_path, text: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)

"""The outputs as types (imgfit_batch/outputs.py): what a job writes is what docs/outputs.md
documents and the models declare, every file is named in one place, another format is
refused in one line, and a hand-edited field reads as absent instead of breaking the file."""

from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import pytest
from conftest import assert_one_error_line, save_photo, tiny_spec, write_spec

from imgfit_batch import outputs

ROOT = Path(__file__).resolve().parent.parent


def _documented_keys(row_name: str) -> set[str]:
    """The top-level keys the "Output files" table of docs/outputs.md lists for `row_name`: the backticked names
    outside parentheses (inside them are sub-keys and values)."""
    readme = (ROOT / "docs" / "outputs.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f"| `{row_name}` |"))
    text = row.split("|")[2]
    while re.search(r"\([^()]*\)", text):
        text = re.sub(r"\([^()]*\)", "", text)
    return set(re.findall(r"`(\w+)`", text))


@pytest.fixture(scope="module")
def job_output(tmp_path_factory):
    import subprocess
    import sys

    from conftest import cli_env

    tmp = tmp_path_factory.mktemp("outputs")
    image = str(tmp / "photo.png")
    save_photo(image, 24, 16)
    spec = write_spec(tmp / "spec.yaml", tiny_spec(image, str(tmp / "out")))
    proc = subprocess.run(
        [sys.executable, "-m", "imgfit_batch", "run", spec], capture_output=True, text=True, env=cli_env(), timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return tmp / "out", spec


def test_summary_json_holds_exactly_the_keys_the_readme_documents_and_the_model_declares(job_output):
    out, _ = job_output
    written = json.loads((out / outputs.SUMMARY).read_text())
    assert set(written) == set(outputs.Summary.model_fields), "the job writes what the model declares"
    assert _documented_keys("summary.json") == set(written), "docs/outputs.md's Output files row lists every key"
    assert written["format"] == outputs.JSON_FORMAT
    assert set(written["video"]) == set(outputs.VideoRecord.model_fields)
    assert written["video"]["fps"] == 4 and written["frames"] >= 1


def test_spec_json_holds_exactly_the_keys_the_readme_documents_and_the_model_declares(job_output):
    out, _ = job_output
    written = json.loads((out / outputs.SPEC).read_text())
    assert set(written) == set(outputs.JobRecord.model_fields)
    assert _documented_keys("spec.json") == set(written)


def test_a_checkpoint_marker_holds_the_fields_status_reads(tmp_path):
    from imgfit_batch.checkpoint import CheckpointStore as CheckpointManager

    manager = CheckpointManager(str(tmp_path / "checkpoints"), keep=2, warn=lambda m: None)
    manager.save({"parts": {"budget": {"step": 7}}}, {"total_steps": 20, "loss": 0.25, "reason": "periodic"})
    marker = manager.latest_marker()
    assert marker is not None and (marker.step, marker.total_steps, marker.loss, marker.reason) == (
        7,
        20,
        0.25,
        "periodic",
    )
    on_disk = json.loads(next((tmp_path / "checkpoints").glob("ckpt-*.json")).read_text())
    assert set(on_disk) <= set(outputs.Marker.model_fields) and on_disk["bytes"] > 0


def _rewrite(path: Path, **fields) -> None:
    doc = json.loads(path.read_text())
    doc.update(fields)
    path.write_text(json.dumps({k: v for k, v in doc.items() if v is not ...}))


def test_a_summary_in_another_format_is_refused_in_one_line_by_status_compare_render_and_a_rerun(
    job_output, cli, tmp_path
):
    out, spec = job_output
    path, spec_json = out / outputs.SUMMARY, out / outputs.SPEC
    original, original_spec = path.read_text(), spec_json.read_text()
    try:
        _rewrite(path, format=2, version="9.9.9")
        compare = ("compare", str(out), str(out), "-o", str(tmp_path / "c.mp4"))
        for args in (("status", str(out)), compare, ("run", spec)):
            result = cli(*args)
            assert result.exit_code == 3, (args, result.stderr)
            assert_one_error_line(result.stderr, "summary.json", "imgfit-batch 9.9.9", "output format 2", "--restart")
        _rewrite(spec_json, format=0)
        (out / outputs.MODEL).rename(out / "model.pt.away")  # render falls back to spec.json and the checkpoint
        result = cli("render", str(out), "--scale", "1", "-o", str(tmp_path / "r.png"))
        assert result.exit_code == 3, result.stderr
        assert_one_error_line(result.stderr, "spec.json", "output format 0")
    finally:
        path.write_text(original)
        spec_json.write_text(original_spec)
        if (out / "model.pt.away").exists():
            (out / "model.pt.away").rename(out / outputs.MODEL)


def test_report_shows_a_task_in_another_format_as_unknown_with_one_warning(job_output, cli, tmp_path):
    import shutil

    study = tmp_path / "study"
    shutil.copytree(job_output[0], study / "a")
    _rewrite(study / "a" / outputs.SUMMARY, format=2)
    result = cli("report", str(study))
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "output format 2" in line]
    assert len(warnings) == 1 and "showing the task as unknown" in warnings[0], result.stderr
    rows = list(csv.DictReader((study / outputs.RESULTS).open()))
    assert [row["status"] for row in rows] == ["unknown"]


def test_a_summary_from_before_the_format_was_recorded_reads_as_format_1(job_output, cli):
    out, _ = job_output
    path = out / outputs.SUMMARY
    original = path.read_text()
    try:
        _rewrite(path, format=...)  # the key removed, as an older imgfit-batch wrote it
        result = cli("status", str(out), "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["state"] == "completed"
    finally:
        path.write_text(original)


def test_a_field_of_the_wrong_type_reads_as_absent_and_the_rest_of_the_file_is_kept():
    raw = json.dumps(
        {
            "status": "completed",
            "steps": True,  # a bool is not a count
            "psnr_db": "31.2",
            "ssim": float("nan"),
            "frames": 12,
            "exact": "yes",
            "task": {"index": 2, "label": 5, "overrides": ["x"]},
            "video": [1, 2],
            "someone_elses": {"kept": 1},
        }
    ).encode()
    summary = outputs.parse(outputs.Summary, raw, "x/summary.json")
    assert summary.completed and summary.frames == 12
    assert (summary.steps, summary.psnr_db, summary.ssim, summary.exact, summary.video) == (
        None,
        None,
        None,
        False,
        None,
    )
    assert summary.task is not None and (summary.task.index, summary.task.label, summary.task.overrides) == (
        2,
        None,
        {},
    )
    assert summary.model_extra == {"someone_elses": {"kept": 1}}
    for garbage in (b"[1, 2]", b"not json", b"\xff\xfe"):
        assert outputs.parse(outputs.Summary, garbage, "x/summary.json") is None


def test_a_lease_is_read_strictly_and_anything_else_is_not_a_lease():
    good = {"id": "a1", "host": "node-3", "pid": 42, "beat": 1700000000.5}
    assert outputs.parse_lease(json.dumps(good).encode()) == outputs.LeaseRecord(**good)
    for bad in ({"pid": True}, {"pid": 1 << 40}, {"beat": "soon"}, {"id": 7}, {"host": None}):
        assert outputs.parse_lease(json.dumps({**good, **bad}).encode()) is None, bad
    assert outputs.parse_lease(b" " * (outputs.LEASE_MAX_BYTES + 1)) is None


_NAMES = {v for k, v in vars(outputs).items() if k.isupper() and isinstance(v, str) and "." in v and "/" not in v}


def test_no_module_but_outputs_names_an_output_file_where_it_reads_or_writes_one():
    """A file name in a path join (storage.join, os.path.join) is outputs' constant, not a
    literal: renaming a file is one change, in outputs.py."""
    assert {"summary.json", "spec.json", "video.mp4", "final.png"} <= _NAMES
    found = []
    for path in sorted((ROOT / "imgfit_batch").rglob("*.py")):
        if path.name == "outputs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "join":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and arg.value in _NAMES:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {arg.value}")
    assert not found, found

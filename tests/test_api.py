"""The Python API (imgfit_batch.api) under the CLI: a job runs through `imgfit_batch.run` on a
dict spec, the reading commands return typed results, errors are the types the CLI maps to
exit codes, and every command prints what its API function returns on the same input."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import save_photo, tiny_spec, write_spec

import imgfit_batch
from imgfit_batch import api, outputs, signals, storage
from imgfit_batch.errors import SpecError, UnavailableError
from imgfit_batch.progress import Reporter
from imgfit_batch.reporting import Row

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
QUIET = 3600.0  # a Reporter's cadence: no progress lines in the test's output


@contextlib.contextmanager
def in_process():
    """Around an in-process job: the signal handlers and the store's settings it changes are
    put back (as the `cli` fixture does around main)."""
    saved = {s: signal.getsignal(s) for s in signals.NAMES}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        signals.reset()
        storage.configure(None, None)


def test_a_dict_spec_runs_through_the_api_and_returns_the_summary_it_wrote(tmp_path):
    save_photo(tmp_path / "in.png")
    spec = tiny_spec(str(tmp_path / "in.png"), str(tmp_path / "out"))
    with in_process():
        summary = imgfit_batch.run(spec, overrides=["train.epochs=3"], progress=Reporter(QUIET, tty=False))
    assert isinstance(summary, outputs.Summary) and summary.completed
    assert summary.steps == 3 * 6  # 3 epochs of 713 pixels in batches of 128
    written = outputs.read(outputs.Summary, str(tmp_path / "out" / outputs.SUMMARY))
    assert written == summary
    assert spec["train"]["epochs"] == 2, "the caller's dict is not changed by the overrides"


def test_status_and_report_return_typed_results(tmp_path):
    save_photo(tmp_path / "in.png")
    spec = tiny_spec(str(tmp_path / "in.png"), str(tmp_path / "study"), sweep={"train.lr": [0.01, 0.02]})
    with in_process():
        summary = imgfit_batch.run(spec, index=1, progress=Reporter(QUIET, tty=False))
    task = str(tmp_path / "study" / "in" / "lr=0.02")
    status = imgfit_batch.status(task)
    assert isinstance(status, api.Status)
    assert (status.state, status.step, status.psnr_db) == ("completed", summary.steps, summary.psnr_db)
    made = api.report(str(tmp_path / "study"))
    assert isinstance(made, api.Report) and all(isinstance(row, Row) for row in made.rows)
    assert [(row.label, row.status) for row in made.rows] == [("lr=0.02", "completed")]
    assert made.counts() == {"completed": 1}
    assert (tmp_path / "study" / outputs.RESULTS).exists()


def test_errors_are_raised_as_the_types_the_cli_maps_to_exit_codes(tmp_path):
    save_photo(tmp_path / "in.png")
    with pytest.raises(SpecError, match="train.epochs") as bad:
        api.load(tiny_spec(str(tmp_path / "in.png"), str(tmp_path / "out"), train={"epochs": 0}))
    assert bad.value.exit_code == 2
    with in_process(), pytest.raises(UnavailableError, match="missing.png") as missing:
        imgfit_batch.run(tiny_spec(str(tmp_path / "missing.png"), str(tmp_path / "out")))
    assert missing.value.exit_code == 3
    with pytest.raises(UnavailableError) as absent:
        imgfit_batch.status(str(tmp_path / "nothing-here"))
    assert absent.value.exit_code == 3
    with pytest.raises(SpecError):
        api.load(42)  # type: ignore[arg-type]


def test_the_spec_commands_print_what_their_api_functions_return(cli, tmp_path):
    save_photo(tmp_path / "in.png")
    spec = tiny_spec(str(tmp_path / "in.png"), str(tmp_path / "out"), sweep={"train.seed": [0, 1]})
    path = write_spec(tmp_path / "spec.yaml", spec)
    sets = ["--set", "train.lr=0.003"]

    got = cli("validate", path, *sets)
    assert got.exit_code == 0 and got.stdout == api.validate(path, overrides=["train.lr=0.003"]).text()
    assert "sweep: 1 image(s) x 2 combination(s) = 2 tasks" in got.stdout

    got = cli("plan", path, *sets)
    planned = api.plan(path, overrides=["train.lr=0.003"])
    assert got.exit_code == 0 and got.stdout == planned.text() and planned.count == 2
    got = cli("plan", path, "--json")
    assert json.loads(got.stdout) == api.plan(spec).as_json(), "a dict spec plans as its file does"

    got = cli("schema")
    assert json.loads(got.stdout) == api.schema()


def test_run_status_render_report_and_compare_print_what_their_api_functions_return(cli, tmp_path):
    save_photo(tmp_path / "in.png")
    path = write_spec(tmp_path / "spec.yaml", tiny_spec(str(tmp_path / "in.png"), str(tmp_path / "runs" / "cli")))
    assert cli("run", path).exit_code == 0
    with in_process():  # the same spec, another output: the same training, bit for bit
        summary = api.run(path, overrides=[f"output={tmp_path / 'runs' / 'api'}"], progress=Reporter(QUIET, tty=False))
    by_cli, by_api = (tmp_path / "runs" / "cli", tmp_path / "runs" / "api")
    assert (by_cli / "final.png").read_bytes() == (by_api / "final.png").read_bytes()
    assert (by_cli / "loss.csv").read_text().splitlines() == (by_api / "loss.csv").read_text().splitlines()
    cli_summary = json.loads((by_cli / "summary.json").read_text())
    assert (cli_summary["steps"], cli_summary["psnr_db"]) == (summary.steps, summary.psnr_db)

    got = cli("status", str(by_cli))
    assert got.exit_code == 0 and got.stdout == api.status(str(by_cli)).text() + "\n"
    got = cli("status", str(by_cli), "--json")
    assert json.loads(got.stdout) == api.status(str(by_cli)).fields

    got = cli("render", str(by_cli), "--scale", "2", "-o", str(tmp_path / "cli.png"))
    rendered = api.render(str(by_cli), str(tmp_path / "api.png"), scale=2)
    assert got.stdout == f"wrote {tmp_path / 'cli.png'} ({rendered.width}x{rendered.height})\n"
    assert (tmp_path / "cli.png").read_bytes() == (tmp_path / "api.png").read_bytes()

    got = cli("report", str(tmp_path / "runs"))
    csv = (tmp_path / "runs" / outputs.RESULTS).read_bytes()
    made = api.report(str(tmp_path / "runs"))
    assert got.exit_code == 0 and got.stdout == made.text() and len(made.rows) == 2
    assert (tmp_path / "runs" / outputs.RESULTS).read_bytes() == csv

    got = cli("compare", str(by_cli), str(by_api), "-o", str(tmp_path / "cli.mp4"))
    compared = api.compare([str(by_cli), str(by_api)], str(tmp_path / "api.mp4"))
    wrote = f"({compared.width}x{compared.height}, {compared.frames} frames)"
    assert got.exit_code == 0 and got.stdout == f"wrote {tmp_path / 'cli.mp4'} {wrote}\n"


def test_the_api_example_fits_an_image_and_reads_its_summary(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "api.py"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    summary = outputs.read(outputs.Summary, str(tmp_path / "out" / outputs.SUMMARY))
    assert summary.completed and summary.psnr_db > 30, "a small image, fitted well"
    assert f"completed: {summary.steps} steps, PSNR {summary.psnr_db} dB" in proc.stdout
    assert "status: completed" in proc.stdout and (tmp_path / "out-2x.png").exists()


def test_a_resumed_job_reads_its_newest_checkpoint_once_and_holds_the_parts_marker(tmp_path, monkeypatch):
    """One read path: the job reads the newest checkpoint once, before it builds anything, and
    hands it on; the marker beside it carries what the parts say of themselves (Parts.marker)."""
    save_photo(tmp_path / "in.png")
    spec = tiny_spec(str(tmp_path / "in.png"), str(tmp_path / "out"))
    with in_process():
        first = imgfit_batch.run(spec, progress=Reporter(QUIET, tty=False))
    (tmp_path / "out" / outputs.SUMMARY).unlink()  # not complete any more: the rerun resumes at the end
    marker = json.loads((tmp_path / "out" / "checkpoints" / f"ckpt-{first.steps:010d}.json").read_text())
    assert (marker["step"], marker["total_steps"], marker["frames"]) == (first.steps, first.steps, first.frames)
    assert marker["loss"] == first.final_loss and marker["reason"] == "end"
    reads: list[str] = []
    read_bytes = storage.read_bytes

    def counted(uri: str, *args, **kwargs):
        reads.append(uri.rsplit("/", 1)[-1])
        return read_bytes(uri, *args, **kwargs)

    monkeypatch.setattr(storage, "read_bytes", counted)
    with in_process():
        again = imgfit_batch.run(spec, progress=Reporter(QUIET, tty=False))
    assert again.resumes == 1 and again.steps == first.steps
    assert [name for name in reads if name.endswith(".pt")] == [f"ckpt-{first.steps:010d}.pt"]


def test_every_command_is_a_function_of_the_package_whatever_was_imported_before():
    # the contract names imgfit_batch.run, validate, status, render, plan, report, compare: no
    # module of the package may take one of those names, or importing it would replace the function
    import importlib

    import imgfit_batch
    from imgfit_batch import api

    for module in ("rendering", "reporting", "comparing", "readback", "study", "job"):
        importlib.import_module(f"imgfit_batch.{module}")
    for name in ("run", "validate", "status", "render", "plan", "report", "compare"):
        assert getattr(imgfit_batch, name) is getattr(api, name), name


def test_the_summary_status_and_start_line_name_the_models_size_and_its_rate(tmp_path):
    # the size a fit is read against: the learned parameters model.pt holds, and their bits per pixel
    import torch

    save_photo(tmp_path / "in.png")
    spec = tiny_spec(str(tmp_path / "in.png"), str(tmp_path / "out"))
    events = []

    class Recording(Reporter):
        def event(self, name, message, **fields):
            events.append((name, message, fields))
            super().event(name, message, **fields)

    with in_process():
        summary = imgfit_batch.run(spec, progress=Recording(QUIET, tty=False))
    saved = torch.load(tmp_path / "out" / outputs.MODEL, weights_only=True)
    built = imgfit_batch.load(spec).model.build(saved["out_features"], summary.width, summary.height)
    learned = dict(built.named_parameters())
    held = sum(t.numel() for name, t in saved["state_dict"].items() if name in learned)
    assert learned and summary.parameters == held > 0
    assert summary.bits_per_pixel == round(32 * held / (summary.width * summary.height), 4)
    state = imgfit_batch.status(str(tmp_path / "out"))
    assert state.fields["parameters"] == held and f"{held} parameters" in state.text()
    (start,) = [fields for name, _, fields in events if name == "start"]
    assert start["parameters"] == held and start["bits_per_pixel"] == summary.bits_per_pixel

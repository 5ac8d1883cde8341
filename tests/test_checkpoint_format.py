"""A checkpoint records its format: a resume refuses another version's checkpoint, and a
checkpoint from before a training part existed, with one line that says --restart,
instead of a KeyError (exit 1) or silently starting over."""

from __future__ import annotations

import hashlib
import io
import json
import signal

import pytest
import torch
from conftest import assert_one_error_line, run_cli, save_photo, signal_when, tiny_spec, write_spec

from imgfit_batch.checkpoint import FORMAT

pytestmark = pytest.mark.slow  # real subprocesses, real signals


@pytest.fixture
def interrupted(tmp_path):
    """An output holding checkpoints of a run stopped by SIGTERM, and its spec."""
    image = tmp_path / "photo.png"
    save_photo(image, 31, 23, seed=3)
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(image), str(tmp_path / "out"), train={"epochs": 6}))
    code, _, stderr = signal_when(spec, signal.SIGTERM, lambda e: e["event"] == "checkpoint" and e["step"] >= 8)
    assert code == 75, stderr
    return tmp_path / "out", spec


def rewrite_checkpoints(output, change) -> None:
    """Apply `change` to every checkpoint's state and rewrite it whole, its marker's size and
    SHA-256 included (an older or newer imgfit-batch's checkpoint, not a damaged one)."""
    for data_file in sorted((output / "checkpoints").glob("ckpt-*.pt")):
        state = torch.load(data_file, weights_only=True)
        change(state)
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        data_file.write_bytes(data)
        marker_file = data_file.with_suffix(".json")
        marker = json.loads(marker_file.read_text())
        marker.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        marker_file.write_text(json.dumps(marker))


def test_a_checkpoint_from_before_a_part_existed_is_refused_naming_the_part_and_restart(interrupted):
    output, spec = interrupted
    rewrite_checkpoints(output, lambda state: state["parts"].pop("rng"))
    proc = run_cli("run", spec)
    assert proc.returncode == 3, proc.stderr
    line = assert_one_error_line(proc.stderr, "--restart")
    assert "'rng'" in line and "Traceback" not in proc.stderr
    assert not (output / "summary.json").exists()
    assert run_cli("run", spec, "--restart").returncode == 0, "--restart starts over"


def test_a_checkpoint_of_another_format_is_refused_not_skipped(interrupted):
    output, spec = interrupted
    rewrite_checkpoints(output, lambda state: state.update(format=FORMAT[:-1] + "3"))
    proc = run_cli("run", spec)
    assert proc.returncode == 3, proc.stderr
    line = assert_one_error_line(proc.stderr, "--restart")
    assert "imgfit-batch/checkpoint/3" in line and FORMAT in line
    assert "resumed" not in proc.stdout and not (output / "summary.json").exists(), "no fresh start over its progress"


def test_a_part_with_a_documented_default_resumes_from_it(interrupted, monkeypatch):
    """The other way a part added later meets an older checkpoint: its `missing_state()`."""
    from imgfit_batch.checkpoint import CheckpointStore as CheckpointManager
    from imgfit_batch.train import Parts, RandomState

    output, _ = interrupted
    rewrite_checkpoints(output, lambda state: state["parts"].pop("rng"))
    loaded = CheckpointManager(str(output / "checkpoints"), keep=2, warn=lambda m: None).load()
    assert "rng" not in loaded.state["parts"]
    default = torch.get_rng_state()
    monkeypatch.setattr(RandomState, "missing_state", lambda self: {"cpu": default}, raising=False)

    class Part:  # the other parts only record what they are given
        param_groups: list = []

        def load_state_dict(self, state):
            self.loaded = state

    parts = Parts.__new__(Parts)
    for name in Parts.STATEFUL:
        setattr(parts, name, Part())
    parts.rng = RandomState(torch.device("cpu"))
    torch.manual_seed(123)
    parts.load_state_dict(loaded.state["parts"])
    assert torch.equal(torch.get_rng_state(), default), "the part's default was loaded"
    assert parts.model.loaded is loaded.state["parts"]["model"]

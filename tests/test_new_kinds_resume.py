"""hashgrid (with and without a size budget) and siren train, checkpoint and resume exactly like the seed's kinds."""

from __future__ import annotations

import signal

import pytest
from conftest import assert_same_result, read_outputs, run_cli, save_photo, start_cli, tiny_spec, write_spec

pytestmark = pytest.mark.slow  # real subprocesses, real signals

KINDS = {
    "hashgrid": {
        "kind": "hashgrid",
        "num_levels": 4,
        "base_resolution": 4,
        "finest_resolution": 32,
        "log2_hashmap_size": 8,
    },  # small T: the finer levels are hashed, the coarse ones dense
    "siren": {"kind": "siren", "hidden_size": 16, "num_hidden_layers": 2},
    # a size budget: the layout (decoder, levels, rows) is derived to fit, recorded, and derived alike on resume
    "hashgrid-budget": {"kind": "hashgrid", "max_parameters": 3_000, "base_resolution": 4},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sigterm_then_rerun_is_bit_identical_to_an_uninterrupted_run(kind, tmp_path):
    image = str(tmp_path / "photo.png")
    save_photo(image, 29, 19, seed=5)
    train = {"color": "rgb", "epochs": 12, "batch_size": 128, "device": "cpu"}  # 5 steps/epoch, 60 steps
    straight = tmp_path / "straight"
    spec = tiny_spec(image, str(straight), model=KINDS[kind], train=train)
    spec["model"] = KINDS[kind]  # replace the seed-kind fields tiny_spec starts from
    proc = run_cli("run", write_spec(tmp_path / "a.yaml", spec))
    assert proc.returncode == 0, proc.stderr
    want = read_outputs(str(straight))
    assert want["summary"]["model"] == KINDS[kind]["kind"]
    budget = KINDS[kind].get("max_parameters")
    if budget:
        assert 0 < want["summary"]["parameters"] <= budget
        assert want["summary"]["derived"]["model.decoder"] == "mlp"

    resumed = tmp_path / "resumed"
    spec["output"] = str(resumed)
    path = write_spec(tmp_path / "b.yaml", spec)
    child, reader = start_cli("run", path)
    try:
        event = reader.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] >= 20)
        assert event is not None, reader.rest()
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=120) == 75
    finally:
        if child.poll() is None:
            child.kill()
    proc = run_cli("run", path)
    assert proc.returncode == 0, proc.stderr
    got = read_outputs(str(resumed))
    assert got["summary"]["resumes"] == 1
    assert_same_result(got, want)

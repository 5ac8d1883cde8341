"""Job behaviours the spec and the contract promise, each run for real and kept fast:
the time budget, SIGUSR1 outside Slurm, checkpoint pruning and time-based
checkpoints, an S3 output whose bucket policy denies writes, duplicate image stems."""

from __future__ import annotations

import json
import os
import re
import signal

from conftest import (
    assert_one_error_line,
    cli_env,
    events,
    run_cli,
    save_photo,
    signal_when,
    tiny_spec,
    write_spec,
)

CHECKPOINT_DATA = re.compile(r"ckpt-(\d+)\.pt$")
CHECKPOINT_MARKER = re.compile(r"ckpt-(\d+)\.json$")


def untimed_spec(image: str, output: str, max_seconds: float, **sections) -> dict:
    """A tiny job with no epochs: it trains until its time budget runs out."""
    spec = tiny_spec(image, output, **sections)
    spec["train"] = {k: v for k, v in spec["train"].items() if k != "epochs"}
    spec["train"]["max_seconds"] = max_seconds
    return spec


def checkpoint_files(output) -> tuple[list[int], list[int]]:
    """(steps with a data file, steps with a marker) in OUTPUT/checkpoints, sorted."""
    names = os.listdir(os.path.join(output, "checkpoints"))
    data = sorted(int(m.group(1)) for m in map(CHECKPOINT_DATA.match, names) if m)
    markers = sorted(int(m.group(1)) for m in map(CHECKPOINT_MARKER.match, names) if m)
    return data, markers


def outside_slurm() -> dict:
    return {k: v for k, v in cli_env().items() if not k.startswith("SLURM_")}


def stop_after_checkpoint(spec_path: str, sig: int, after_step: int = 1, env=None) -> tuple[int, list[dict], str]:
    """Run the job, send `sig` once it reports a checkpoint at or after `after_step`;
    return (exit code, its JSON events, stderr)."""
    code, out, err = signal_when(
        spec_path, sig, lambda e: e["event"] == "checkpoint" and e["step"] >= after_step, env=env
    )
    return code, events(out), err


# ---------------------------------------------------------------- the time budget


def test_max_seconds_without_epochs_stops_by_itself_and_completes(tmp_path):
    save_photo(tmp_path / "in.png", 16, 12)
    output = tmp_path / "out"
    spec = write_spec(tmp_path / "spec.yaml", untimed_spec(str(tmp_path / "in.png"), str(output), 0.5))
    # a job that ignored its budget would never end: the subprocess's timeout turns that into a failure
    proc = run_cli("run", spec, timeout=90)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["stopped_by"] == "max_seconds"
    assert summary["steps"] >= 1
    rows = (output / "loss.csv").read_text().splitlines()[1:]
    assert len(rows) == summary["steps"]


# ---------------------------------------------------------------- signals


def test_sigusr1_outside_slurm_checkpoints_exits_75_and_the_rerun_completes(tmp_path):
    save_photo(tmp_path / "in.png", 16, 12)
    output = tmp_path / "out"
    spec = write_spec(
        tmp_path / "spec.yaml",
        untimed_spec(str(tmp_path / "in.png"), str(output), 300, checkpoint={"every_n_steps": 3}),
    )
    code, stopped_events, stderr = stop_after_checkpoint(spec, signal.SIGUSR1, env=outside_slurm())
    assert code == 75, stderr
    assert_one_error_line(stderr, "SIGUSR1")
    saved = [e for e in stopped_events if e["event"] == "checkpoint"]
    assert saved and saved[-1]["reason"] == "signal SIGUSR1", saved
    stopped_at = saved[-1]["step"]
    data, markers = checkpoint_files(output)
    assert data[-1] == markers[-1] == stopped_at, "a complete checkpoint of the step it stopped at"

    # the budget may change between runs: the rerun resumes there and stops at once
    proc = run_cli("run", spec, "--set", "train.max_seconds=0.001", env=outside_slurm())
    assert proc.returncode == 0, proc.stderr
    resumed = [e for e in events(proc.stdout) if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] == stopped_at
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumes"] == 1
    assert summary["steps"] > stopped_at


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_keep_prunes_to_the_newest_complete_pairs(tmp_path):
    save_photo(tmp_path / "in.png", 16, 12)
    output = tmp_path / "out"
    spec = write_spec(
        tmp_path / "spec.yaml",
        untimed_spec(str(tmp_path / "in.png"), str(output), 300, checkpoint={"every_n_steps": 1, "keep": 3}),
    )
    # stopped mid-run, after at least eight checkpoints (one a step)
    code, stopped_events, stderr = stop_after_checkpoint(spec, signal.SIGTERM, after_step=8)
    assert code == 75, stderr
    saved = sorted(e["step"] for e in stopped_events if e["event"] == "checkpoint")
    assert len(saved) >= 9
    data, markers = checkpoint_files(output)
    assert data == markers == saved[-3:], f"kept {data} / {markers}; saved {saved}"


def test_checkpoint_every_seconds_saves_by_time_alone(cli, tmp_path):
    save_photo(tmp_path / "in.png", 16, 12)
    spec = untimed_spec(
        str(tmp_path / "in.png"), str(tmp_path / "out"), 2.0, checkpoint={"every_n_steps": None, "every_seconds": 0.1}
    )
    result = cli("run", write_spec(tmp_path / "spec.yaml", spec))
    assert result.exit_code == 0, result.stderr
    saved = [e for e in events(result.stdout) if e["event"] == "checkpoint"]
    periodic = [e["step"] for e in saved if e["reason"] == "periodic"]
    # two seconds of training with a checkpoint due every 0.1 s: however slow each step
    # is, every step that starts 0.1 s after the last checkpoint makes one
    assert len(periodic) >= 2, saved
    assert periodic == sorted(set(periodic))


# ---------------------------------------------------------------- S3 and image lists


def test_s3_output_whose_bucket_policy_denies_put_object_is_exit_3(s3, tmp_path):
    s3.client.put_bucket_policy(
        Bucket=s3.bucket,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:PutObject",
                        "Resource": f"arn:aws:s3:::{s3.bucket}/*",
                    }
                ],
            }
        ),
    )
    save_photo(tmp_path / "in.png", 16, 12)
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(tmp_path / "in.png"), s3.uri("runs/blocked")))
    proc = run_cli("run", spec)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = assert_one_error_line(proc.stderr, s3.uri("runs/blocked"))
    assert "denied" in line.lower(), line
    assert not [e for e in events(proc.stdout) if e["event"] == "start"], "checked before training starts"
    assert s3.keys("runs/") == []


def test_image_list_with_duplicate_stems_is_exit_2_naming_the_stem(cli, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        save_photo(tmp_path / folder / "cat.png", 16, 12)
    spec = tiny_spec([str(tmp_path / "a" / "cat.png"), str(tmp_path / "b" / "cat.png")], str(tmp_path / "out"))
    path = write_spec(tmp_path / "spec.yaml", spec)
    for command in (("validate", path), ("run", path, "--index", "1")):
        result = cli(*command)
        assert result.exit_code == 2, (command, result.stderr)
        assert_one_error_line(result.stderr, "image", "'cat'")
    assert not (tmp_path / "out").exists()

"""The chaos test: one job, a dozen interruptions at random moments (SIGTERM and
SIGKILL to a real subprocess), resumed each time, and the result compared bit for
bit with an uninterrupted run: weights, loss rows, every decoded frame."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess

import pytest
from conftest import Reference, assert_same_result, read_outputs, start_cli, write_spec

NUM_INTERRUPTIONS = 12
TOTAL_STEPS = 120

pytestmark = pytest.mark.slow  # real subprocesses, real signals


def newest_checkpoint_step(output: str) -> int:
    folder = os.path.join(output, "checkpoints")
    steps = (
        [int(n[5:-5]) for n in os.listdir(folder) if n.startswith("ckpt-") and n.endswith(".json")]
        if os.path.isdir(folder)
        else []
    )
    return max(steps, default=0)


def test_chaos_a_dozen_random_sigterms_and_sigkills_end_bit_identical(reference: Reference, tmp_path):
    rng = random.Random(20261125)
    output = str(tmp_path / "out")
    spec = write_spec(tmp_path / "spec.yaml", reference.spec_for(output))
    log = []
    max_delay = 0.4  # seconds after the run's start line; adapted below
    fastest = 40.0  # steps per second, a guess until measured

    while len(log) < NUM_INTERRUPTIONS:
        sig = rng.choice((signal.SIGTERM, signal.SIGKILL))
        delay = rng.uniform(0.0, max_delay)
        before = newest_checkpoint_step(output)
        proc, reader = start_cli("run", spec)
        try:
            start = reader.wait_for(lambda e: e["event"] in ("start", "completed"))
            assert start is not None and start["event"] == "start", (
                f"run {len(log) + 1} did not start training:\n{reader.rest()}{proc.stderr.read()}"
            )
            try:
                proc.wait(timeout=delay)  # the random moment, counted from the start of training
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.rest()
        stderr = proc.stderr.read()
        after = newest_checkpoint_step(output)
        log.append((signal.Signals(sig).name, round(delay, 3), code, before, after))
        assert code != 0, f"the job finished before interruption {len(log)}; history: {log}"
        if sig == signal.SIGTERM:
            assert code == 75, f"SIGTERM must checkpoint and exit 75: {log[-1]}\n{stderr}"
            assert after >= before
        else:
            assert code == -signal.SIGKILL, stderr

        # Spread the remaining steps over the remaining interruptions, assuming the fastest
        # rate seen so far, so the job outlasts the dozen on a fast machine too.
        if after > before and delay > 0.05:
            fastest = max(fastest, (after - before) / delay)  # steps per second after the start line
        left = NUM_INTERRUPTIONS - len(log)
        max_delay = min(2.0, max(0.02, 2 * (TOTAL_STEPS - after) / (left + 2) / fastest))

    print("interruptions (signal, delay s, exit code, checkpoint step before, after):", *log, sep="\n  ")
    assert {name for name, *_ in log} == {"SIGTERM", "SIGKILL"}, log
    proc, reader = start_cli("run", spec)
    code = proc.wait(timeout=300)
    assert code == 0, f"{proc.stderr.read()}\nhistory: {log}"
    reader.rest()

    result = read_outputs(output)
    assert_same_result(result, reference.result)
    summary = json.loads(open(os.path.join(output, "summary.json")).read())
    assert 1 <= summary["resumes"] <= NUM_INTERRUPTIONS, summary["resumes"]

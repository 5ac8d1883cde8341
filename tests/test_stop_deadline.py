"""A stop signal always ends the process within its grace period, whatever the job
is waiting on: schedulers kill it after their own grace period anyway, and a
process that ignores SIGTERM keeps its lease beating and its GPU busy.

The hang here is real: an S3 endpoint on loopback that accepts connections and
never answers, so the job's image read blocks in a socket read that no signal
interrupts.
"""

from __future__ import annotations

import signal
import socket
import threading
import time

from conftest import FAKE_CREDENTIALS, assert_one_error_line, cli_env, save_photo, start_cli, tiny_spec, write_spec


class BlackHole:
    """A TCP server that accepts connections and never sends a byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_sigterm_while_the_image_read_hangs_ends_the_process_within_the_grace_period_retryably(tmp_path):
    hole = BlackHole()
    try:
        spec = write_spec(tmp_path / "spec.yaml", tiny_spec("s3://bucket/photo.png", str(tmp_path / "out")))
        grace = 3
        env = cli_env(
            **FAKE_CREDENTIALS,
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{hole.port}",
            AWS_CONFIG_FILE="/nonexistent",
            AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
            IMGFIT_STOP_GRACE_SECONDS=str(grace),
        )
        proc, reader = start_cli("run", spec, env=env)
        try:
            assert hole.accepted.wait(60), f"the job never asked for the image:\n{proc.stderr.read()}"
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            code = proc.wait(timeout=grace + 30)  # a hung process fails the test here
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr = proc.stderr.read()
        assert code == 69, (code, stderr)  # retryable: no checkpoint was saved
        line = assert_one_error_line(stderr, "SIGTERM")
        assert "could not save a checkpoint" in line
        assert took >= grace - 0.5, "it should have given the job its grace period first"
        assert not (tmp_path / "out" / "summary.json").exists()
    finally:
        hole.close()


def test_a_stop_before_any_step_still_ends_with_75_through_the_job_not_the_watchdog(tmp_path):
    """The watchdog is the last resort: a job that can stop cleanly does so itself."""
    image = tmp_path / "photo.png"
    save_photo(image)
    spec = write_spec(
        tmp_path / "spec.yaml",
        tiny_spec(str(image), str(tmp_path / "out"), train={"epochs": 500}, checkpoint={"every_n_steps": 10**6}),
    )
    proc, reader = start_cli("run", spec, env=cli_env(IMGFIT_STOP_GRACE_SECONDS="60"))
    try:
        assert reader.wait_for(lambda e: e.get("event") == "progress" or e.get("event") == "start") is not None
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert code == 75, stderr
    line = assert_one_error_line(stderr, "SIGTERM")
    assert "still busy" not in line

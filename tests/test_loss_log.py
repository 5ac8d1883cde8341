"""The loss log stays linear in the steps: sealed chunks written once under
checkpoints/log/, checkpoints that carry only the open chunk, loss.csv republished
on a cadence whose total cost is linear — and loss.csv is still byte-identical
after any interruption."""

from __future__ import annotations

import io
import os
import signal
import threading

import numpy as np
import pytest
import torch
from conftest import Reference, assert_same_result, cli_env, events, read_outputs, run_cli, signal_when, write_spec

from imgfit_batch import losslog, storage
from imgfit_batch.errors import UnavailableError
from imgfit_batch.losslog import CHUNK_ROWS, LiveCsv, LogChunks, LossLog, csv_rows


def saved(state: dict) -> bytes:
    """A checkpoint's bytes (torch.save), as the checkpointer writes them."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def loaded(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True)


def record(log: LossLog, steps: range) -> None:
    """Rows like the loop's: a loss every step, PSNR every 3rd step, SSIM every 30th."""
    for step in steps:
        psnr = torch.tensor(10.0 + step / 7) if step % 3 == 0 else None
        ssim = torch.tensor(1.0 - 1.0 / step) if step % 30 == 0 else None
        log.record(step, step // 11, torch.tensor(1.0 / step, dtype=torch.float32), 0.01 * 0.999**step, psnr, ssim)
        if step % 17 == 0:
            log.flush()  # the loop flushes on its own cadence: anywhere relative to a chunk


# ---------------------------------------------------------------- checkpoints stay bounded


def test_checkpoint_log_state_holds_one_open_chunk_whatever_the_steps(tmp_path):
    log = LossLog(LogChunks(str(tmp_path / "log")), chunk_rows=512)
    record(log, range(1, 2 * 512 + 300 + 1))
    early = saved(log.state_dict())
    record(log, range(2 * 512 + 300 + 1, 6 * 512 + 300 + 1))
    late = saved(log.state_dict())
    assert (loaded(early)["sealed"], loaded(late)["sealed"]) == (2, 6)
    assert len(loaded(late)["step"]) == 300, "only the open chunk's rows travel in the checkpoint"
    assert abs(len(late) - len(early)) < 64, "a checkpoint's log does not grow with the steps"
    assert sorted(os.listdir(tmp_path / "log")) == [losslog.chunk_name(j) for j in range(6)]


def test_a_checkpoint_from_before_chunks_with_300k_rows_resumes_into_chunks(tmp_path):
    """A synthetic 300k-row log: saved whole (as checkpoints did before chunks) it is
    14 MB; loaded, its full chunks are written out and its next checkpoint holds at
    most one chunk of rows."""
    n = 300_000
    rng = np.random.default_rng(0)
    psnr = np.where(np.arange(n) % 50 == 0, rng.uniform(10, 40, n), np.nan)
    columns = [
        np.arange(1, n + 1),
        np.arange(n) // 1000,
        rng.random(n).astype(np.float32).astype(np.float64),
        np.full(n, 0.001),
        psnr,
        np.where(np.arange(n) % 500 == 0, psnr, np.nan),
    ]
    whole = {name: torch.from_numpy(c) for name, c in zip(losslog.COLUMNS, columns)}
    assert len(saved(whole)) > 14_000_000

    log = LossLog(LogChunks(str(tmp_path / "log")))
    log.load_state_dict(loaded(saved(whole)))
    state = saved(log.state_dict())
    assert len(state) < CHUNK_ROWS * 48 + 10_000, f"{len(state)} bytes: more than one chunk of rows"
    assert loaded(state)["sealed"] == n // CHUNK_ROWS
    assert log.csv() == losslog.HEADER + csv_rows(*columns), "the same loss.csv, now from chunks + open rows"


# ---------------------------------------------------------------- exact resume across chunks


@pytest.mark.parametrize("cut", [0, 4, 5, 6, 24, 25, 52, 53])
def test_a_log_resumed_at_any_step_writes_the_same_csv_across_chunk_boundaries(tmp_path, cut):
    """chunk_rows 5: cuts on, before and after chunk boundaries; the interrupted run went on
    past its checkpoint (sealing chunks the resumed run writes again) before it died."""
    reference = LossLog(LogChunks(str(tmp_path / "reference")), chunk_rows=5)
    record(reference, range(1, 54))
    want = reference.csv()

    first = LossLog(LogChunks(str(tmp_path / "run")), chunk_rows=5)
    record(first, range(1, cut + 1))
    checkpoint = saved(first.state_dict())
    record(first, range(cut + 1, 41))  # then killed: these rows and chunks are not in the checkpoint
    first.flush()
    first.chunks.sync()

    resumed = LossLog(LogChunks(str(tmp_path / "run")))  # the chunk size comes from the checkpoint
    resumed.load_state_dict(loaded(checkpoint))
    assert len(resumed) == cut and resumed.chunk_rows == 5
    record(resumed, range(cut + 1, 54))
    assert resumed.csv() == want
    assert want.count(b"\n") == 54 and want.startswith(b"step,epoch,loss,lr,psnr_db,ssim\n1,0,1.0,0.00999,,\n")
    assert (resumed.last_loss, resumed.last_psnr) == (reference.last_loss, reference.last_psnr)

    steps, loss, psnr_steps, psnr = resumed.plot_series(max_points=10)
    assert steps[0] == 1 and steps[-1] == 53 and len(steps) <= 12, "thinned, with the last row"
    assert loss[-1] == pytest.approx(1 / 53) and psnr_steps[-1] == 51 and len(psnr) <= 11


def test_chunks_uploaded_to_s3_are_read_back_by_a_run_on_another_machine(s3, tmp_path):
    uri = s3.uri("job/checkpoints/log")
    first = LossLog(LogChunks(str(tmp_path / "machine-a"), uri), chunk_rows=8)
    record(first, range(1, 30))
    checkpoint = saved(first.state_dict())
    assert s3.keys("job/checkpoints/log/") == [f"job/checkpoints/log/loss-00000{j}.csv" for j in range(3)]

    resumed = LossLog(LogChunks(str(tmp_path / "machine-b"), uri))
    resumed.load_state_dict(loaded(checkpoint))
    record(resumed, range(30, 40))
    resumed.publish(s3.uri("job/loss.csv"))
    reference = LossLog(LogChunks(str(tmp_path / "reference")), chunk_rows=8)
    record(reference, range(1, 40))
    assert s3.get("job/loss.csv") == reference.csv()
    resumed.delete_chunks()
    assert s3.keys("job/checkpoints/log/") == []


def test_a_checkpoint_that_counts_on_a_missing_or_damaged_chunk_is_refused(tmp_path):
    folder = tmp_path / "log"
    log = LossLog(LogChunks(str(folder)), chunk_rows=4)
    record(log, range(1, 15))
    checkpoint = saved(log.state_dict())

    kept = (folder / losslog.chunk_name(1)).read_bytes()
    (folder / losslog.chunk_name(1)).unlink()
    with pytest.raises(UnavailableError, match=r"loss-000001\.csv.*--restart"):
        LossLog(LogChunks(str(folder))).load_state_dict(loaded(checkpoint))

    (folder / losslog.chunk_name(1)).write_bytes(kept)
    (folder / losslog.chunk_name(2)).write_bytes(b"12,1,0.5,0.01,,\n")  # torn: one row of four
    resumed = LossLog(LogChunks(str(folder)))
    resumed.load_state_dict(loaded(checkpoint))
    with pytest.raises(UnavailableError, match=r"loss-000002\.csv.*damaged.*1 rows, expected 4"):
        resumed.csv()


def test_a_chunk_that_could_not_be_written_fails_every_later_checkpoint(tmp_path):
    (tmp_path / "blocked").write_text("a file where the chunks' folder should be")
    log = LossLog(LogChunks(str(tmp_path / "blocked" / "log")), chunk_rows=4)
    record(log, range(1, 7))
    for _ in range(2):  # not just once: a checkpoint after it would count on the missing chunk
        with pytest.raises(UnavailableError, match="not a folder"):
            log.state_dict()


# ---------------------------------------------------------------- live publication


def test_republishing_loss_csv_while_training_costs_bytes_linear_in_the_steps(tmp_path, monkeypatch):
    """A long synthetic run publishing whenever allowed (no minimum interval): every
    publication is a complete CSV and a prefix of the final loss.csv; while small (at
    most SMALL_ROWS rows) at most one per new row, after that each one at least GROWTH
    larger, so together they stay within (1 + 1/GROWTH) x the last one."""
    monkeypatch.setattr(LiveCsv, "SMALL_ROWS", 100)
    published: list[bytes] = []
    large: list[int] = []
    upload = storage.upload_file

    def counted(path: str, uri: str) -> None:  # instrumentation: what goes to loss.csv, and how much
        with open(path, "rb") as fh:
            published.append(fh.read())
        if published[-1].count(b"\n") - 1 > LiveCsv.SMALL_ROWS:
            large.append(len(published[-1]))
            assert sum(large) <= (1 + 1 / LiveCsv.GROWTH) * large[-1] * 1.01, (
                f"{len(large)} publications past the small ones, {sum(large)} bytes: more than linear"
            )
        else:
            assert len(published) <= LiveCsv.SMALL_ROWS, "at most one small publication per new row"
        upload(path, uri)

    monkeypatch.setattr(storage, "upload_file", counted)
    log = LossLog(LogChunks(str(tmp_path / "log")), chunk_rows=4096)
    live = LiveCsv(log, str(tmp_path / "out" / "loss.csv"), every_seconds=0)
    loss = torch.tensor(0.125)
    for step in range(1, 60_001):
        log.record(step, 0, loss, 0.001)
        if live.maybe_publish(checkpointed=False):
            live.close()  # a store that answers within a step (uploads run in a thread; see the next test)
    final = log.csv()
    assert (tmp_path / "out" / "loss.csv").read_bytes() == published[-1]
    assert all(p.endswith(b"\n") and final.startswith(p) for p in published), "each is a prefix of the final CSV"
    assert sum(large) <= 5.05 * len(final) and len(large) <= 30, "about log(60000/100)/log(1.25) = 29"
    assert published[-1].count(b"\n") - 1 >= 60_000 / (1 + LiveCsv.GROWTH), "the published file lags by under a fifth"


def test_a_live_publication_that_fails_transiently_warns_and_never_blocks_or_ends_training(tmp_path, monkeypatch):
    """The store down for good: each live upload fails after its retries (a TransientError);
    training steps on meanwhile (the upload runs in a thread), each failure is one
    warning, the next publication tries again, and close() waits for the one in flight."""
    from imgfit_batch.errors import NodeLocalError, TransientError

    started, release = threading.Event(), threading.Event()
    tries: list[int] = []

    def outage(path: str, uri: str) -> None:
        tries.append(open(path, "rb").read().count(b"\n") - 1)
        started.set()
        release.wait(30)  # a slow store: the step loop must not wait for it
        raise TransientError(f"{uri}: uploading failed (SlowDown, HTTP 503), gave up after 3 tries")

    monkeypatch.setattr(storage, "upload_file", outage)
    warnings: list[str] = []
    log = LossLog(LogChunks(str(tmp_path / "log")), chunk_rows=4096)
    live = LiveCsv(log, str(tmp_path / "out" / "loss.csv"), every_seconds=0, warn=warnings.append)
    loss = torch.tensor(0.125)
    for step in range(1, 201):  # all while the first upload hangs (at a checkpoint it would be waited for)
        log.record(step, 0, loss, 0.001)
        live.maybe_publish(checkpointed=False)
    assert started.wait(30)
    assert tries == [1], "one upload in flight at a time, and training did not wait for it"
    release.set()
    live.close()
    assert len(warnings) == 1 and "was not republished" in warnings[0] and "SlowDown" in warnings[0], warnings
    log.record(201, 0, loss, 0.001)
    assert live.maybe_publish(checkpointed=True), "the next publication tries again"
    live.close()
    assert len(warnings) == 2 and tries == [1, 201]

    def disk_full(path: str, uri: str) -> None:
        raise NodeLocalError(f"{uri}: cannot write: No space left on device on this node")

    monkeypatch.setattr(storage, "upload_file", disk_full)  # not a store's passing trouble: it ends the job
    log.record(202, 0, loss, 0.001)
    live.maybe_publish(checkpointed=True)
    with pytest.raises(NodeLocalError):
        live.close()


# ---------------------------------------------------------------- a real job


@pytest.mark.slow
def test_job_interrupted_with_small_chunks_resumes_to_the_same_loss_csv(reference: Reference, tmp_path):
    """The reference job (120 steps, a checkpoint every 4) with 7-row chunks: SIGTERM after
    step 60 leaves sealed chunks under checkpoints/log/ and a checkpoint with only the open
    rows; the rerun (with the default chunk size in its environment: the checkpoint's wins)
    ends byte-identical to the uninterrupted run, and the chunks are gone."""
    output = tmp_path / "out"
    spec = write_spec(tmp_path / "spec.yaml", reference.spec_for(str(output)))
    code, stdout, stderr = signal_when(
        spec,
        signal.SIGTERM,
        lambda e: e["event"] == "checkpoint" and e["step"] >= 60,
        env=cli_env(IMGFIT_LOG_CHUNK_ROWS="7"),
    )
    assert code == 75, stderr
    step = [e for e in events(stdout) if e["event"] == "checkpoint"][-1]["step"]
    newest = sorted(n for n in os.listdir(output / "checkpoints") if n.endswith(".pt"))[-1]
    state = torch.load(output / "checkpoints" / newest, weights_only=True)["parts"]["log"]
    assert (state["chunk_rows"], state["sealed"], len(state["step"])) == (7, step // 7, step % 7)
    chunks = sorted(os.listdir(output / "checkpoints" / "log"))
    assert chunks[: step // 7] == [losslog.chunk_name(j) for j in range(step // 7)]
    want = reference.result["rows"]
    for j in range(step // 7):
        assert (output / "checkpoints" / "log" / chunks[j]).read_text().splitlines() == want[1 + 7 * j : 8 + 7 * j]
    assert (output / "loss.csv").read_text().splitlines() == want[: step + 1], "loss.csv so far: a prefix of the final"

    proc = run_cli("run", spec)
    assert proc.returncode == 0, proc.stderr
    assert_same_result(read_outputs(str(output)), reference.result)
    assert not os.path.exists(output / "checkpoints" / "log"), "chunks are deleted once loss.csv is whole"


@pytest.mark.slow
def test_job_on_s3_interrupted_with_small_chunks_resumes_to_the_same_loss_csv(reference: Reference, s3, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", reference.spec_for(s3.uri("runs/photo")))
    env = cli_env(IMGFIT_LOG_CHUNK_ROWS="7")
    code, stdout, stderr = signal_when(
        spec, signal.SIGTERM, lambda e: e["event"] == "checkpoint" and e["step"] >= 60, env=env
    )
    assert code == 75, stderr
    step = [e for e in events(stdout) if e["event"] == "checkpoint"][-1]["step"]
    assert s3.keys("runs/photo/checkpoints/log/")[: step // 7] == [
        f"runs/photo/checkpoints/log/{losslog.chunk_name(j)}" for j in range(step // 7)
    ]
    want = reference.result["rows"]
    assert s3.get("runs/photo/loss.csv").decode().splitlines() == want[: step + 1]

    proc = run_cli("run", spec, env=env)  # a fresh working folder: the chunks come back from S3
    assert proc.returncode == 0, proc.stderr
    assert s3.get("runs/photo/loss.csv").decode().splitlines() == want
    assert s3.keys("runs/photo/checkpoints/log/") == []

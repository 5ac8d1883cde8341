"""`imgfit-batch report OUTPUT`: results.csv and a self-contained index.html for every
task under OUTPUT, locally and on the S3 server, checked against each task's own
summary.json; running and interrupted tasks; foreign files; the page in a real headless
Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import (
    TINY_MODEL, assert_one_error_line, assert_same_result, cli_env, read_outputs, run_cli, save_photo, signal_when,
    skip_or_fail, start_cli, tiny_spec, write_spec,
)

pytestmark = pytest.mark.slow

CSV_OF_SUMMARY = {  # results.csv column -> summary.json key, for a completed task
    "steps": "steps", "total_steps": "steps", "psnr_db": "psnr_db", "exact": "exact", "ssim": "ssim",
    "loss": "final_loss", "train_seconds": "train_seconds", "wall_seconds": "wall_seconds", "device": "device",
    "resumes": "resumes", "status": "status", "model": "model",
}


def as_csv(value) -> str:
    """How results.csv spells a JSON value (numbers exactly as Python writes them)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_csv(text: str) -> dict[str, dict]:
    """results.csv's rows by task folder."""
    rows = list(csv.DictReader(io.StringIO(text)))
    by_folder = {row["folder"]: row for row in rows}
    assert len(by_folder) == len(rows), "one row per task"
    return by_folder


def assert_row_is_summary(row: dict, summary: dict) -> None:
    for column, key in CSV_OF_SUMMARY.items():
        assert row[column] == as_csv(summary.get(key)), f"{column}: {row[column]!r} != summary's {key} {summary.get(key)!r}"


class Page(HTMLParser):
    """index.html's table as rows of {class, folder, cells: [text]}, and every script."""

    def __init__(self, text: str):
        super().__init__()
        self.rows, self.scripts, self.tags, self._cell, self._in_script = [], [], [], None, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "tr" and "data-folder" in attrs:
            self.rows.append({"class": attrs.get("class", "").split(), "folder": attrs["data-folder"], "cells": []})
        elif tag == "td" and self.rows:
            self._cell = ""
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1]["cells"].append(self._cell.strip())
            self._cell = None
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_script:
            self.scripts[-1] += data


def report(cli, output: str):
    result = cli("report", output)
    assert result.exit_code == 0, result.stderr
    return result


# ---------------------------------------------------------------- running and interrupted tasks


def tree_state(folder: Path) -> dict:
    """Every file under `folder` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_running_and_interrupted_tasks_show_their_progress_and_reports_do_not_disturb_them(cli, reference, tmp_path):
    study = tmp_path / "study"
    stopped_spec = write_spec(tmp_path / "stopped.yaml", reference.spec_for(str(study / "stopped")))
    code, _, err = signal_when(stopped_spec, signal.SIGTERM, lambda e: e["event"] == "checkpoint" and e["step"] >= 8)
    assert code == 75, err

    running_spec = write_spec(tmp_path / "running.yaml", reference.spec_for(str(study / "running")))
    proc, reader = start_cli("run", running_spec)
    try:
        assert reader.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] >= 8) is not None, proc.stderr.read()
        proc.send_signal(signal.SIGSTOP)  # frozen mid-run, holding its lease: running, deterministically
        before = tree_state(study / "running"), tree_state(study / "stopped")
        out = report(cli, str(study)).stdout
        assert (tree_state(study / "running"), tree_state(study / "stopped")) == before, "report wrote into a task"
        assert "2 tasks" in out and "1 running" in out and "1 interrupted" in out, out

        rows = read_csv((study / "results.csv").read_text())
        assert set(rows) == {"running", "stopped"}
        from imgfit_batch.readback import job_status

        for folder, state in (("running", "running"), ("stopped", "interrupted")):
            row, status = rows[folder], job_status(str(study / folder))
            assert row["status"] == status["state"] == state
            assert row["steps"] == as_csv(status["step"]) and int(row["steps"]) >= 8
            assert row["total_steps"] == "120" and row["loss"] == as_csv(status["loss"]) != ""
            assert row["psnr_db"] == as_csv(status["psnr_db"]) and row["resumes"] == "0"
            assert row["best"] == "false" and row["video"] == "" and row["summary"] == ""
        page = Page((study / "index.html").read_text())
        shown = {r["folder"]: r for r in page.rows}
        assert "running" in shown["running"]["class"] and "interrupted" in shown["stopped"]["class"]
        assert any(c.startswith(f"{rows['running']['steps']} / 120") for c in shown["running"]["cells"])
        assert ("progress", {"max": "120", "value": rows["running"]["steps"]}) in page.tags
        assert "1 running, 1 interrupted" in (study / "index.html").read_text()

        proc.send_signal(signal.SIGCONT)
        while proc.poll() is None:  # reports while it trains, as many as fit
            report(cli, str(study))
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    assert_same_result(read_outputs(str(study / "running")), reference.result)

    report(cli, str(study))
    rows = read_csv((study / "results.csv").read_text())
    summary = json.loads((study / "running" / "summary.json").read_text())
    assert_row_is_summary(rows["running"], summary)
    assert rows["running"]["video"] == "running/video.mp4" and rows["stopped"]["status"] == "interrupted"
    assert (rows["running"]["best"], rows["stopped"]["best"]) == ("true", "false"), "the image's only completed run"


# ---------------------------------------------------------------- foreign files, vanishing tasks, exit codes


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's shape)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_foreign_and_vanishing_files_are_shown_or_left_out_never_a_crash(cli, reference, tmp_path, monkeypatch):
    from imgfit_batch import storage

    study = tmp_path / "study"
    for name in ("good", "garbage", "listed", "bomb", "notpng", "gone", "deep/er/still/further"):
        shutil.copytree(reference.output, study / name)
    (study / "garbage" / "summary.json").write_bytes(b"\x00{not json")
    (study / "listed" / "summary.json").write_text("[1, 2]")
    (study / "bomb" / "final.png").write_bytes(png_claiming(60000, 60000))
    (study / "notpng" / "final.png").write_bytes(b"GIF89a, or so it says")
    (study / "results.csv").write_text("stale")
    real_list = storage.list_files

    def list_then_delete(prefix, max_depth):  # a task removed between the listing and its reading
        names = real_list(prefix, max_depth)
        shutil.rmtree(study / "gone")
        return names

    monkeypatch.setattr(storage, "list_files", list_then_delete)
    result = report(cli, str(study))
    rows = read_csv((study / "results.csv").read_text())
    assert set(rows) == {"good", "garbage", "listed", "bomb", "notpng"}, "gone is left out, deep/er/... is too deep"
    assert rows["garbage"]["status"] == rows["listed"]["status"] == "unknown"
    assert rows["garbage"]["steps"] == rows["garbage"]["psnr_db"] == ""
    summary = json.loads((study / "good" / "summary.json").read_text())
    for name in ("good", "bomb", "notpng"):
        assert_row_is_summary(rows[name], summary)
    assert "gone" in result.stderr and "bomb/final.png: no thumbnail" in result.stderr
    assert "Traceback" not in result.stderr
    page = Page((study / "index.html").read_text())
    thumbs = {r["folder"] for r in page.rows} - {"bomb", "notpng"}
    assert sum(1 for tag, a in page.tags if tag == "img") == len(thumbs) == 3
    assert "5 tasks: 3 completed, 0 running, 0 interrupted, 2 unknown" in (study / "index.html").read_text()


def test_nothing_to_report_bad_locations_and_s3_faults_end_in_one_line_and_their_code(cli, tmp_path, s3, monkeypatch):
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "b").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "notes.json").write_text("{}")
    for where, code, needle in (
        (str(tmp_path / "empty"), 3, "no imgfit-batch job under"),
        (str(tmp_path / "missing"), 3, "no imgfit-batch job under"),
        (s3.uri("nothing/here"), 3, "no imgfit-batch job under"),
        ("s3://no-such-bucket-imgfit/study", 3, "bucket does not exist"),
        ("http://example.com/study", 2, "OUTPUT"),
        ("s3://", 2, "OUTPUT"),
    ):
        result = cli("report", where)
        assert result.exit_code == code, (where, result)
        assert_one_error_line(result.stderr, needle)
    assert not list((tmp_path / "empty").rglob("*.html")), "nothing found: nothing written"

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")  # nothing listens: transient
    monkeypatch.setenv("IMGFIT_S3_RETRY_SECONDS", "0")
    result = cli("report", s3.uri("study"))
    assert result.exit_code == 69, result
    assert_one_error_line(result.stderr, "listing", "run the job again")


def _closed_port() -> int:
    from conftest import free_port

    return free_port()

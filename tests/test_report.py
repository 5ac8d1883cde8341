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
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import (
    assert_one_error_line,
    assert_same_result,
    read_outputs,
    save_photo,
    signal_when,
    skip_or_fail,
    start_cli,
    tiny_spec,
    write_spec,
)

pytestmark = pytest.mark.slow

CSV_OF_SUMMARY = {  # results.csv column -> summary.json key, for a completed task
    "steps": "steps",
    "total_steps": "steps",
    "psnr_db": "psnr_db",
    "exact": "exact",
    "ssim": "ssim",
    "loss": "final_loss",
    "train_seconds": "train_seconds",
    "wall_seconds": "wall_seconds",
    "device": "device",
    "resumes": "resumes",
    "status": "status",
    "model": "model",
    "parameters": "parameters",
    "bits_per_pixel": "bits_per_pixel",
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
        assert row[column] == as_csv(summary.get(key)), (
            f"{column}: {row[column]!r} != summary's {key} {summary.get(key)!r}"
        )


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
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def test_running_and_interrupted_tasks_show_their_progress_and_reports_do_not_disturb_them(
    cli, reference, tmp_path, monkeypatch
):
    from imgfit_batch import storage

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
            assert float(row["train_seconds"]) > 0 and row["device"] == "cpu", "training so far, and where"
        page = Page((study / "index.html").read_text())
        shown = {r["folder"]: r for r in page.rows}
        assert "running" in shown["running"]["class"] and "interrupted" in shown["stopped"]["class"]
        assert any(c.startswith(f"{rows['running']['steps']} / 120") for c in shown["running"]["cells"])
        assert ("progress", {"max": "120", "value": rows["running"]["steps"]}) in page.tags
        assert "1 running, 1 interrupted" in (study / "index.html").read_text()
        listed_while_running = storage.list_files(str(study), 3)

        proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:  # reports while it trains, as many as fit
            report(cli, str(study))
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    assert_same_result(read_outputs(str(study / "running")), reference.result)

    summary = json.loads((study / "running" / "summary.json").read_text())
    for listing in (None, listed_while_running):  # and as if it completed between the listing and the reading
        if listing:
            monkeypatch.setattr(storage, "list_files", lambda prefix, depth, listing=listing: listing)
        report(cli, str(study))
        rows = read_csv((study / "results.csv").read_text())
        assert_row_is_summary(rows["running"], summary)
        assert rows["running"]["video"] == "running/video.mp4" and rows["stopped"]["status"] == "interrupted"
        assert (rows["running"]["best"], rows["stopped"]["best"]) == ("true", "false"), "the image's one completed run"


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
    for name in ("bomb", "notpng"):  # as their summary.json records them: completed tasks whose final.png is not a PNG
        summary = json.loads((study / name / "summary.json").read_text())
        summary["files"]["final.png"] = (study / name / "final.png").stat().st_size
        (study / name / "summary.json").write_text(json.dumps(summary))
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
    assert "gone" in result.stderr and "bomb/final.png: no thumbnail (60000x60000 is over" in result.stderr
    assert "Traceback" not in result.stderr
    page = Page((study / "index.html").read_text())
    thumbs = {r["folder"] for r in page.rows} - {"bomb", "notpng"}
    assert sum(1 for tag, a in page.tags if tag == "img") == len(thumbs) == 3
    assert "5 tasks: 3 completed, 0 running, 0 interrupted, 2 unknown" in (study / "index.html").read_text()


def test_nothing_to_report_bad_locations_and_s3_faults_end_in_one_line_and_their_code(cli, tmp_path, s3, monkeypatch):
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "b").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "notes.json").write_text("{}")
    (tmp_path / "empty" / "checkpoints" / "ckpt-notes.json").write_text("{}")  # not a checkpoint marker
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


# ---------------------------------------------------------------- a study: 2 images x 2 settings

SWEEP = {"video.fps": [4], "train.lr": [0.003, 0.03]}  # a field swept over one value, then two settings
HOSTILE = "<img src=x onerror=window.pwned=1>\"&amp;'"  # an image file name (no slash) that is also HTML
LABEL_FOLDER = "harbour/lr=0.01,x=&quot;'<b> #1?%41"  # and a folder that is a URL's fragment, query, escape


def study_spec(root: Path, output: str, images=("harbour", "meadow")) -> str:
    paths = []
    for (width, height), name in zip(((40, 30), (48, 27)), images):
        save_photo(root / f"{name}.png", width, height, seed=5)
        paths.append(str(root / f"{name}.png"))
    return write_spec(root / "study.yaml", tiny_spec(paths, output, sweep=SWEEP))


def expected_tasks(images: tuple[str, ...]) -> dict[str, dict]:
    """The agreed order and labels: image outermost, the last swept field fastest."""
    from imgfit_batch.spec import image_stem

    tasks, index = {}, 0
    for image in images:
        for lr in SWEEP["train.lr"]:
            label = f"fps=4,lr={lr}"
            tasks[f"{image_stem(image + '.png')}/{label}"] = {
                "index": index,
                "label": label,
                "image": image,
                "overrides": {"video.fps": 4, "train.lr": lr},
            }
            index += 1
    return tasks


def check_study(csv_text: str, summaries: dict[str, dict], images: tuple[str, ...]) -> dict[str, dict]:
    """Every task's row agrees with its summary.json; settings and best-per-image right."""
    header = next(csv.reader(io.StringIO(csv_text)))
    assert header[1:5] == ["image", "label", "video.fps", "train.lr"], header
    rows = read_csv(csv_text)
    want = expected_tasks(images)
    assert list(rows) == list(want), "one row per task, in task order"
    for folder, task in want.items():
        row, summary = rows[folder], summaries[folder]
        assert summary["task"]["index"] == task["index"] and summary["task"]["label"] == task["label"]
        assert_row_is_summary(row, summary)
        assert row["status"] == "completed" and row["label"] == task["label"]
        assert row["image"] == summary["task"]["image"] and row["image"].endswith(task["image"] + ".png")
        assert (row["train.lr"], row["video.fps"]) == (str(task["overrides"]["train.lr"]), "4")
        from urllib.parse import quote

        base = "/".join(quote(part, safe="=,") for part in folder.split("/"))
        assert [row["video"], row["progress"], row["summary"]] == [
            f"{base}/video.mp4",
            f"{base}/progress.png",
            f"{base}/summary.json",
        ]
    for image in images:
        mine = {f: s["psnr_db"] for f, s in summaries.items() if want[f]["image"] == image}
        top = max(mine.values())
        assert {f for f in mine if rows[f]["best"] == "true"} == {f for f, p in mine.items() if p == top}
    return rows


_STUDY: dict[str, Path] = {}


def run_tasks(cli, spec: str, count: int) -> None:
    """`run --index i` for every task, in this process (torch is loaded once)."""
    for i in range(count):
        result = cli("run", spec, "--index", str(i))
        assert result.exit_code == 0, f"task {i}: {result.stderr}"


@pytest.fixture
def local_study(cli, tmp_path_factory) -> Path:
    """A finished local study of 2 images x 2 settings, made once for the tests that copy it."""
    if "local" not in _STUDY:
        root = tmp_path_factory.mktemp("study")
        run_tasks(cli, study_spec(root, str(root / "study")), 4)
        _STUDY["local"] = root / "study"
    return _STUDY["local"]


def test_a_study_report_agrees_with_every_summary_locally(cli, local_study, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(local_study, study)
    out = report(cli, str(study)).stdout
    assert "4 tasks (4 completed)" in out, out
    summaries = {f: json.loads((study / f / "summary.json").read_text()) for f in expected_tasks(("harbour", "meadow"))}
    check_study((study / "results.csv").read_text(), summaries, ("harbour", "meadow"))
    page = Page((study / "index.html").read_text())
    assert [r["folder"] for r in page.rows] == list(summaries)
    assert sum("best" in r["class"] for r in page.rows) == 2


def test_a_study_on_s3_reports_into_its_prefix_with_hostile_names_escaped(cli, s3, tmp_path):
    images = ("harbour", HOSTILE)
    run_tasks(cli, study_spec(tmp_path, s3.uri("study"), images), 4)
    report(cli, s3.uri("study"))
    want = expected_tasks(images)
    summaries = {f: json.loads(s3.get(f"study/{f}/summary.json")) for f in want}
    rows = check_study(s3.get("study/results.csv").decode(), summaries, images)
    from urllib.parse import unquote

    keys = set(s3.keys("study/"))
    for row in rows.values():
        for link in ("video", "progress", "summary"):
            assert f"study/{unquote(row[link])}" in keys, row[link]
    text = s3.get("study/index.html").decode()
    page = Page(text)
    assert len(page.scripts) == 1 and "pwned" not in page.scripts[0]
    assert not any(tag == "img" and a.get("src") == "x" for tag, a in page.tags), "a name became markup"
    assert not any(name.startswith("on") for _, a in page.tags for name in a), "a name became an event handler"
    from imgfit_batch.spec import image_stem

    hostile = [r for r in page.rows if r["folder"].startswith(image_stem(HOSTILE + ".png"))]
    assert len(hostile) == 2 and all(image_stem(HOSTILE + ".png") in r["cells"] for r in hostile)


# ---------------------------------------------------------------- the page in a real browser


def chromium_executable() -> str:
    """Debian's chromium, installed when missing (we are root on CI, as for Slurm)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        skip_or_fail("needs Debian's chromium package (apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            skip_or_fail(f"apt-get could not install chromium: {done.stderr.strip()[-300:]}")
    return shutil.which("chromium") or skip_or_fail("chromium installed but not on PATH")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (the system's, not a Playwright download) driven by Playwright."""
    from conftest import import_or_skip

    sync_api = import_or_skip("playwright.sync_api", "needs playwright (pip install -e '.[test]')")
    exe = chromium_executable()
    with sync_api.sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=exe, args=["--no-sandbox"], timeout=60_000)
        except Exception as exc:  # playwright's Error: the browser did not start
            skip_or_fail(f"chromium does not start under playwright: {str(exc).splitlines()[0]}")
        try:
            yield chromium
        finally:
            chromium.close()


def add_task(study: Path, source: str, folder: str, psnr_db: float, **task) -> None:
    """A copy of a finished task under another folder, its task record and PSNR edited:
    names a user could give (a label's values, an image's file name) that are also HTML."""
    shutil.copytree(study / source, study / folder)
    for name in ("summary.json", "spec.json"):
        data = json.loads((study / folder / name).read_text())
        data["task"].update(task)
        if name == "summary.json":
            data["psnr_db"] = psnr_db
        (study / folder / name).write_text(json.dumps(data))


def page_rows(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#results tbody tr",
        """rows => rows.map(r => ({
        folder: r.dataset.folder, psnr: r.querySelector('td.psnr').dataset.v,
        image: r.querySelector('td.image').textContent, label: (r.querySelector('td.label') || {}).textContent}))""",
    )


def test_the_page_in_a_real_browser_sorts_shows_thumbnails_links_and_escapes(
    cli, local_study, browser, tmp_path, monkeypatch
):
    study = tmp_path / "study"
    shutil.copytree(local_study, study)
    monkeypatch.chdir(tmp_path)  # OUTPUT as a user types it: the page's heading shows "study"
    report(cli, "study")
    page = browser.new_page(viewport={"width": 1480, "height": 600})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto((study / "index.html").as_uri())
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    if os.environ.get("IMGFIT_REPORT_SCREENSHOT"):  # where a person wants to look at it
        shutil.copy(tmp_path / "report.png", os.environ["IMGFIT_REPORT_SCREENSHOT"])
    assert len(page_rows(page)) == 4
    assert page.locator("svg#rd").count() == 0, "one size only: no rate-distortion plot"

    # names a user controls, that are also HTML; a task that has not started training (no PSNR)
    hostile_label = "lr=<script>window.pwned=1</script>,x=\"&amp;'"
    first = "harbour/fps=4,lr=0.003"
    # PSNRs 9.25 and 9.5 sort wrong as text ("9.5" > "17.4") and under numeric collation (5 < 25)
    add_task(study, first, LABEL_FOLDER, label=hostile_label, psnr_db=9.5)
    add_task(study, first, f"{HOSTILE}/fps=4,lr=0.003", image=f"/photos/{HOSTILE}.png", psnr_db=9.25)
    (study / "meadow" / "fps=4,lr=1").mkdir()
    shutil.copy(study / "meadow" / "fps=4,lr=0.03" / "spec.json", study / "meadow" / "fps=4,lr=1" / "spec.json")
    assert "7 tasks (6 completed, 1 interrupted)" in report(cli, "study").stdout
    page.reload()

    rows = page_rows(page)
    assert len(rows) == 7 and len({r["folder"] for r in rows}) == 7
    assert page.evaluate("() => window.pwned") is None, "a name ran as script"
    assert page.evaluate("() => document.scripts.length") == 1
    assert page.evaluate("() => document.querySelectorAll('img:not(.thumb), b').length") == 0, "a name became markup"
    shown = {r["folder"]: r for r in rows}
    assert shown[LABEL_FOLDER]["label"] == hostile_label
    assert shown[f"{HOSTILE}/fps=4,lr=0.003"]["image"] == HOSTILE
    assert page.text_content("p.summary").startswith("7 tasks: 6 completed, 0 running, 1 interrupted")

    # thumbnails decode; every link resolves, relative to the page, to its task's file
    sizes = page.eval_on_selector_all("img.thumb", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(sizes) == 6 and all(w > 0 for w in sizes), sizes
    links = page.eval_on_selector_all("#results a[href]", "as => as.map(a => [a.href, a.closest('tr').dataset.folder])")
    assert len(links) == 6 * 4
    from urllib.parse import unquote, urlparse

    for href, folder in links:
        url = urlparse(href)
        target = Path(unquote(url.path))
        assert url.scheme == "file" and target.parent == study / folder and target.is_file(), href
    assert all(url.startswith(("file:", "data:")) for url in requests), "the page fetched something from the network"

    # sorting by PSNR: numbers in numeric order (9.5 before 10-something), the empty last; again reverses
    header = page.locator("#results thead th", has_text="PSNR")
    for direction in (1, -1):
        header.click()
        values = [r["psnr"] for r in page_rows(page)]
        numbers = [float(v) for v in values if v != ""]
        assert values[len(numbers) :] == [""], values
        assert numbers == sorted(numbers, reverse=direction < 0) and {9.25, 9.5} < set(numbers), values
    page.screenshot(path=str(tmp_path / "report-hostile.png"), full_page=True)
    page.close()


def test_a_study_of_sizes_shows_psnr_against_bits_per_pixel_one_line_per_kind_in_a_real_browser(cli, browser, tmp_path):
    # 2 kinds x 2 budgets: the picture a fit is read by, drawn from the tasks' own summaries
    save_photo(tmp_path / "photo.png", 40, 30, seed=5)
    fourier = {"kind": "fourier", "fourier_order": 4, "num_hidden_layers": 2}
    siren = {"kind": "siren", "num_hidden_layers": 1}
    models = [{**kind, "max_parameters": budget} for kind in (fourier, siren) for budget in (1_500, 6_000)]
    spec = tiny_spec(str(tmp_path / "photo.png"), str(tmp_path / "study"), sweep={"model": models})
    del spec["model"]  # every bundle says its own kind
    run_tasks(cli, write_spec(tmp_path / "study.yaml", spec), 4)
    report(cli, str(tmp_path / "study"))
    rows = read_csv((tmp_path / "study" / "results.csv").read_text())

    page = browser.new_page(viewport={"width": 1480, "height": 900})
    page.goto((tmp_path / "study" / "index.html").as_uri())
    page.screenshot(path=str(tmp_path / "report-rd.png"), full_page=True)
    plot = page.locator("svg#rd")
    assert plot.count() == 1 and plot.bounding_box()["width"] > 0
    lines = page.eval_on_selector_all("svg#rd polyline.series", "ls => ls.map(l => l.dataset.series)")
    assert sorted(lines) == ["fourier", "siren"]
    points = page.eval_on_selector_all(
        "svg#rd circle",
        "cs => cs.map(c => ({series: c.dataset.series, folder: c.dataset.folder, bpp: +c.dataset.bpp, "
        "psnr: +c.dataset.psnr, x: c.getBoundingClientRect().x, y: c.getBoundingClientRect().y}))",
    )
    assert sorted(p["folder"] for p in points) == sorted(rows)  # every task, once
    for p in points:
        row = rows[p["folder"]]
        assert (p["series"], p["bpp"], p["psnr"]) == (row["model"], float(row["bits_per_pixel"]), float(row["psnr_db"]))
    for series in ("fourier", "siren"):
        small, large = sorted((p for p in points if p["series"] == series), key=lambda p: p["bpp"])
        assert small["bpp"] < large["bpp"] and small["x"] < large["x"], "more bits lie further right"
    high, low = sorted(points, key=lambda p: -p["psnr"])[0], sorted(points, key=lambda p: p["psnr"])[0]
    assert high["psnr"] > low["psnr"] and high["y"] < low["y"], "more dB lie higher"
    page.close()

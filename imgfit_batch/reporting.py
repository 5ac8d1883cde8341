"""`report`: one table and one page comparing every task under an output location.

    find the tasks (one listing of OUTPUT, a few folders deep); read each one's
    summary.json and spec.json (a task that has not completed gets its state and
    progress from readback.job_status); mark the best run of each image; write
    OUTPUT/results.csv and a self-contained OUTPUT/index.html (inline CSS and
    script, thumbnails as data: URIs, links relative to the page), each atomically.

Read-only on the tasks (it never touches a lease or a checkpoint), so it is safe to
run while they still train: a task that vanishes meanwhile is left out, a summary.json
that is not JSON shows as "unknown".
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from imgfit_batch import completion, fieldpath, outputs, storage
from imgfit_batch.errors import UnavailableError
from imgfit_batch.redact import redact

# Where tasks are: OUTPUT itself (one image), OUTPUT/<stem> (a list of images),
# OUTPUT/<stem>/<label> (a sweep). A task's checkpoint markers sit one folder further down.
TASK_DEPTH = 2
CHECKPOINT_MARKER = re.compile(r"ckpt-\d+\.json")
THUMB_WIDTH = 160
THUMB_MAX_PIXELS = 250_000_000  # final.png is at most input.max_pixels (200 MP by default)
THUMB_MAX_BYTES = 1 << 30
_PIL_LOCK = threading.Lock()  # PIL's pixel limit and the warnings filter are process-wide; decoding is CPU-bound anyway
_BIG_READS = threading.Semaphore(4)  # final.png of a 50 MP photo is ~100 MB: a few in memory at once, not READERS
READERS = 16  # tasks read at once: on S3 each read is a round trip, so a large study is latency-bound
LINKS = (("video", outputs.VIDEO), ("progress", outputs.PROGRESS), ("summary", outputs.SUMMARY))
STATES = ("completed", "running", "interrupted", "unknown")


@dataclass
class Row:
    """One task, as the table shows it. Numbers are summary.json's own values for a
    completed task, job_status's progress otherwise; None where unknown."""

    folder: str  # relative to OUTPUT, "" for OUTPUT itself
    image: str
    stem: str
    index: int | None = None
    label: str | None = None
    overrides: dict = field(default_factory=dict)
    model: str | None = None
    parameters: Any = None  # the model's size (summary.json)
    bits_per_pixel: Any = None  # its rate: parameters x 32 / pixels
    status: str = "unknown"
    steps: Any = None
    total_steps: Any = None
    psnr_db: Any = None
    exact: bool = False  # final.png equals the input: PSNR is infinite (summary.json's psnr_db is null)
    ssim: Any = None
    loss: Any = None
    train_seconds: Any = None
    wall_seconds: Any = None
    device: str | None = None
    resumes: Any = None
    best: bool = False
    files: tuple = ()  # the job's files that exist in the folder
    thumbnail: str | None = None  # a data: URI


def write_report(output: str, warn=lambda message: print(f"warning: {message}", file=sys.stderr)) -> list[Row]:
    """Find every task under `output`, write results.csv and index.html there; the rows."""
    folders = _task_folders(output)
    with ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="report") as pool:
        read = pool.map(lambda item: _read_task(output, item[0], item[1], warn), folders.items())
        rows = [row for row in read if row is not None]
    if not rows:  # none found, or every one vanished since the listing
        raise UnavailableError(
            f"no imgfit-batch job under {output} (no summary.json, spec.json or checkpoint "
            f"in it or up to {TASK_DEPTH} folders below it)"
        )
    rows.sort(key=lambda r: (r.index if r.index is not None else math.inf, r.folder))
    _mark_best(rows)
    fields = list(dict.fromkeys(name for row in rows for name in row.overrides))
    storage.write_bytes(storage.join(output, outputs.RESULTS), results_csv(rows, fields).encode())
    storage.write_bytes(storage.join(output, outputs.INDEX), page(output, rows, fields).encode())
    return rows


# ---------------------------------------------------------------- finding and reading tasks


def _task_folders(output: str) -> dict[str, set[str]]:
    """Task folders (relative to `output`) and the names of the files in each. A folder is
    a task if it holds summary.json or spec.json, or a checkpoint marker in checkpoints/;
    a task's own checkpoints/ is never searched for further tasks."""
    files: dict[str, set[str]] = {}
    for path in storage.list_files(output, TASK_DEPTH + 1):
        folder, _, name = path.rpartition("/")
        files.setdefault(folder, set()).add(name)
    candidates = {f for f in files if _depth(f) <= TASK_DEPTH}
    candidates |= {
        f.rpartition("/")[0]
        for f in files
        if f.rpartition("/")[2] == outputs.CHECKPOINTS and _depth(f) <= TASK_DEPTH + 1
    }
    tasks: dict[str, set[str]] = {}
    for folder in sorted(candidates, key=lambda f: (_depth(f), f)):
        if any(_under(folder, _child(task, outputs.CHECKPOINTS)) for task in tasks):
            continue
        names, markers = files.get(folder, set()), files.get(_child(folder, outputs.CHECKPOINTS), set())
        if {outputs.SUMMARY, outputs.SPEC} & names or any(CHECKPOINT_MARKER.fullmatch(n) for n in markers):
            tasks[folder] = names
    return tasks


def _depth(folder: str) -> int:
    return folder.count("/") + 1 if folder else 0


def _child(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _under(folder: str, base: str) -> bool:
    return folder == base or folder.startswith(base + "/")


def _read_json(kind: type[outputs.Record], uri: str) -> tuple[Any, str | None]:
    """(the record, what is wrong with the file), as outputs.load; another output format is wrong too."""
    try:
        return outputs.load(kind, uri)
    except outputs.OutputFormatError as exc:
        return None, str(exc)


def _read_task(output: str, folder: str, files: set[str], warn, recheck: bool = False) -> Row | None:
    """The row of the task in `folder`, whose files are `files` (as listed); None if it is gone.
    A task with a link out of OUTPUT (storage.confined) is `unknown`, none of its files
    read or linked: the page is published, and nothing from outside OUTPUT may reach it."""
    uri = storage.join(output, folder) if folder else output
    try:
        for name in sorted(files | {outputs.CHECKPOINTS}):
            storage.check_inside(storage.join(uri, name))
        return _read_files(output, folder, uri, files, warn, recheck)
    except storage.LinkOutside as exc:
        warn(f"{exc}; showing the task as unknown")
        return Row(folder=folder, image="", stem=_stem("", folder, output))


def _read_files(output: str, folder: str, uri: str, files: set[str], warn, recheck: bool) -> Row | None:
    from imgfit_batch.readback import job_status

    summary: outputs.Summary | None
    spec: outputs.JobRecord | None
    summary, wrong = (
        _read_json(outputs.Summary, storage.join(uri, outputs.SUMMARY)) if outputs.SUMMARY in files else (None, None)
    )
    spec, _ = _read_json(outputs.JobRecord, storage.join(uri, outputs.SPEC)) if outputs.SPEC in files else (None, None)
    task = (summary.task if summary else None) or (spec.task if spec else None) or outputs.TaskRecord()
    image = task.image or (summary.image if summary else None) or (spec.image if spec else None) or ""
    row = Row(
        folder=folder,
        image=image,
        stem=_stem(image, folder, output),
        index=task.index,
        label=task.label,
        overrides={str(k): v for k, v in task.overrides.items()},
        files=tuple(name for name in (outputs.FINAL, *(f for _, f in LINKS)) if name in files),
    )
    resolved = spec.spec if spec else None
    model = resolved.get("model") if resolved else None
    row.model = _text(model.get("kind")) if isinstance(model, dict) else None
    doubt = completion.doubt(uri, summary, spec) if summary is not None and summary.completed else None
    if doubt is not None:
        warn(f"{uri}: its summary.json says completed, but {doubt}; showing the task as unknown (not its own record)")
    elif summary is not None and summary.completed:
        row.status = "completed"
        row.steps = row.total_steps = summary.steps
        row.psnr_db, row.exact = summary.psnr_db, summary.exact
        row.ssim, row.loss = summary.ssim, summary.final_loss
        row.train_seconds, row.wall_seconds = summary.train_seconds, summary.wall_seconds
        row.device, row.resumes = summary.device, summary.resumes
        row.model = summary.model or row.model
        row.parameters, row.bits_per_pixel = summary.parameters, summary.bits_per_pixel
    elif wrong:
        warn(f"{wrong}; showing the task as unknown")
    else:
        try:
            s = job_status(uri, warn)
        except storage.LinkOutside:
            raise
        except UnavailableError as exc:
            if summary is None and spec is None:  # gone since the listing
                warn(f"left out {uri}: {exc}")
                return None
            warn(f"{uri}: its state cannot be read ({exc}); showing it as unknown")
            return row
        if s["state"] == "completed" and not recheck:  # it completed since our read: read it again, whole
            return _read_task(output, folder, set(storage.list_names(uri)), warn, recheck=True)
        row.status = s["state"]
        row.steps, row.total_steps, row.loss = s.get("step"), s.get("total_steps"), s.get("loss")
        row.psnr_db, row.resumes = s.get("psnr_db"), s.get("resumes")
        row.train_seconds, row.device = s.get("train_seconds"), s.get("device")  # so far; where it trains
    if outputs.FINAL in files:
        row.thumbnail = _thumbnail(storage.join(uri, outputs.FINAL), warn)
    return row


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _stem(image: str, folder: str, output: str) -> str:
    from imgfit_batch.spec import image_stem

    if image:
        return image_stem(image)
    return (folder or output.rstrip("/")).split("/")[0 if folder else -1]


def _mark_best(rows: list[Row]) -> None:
    """For each image with two or more tasks, its completed run(s) with the highest PSNR
    (an exact one beats any number). A lone run has nothing to be best of."""
    tasks: dict[str, int] = {}
    best: dict[str, float] = {}
    for row in rows:
        image = row.image or row.stem
        tasks[image] = tasks.get(image, 0) + 1
        if (score := _score(row)) is not None:
            best[image] = max(score, best.get(image, -math.inf))
    for row in rows:
        image = row.image or row.stem
        row.best = tasks[image] > 1 and _score(row) is not None and _score(row) == best[image]


def _score(row: Row) -> float | None:
    if row.status != "completed":
        return None
    return math.inf if row.exact else row.psnr_db


def _thumbnail(uri: str, warn) -> str | None:
    """final.png as a small JPEG data: URI, or None (and a warning) when it cannot be had."""
    try:
        with _BIG_READS:
            data = storage.read_bytes(uri, what="final.png", max_bytes=THUMB_MAX_BYTES)
            if len(data) > THUMB_MAX_BYTES:
                raise ValueError(f"larger than {THUMB_MAX_BYTES >> 20} MiB")
            img = _small(data)
        buf = io.BytesIO()
        img.convert("L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB").save(buf, format="JPEG", quality=85)
    except storage.LinkOutside:
        raise
    except UnavailableError:  # gone since the listing
        return None
    except Exception as exc:  # not a PNG, truncated, too large: the row stands without its picture
        warn(f"{uri}: no thumbnail ({str(exc)[:200] or type(exc).__name__})")
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _small(data: bytes):
    """The image in `data` at most THUMB_WIDTH wide. Its size is checked from the header
    before anything is decoded (a decompression bomb costs nothing); draft() lets a JPEG
    decode at a fraction of its size (a PNG decodes whole, then shrinks)."""
    from PIL import Image

    with _PIL_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own limit, below, before decoding
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > THUMB_MAX_PIXELS:
                raise ValueError(f"{w}x{h} is over {THUMB_MAX_PIXELS} pixels")
            img.draft("RGB", (THUMB_WIDTH, THUMB_WIDTH * h // max(w, 1) + 1))
            img.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 4), reducing_gap=2.0)
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    return img


# ---------------------------------------------------------------- results.csv


def _csv_value(value: Any) -> Any:
    """None as empty; numbers as Python writes them (repr: they read back exactly)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def results_csv(rows: list[Row], fields: list[str]) -> str:
    """One row per task. For a completed task the numbers are those of its summary.json
    (loss is final_loss); for one still running, its progress so far."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "folder",
            "image",
            "label",
            *fields,
            "model",
            "parameters",
            "bits_per_pixel",
            "status",
            "steps",
            "total_steps",
            "psnr_db",
            "exact",
            "ssim",
            "loss",
            "train_seconds",
            "wall_seconds",
            "device",
            "resumes",
            "best",
            *(name for name, _ in LINKS),
        ]
    )
    for r in rows:
        links = [_href(r.folder, file) if file in r.files else "" for _, file in LINKS]
        writer.writerow(
            [
                _csv_value(v)
                for v in (
                    r.folder,
                    r.image,
                    r.label,
                    *(r.overrides.get(f) for f in fields),
                    r.model,
                    r.parameters,
                    r.bits_per_pixel,
                    r.status,
                    r.steps,
                    r.total_steps,
                    r.psnr_db,
                    r.exact,
                    r.ssim,
                    r.loss,
                    r.train_seconds,
                    r.wall_seconds,
                    r.device,
                    r.resumes,
                    r.best,
                    *links,
                )
            ]
        )
    return out.getvalue()


# ---------------------------------------------------------------- index.html


def _href(folder: str, name: str) -> str:
    """A link relative to OUTPUT/index.html; every path segment percent-encoded (a label's
    `=` and `,` stay readable), so no name can become a scheme, a query or a fragment."""
    return "/".join(quote(part, safe="=,") for part in [*filter(None, folder.split("/")), name])


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _count(value: Any) -> str:
    """A parameter count as people read one: 535,041 -> 535 k, 2,200,000 -> 2.2 M."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:g}"


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(text: str = "", sort: Any = None, cls: str = "", raw: bool = False) -> str:
    """A td; `sort` (data-v) is what the column sorts on when it is not the text."""
    attrs = f' data-v="{_e(sort)}"' if sort is not None else ""
    attrs += f' class="{cls}"' if cls else ""
    return f"<td{attrs}>{text if raw else _e(text)}</td>"


def _short_name(dotted: str, fields: list[str]) -> str:
    """A swept field's column title: its last part, as in labels, unless another shares it."""
    last = fieldpath.split(dotted)[-1]
    return last if sum(fieldpath.split(f)[-1] == last for f in fields) == 1 else dotted


def _row_html(r: Row, fields: list[str], labels: bool, model: bool) -> str:
    thumb = ""
    if r.thumbnail:
        thumb = f'<img class="thumb" src="{r.thumbnail}" alt="final.png of {_e(r.stem)}">'
        thumb = f'<a href="{_e(_href(r.folder, outputs.FINAL))}">{thumb}</a>' if outputs.FINAL in r.files else thumb
    cells = [
        _cell(thumb, sort=f"{r.stem} {r.label or ''}", cls="pic", raw=True),
        f'<td class="image" title="{_e(r.image)}">{_e(r.stem)}</td>',
    ]
    if labels:
        cells.append(_cell(r.label or "", cls="label"))
    for name in fields:
        value = r.overrides.get(name)
        cells.append(
            _cell("" if name not in r.overrides else _setting(value), sort=value if _is_number(value) else None)
        )
    if model:
        cells.append(_cell(r.model or ""))
    for size, shown in ((r.parameters, _count(r.parameters)), (r.bits_per_pixel, _num(r.bits_per_pixel, 2))):
        cells.append(_cell(shown, sort="" if size is None else size, cls="n"))
    cells.append(_cell(f'<span class="state {r.status}">{_e(r.status)}</span>', sort=r.status, raw=True))
    steps = _e("" if r.steps is None else r.steps)
    if r.status != "completed" and r.total_steps:
        steps += (
            f' <span class="of">/ {_e(r.total_steps)}</span><progress max="{_e(r.total_steps)}" '
            f'value="{_e(r.steps or 0)}"></progress>'
        )
    cells.append(_cell(steps, sort="" if r.steps is None else r.steps, cls="n", raw=True))
    psnr = "exact" if r.exact else _num(r.psnr_db, 2)
    best = ' <span class="star" title="best PSNR of this image">&#9733; best</span>' if r.best else ""
    cells.append(
        _cell(
            _e(psnr) + best,
            sort="Infinity" if r.exact else ("" if r.psnr_db is None else r.psnr_db),
            cls="n psnr",
            raw=True,
        )
    )
    cells.append(_cell(_num(r.ssim, 4), sort="" if r.ssim is None else r.ssim, cls="n"))
    cells.append(_cell("" if r.loss is None else f"{r.loss:.4g}", sort="" if r.loss is None else r.loss, cls="n"))
    for seconds in (r.train_seconds, r.wall_seconds):
        cells.append(_cell(_num(seconds, 1), sort="" if seconds is None else seconds, cls="n"))
    cells.append(_cell(r.device or ""))
    cells.append(_cell("" if r.resumes is None else r.resumes, sort="" if r.resumes is None else r.resumes, cls="n"))
    links = " ".join(
        f'<a class="{name}" href="{_e(_href(r.folder, file))}">{name}</a>' for name, file in LINKS if file in r.files
    )
    cells.append(_cell(links, sort=len(r.files), cls="links", raw=True))
    classes = " ".join(c for c in ("best" if r.best else "", r.status) if c)
    return f'<tr class="{classes}" data-folder="{_e(r.folder)}">' + "".join(cells) + "</tr>"


_COLOURS = ("#3366cc", "#dc3912", "#109618", "#ff9900", "#990099", "#0099c6", "#dd4477", "#66aa00")


def rate_distortion(rows: list[Row]) -> str:
    """PSNR against bits per pixel, one line per model kind (and image, when there are
    several): the picture a fit is read by, as an inline SVG under the table. Only when a
    line has at least two sizes (a study of budgets or widths); a task whose final.png is
    exact has no finite PSNR and is left out (its row says exact)."""
    points = [
        r
        for r in rows
        if r.status == "completed" and not r.exact and _is_number(r.psnr_db) and _is_number(r.bits_per_pixel)
    ]
    points = [r for r in points if r.bits_per_pixel > 0]
    several = len({r.stem for r in points}) > 1
    series: dict[str, list[Row]] = {}
    for r in points:
        series.setdefault(f"{r.stem} · {r.model}" if several else str(r.model), []).append(r)
    if all(len({r.bits_per_pixel for r in members}) < 2 for members in series.values()):
        return ""  # no line with two sizes: nothing to read a rate against
    width, height, left, right, top, bottom = 640, 320, 56, 170, 16, 44
    rates = [math.log10(r.bits_per_pixel) for r in points]
    psnrs = [float(r.psnr_db) for r in points]
    x0, x1 = min(rates), max(rates)
    y0, y1 = math.floor(min(psnrs)) - 1, math.ceil(max(psnrs)) + 1

    def x(rate: float) -> float:
        return left + (math.log10(rate) - x0) / ((x1 - x0) or 1) * (width - left - right)

    def y(psnr: float) -> float:
        return top + (y1 - psnr) / ((y1 - y0) or 1) * (height - top - bottom)

    parts = [
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>',
        f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">bits per pixel (log)</text>',
        f'<text x="14" y="{(top + height - bottom) / 2}" transform="rotate(-90 14 {(top + height - bottom) / 2})" '
        'text-anchor="middle">PSNR dB</text>',
    ]
    for k in range(4):  # four ticks evenly spaced on the log axis, so close rates never overlap
        rate = 10 ** (x0 + (x1 - x0) * k / 3)
        parts.append(f'<text x="{x(rate):.1f}" y="{height - bottom + 16}" text-anchor="middle">{rate:.3g}</text>')
    for psnr in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text x="{left - 6}" y="{y(psnr) + 4:.1f}" text-anchor="end">{psnr:.1f}</text>')
    for i, (name, members) in enumerate(sorted(series.items())):
        parts += _rd_series(name, members, _COLOURS[i % len(_COLOURS)], x, y, (width - right, top + 18 * i + 6))
    return (
        '<h2 class="rd">Rate and distortion</h2>\n'
        f'<svg id="rd" role="img" aria-label="PSNR against bits per pixel" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-size="12">' + "".join(parts) + "</svg>"
    )


def _rd_series(name: str, members: list[Row], colour: str, x: Any, y: Any, legend: tuple[float, float]) -> list[str]:
    """One line of the rate-distortion plot: its points in order of rate, and its legend entry."""
    members = sorted(members, key=lambda r: r.bits_per_pixel)
    line = " ".join(f"{x(r.bits_per_pixel):.1f},{y(float(r.psnr_db)):.1f}" for r in members)
    parts = [f'<polyline class="series" data-series="{_e(name)}" points="{line}" fill="none" stroke="{colour}"/>']
    for r in members:
        parts.append(
            f'<circle cx="{x(r.bits_per_pixel):.1f}" cy="{y(float(r.psnr_db)):.1f}" r="3.5" fill="{colour}" '
            f'data-series="{_e(name)}" data-bpp="{r.bits_per_pixel}" data-psnr="{r.psnr_db}" '
            f'data-folder="{_e(r.folder)}"><title>{_e(name)}: {r.bits_per_pixel:.3g} bpp, '
            f"{float(r.psnr_db):.2f} dB ({_e(_count(r.parameters))} parameters)</title></circle>"
        )
    lx, ly = legend
    parts.append(
        f'<line x1="{lx + 12}" y1="{ly}" x2="{lx + 32}" y2="{ly}" stroke="{colour}" stroke-width="2"/>'
        f'<text x="{lx + 38}" y="{ly + 4}">{_e(name)}</text>'
    )
    return parts


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:20px;margin:0 0 4px}h1 code{font-size:17px;background:#f1f3f7;padding:1px 6px;border-radius:4px}
p.summary{margin:0 0 16px;color:#4a5468}
table{border-collapse:collapse;width:auto}
th,td{padding:5px 8px;border-bottom:1px solid #e4e7ee;text-align:left;vertical-align:middle;white-space:nowrap}
th{position:sticky;top:0;background:#f6f7fa;cursor:pointer;user-select:none;font-weight:600;
  border-bottom:2px solid #cfd5e1}
th:hover{background:#e9edf5}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.label,td.image{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
td.image{font-weight:600}
tr.running td.n,tr.interrupted td.n,tr.unknown td.n{color:#6b7385;font-style:italic}
tbody tr:nth-child(even){background:#fafbfc}
tbody tr.best{background:#fff7dc}
tbody tr:hover{background:#eef3ff}
img.thumb{display:block;width:120px;height:auto;border-radius:3px;box-shadow:0 0 0 1px #d5dae4;image-rendering:auto}
td.pic{width:120px;padding:3px 8px}
.state{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.state.completed{background:#dcf5e3;color:#17652f}.state.running{background:#dde9ff;color:#1e4fb0}
.state.interrupted{background:#ffe9cc;color:#8a4b00}.state.unknown{background:#eceef2;color:#5a6273}
.star{color:#b07800;font-size:12px;font-weight:600}
.of{color:#6b7385}
progress{display:block;width:100%;height:6px;margin-top:3px}
td.links a{margin-right:6px;color:#1e4fb0}
"""

# Sorting: numeric columns (data-type=num) by number, the rest by text (numbers inside
# text in order); empty values last in either direction; a second click reverses.
_SCRIPT = """
(function(){
  function key(row, col){var td=row.cells[col];var v=td.getAttribute('data-v');
    return (v===null?td.textContent:v).trim();}
  function sortBy(th){
    var table=th.closest('table'),body=table.tBodies[0],col=th.cellIndex,num=th.getAttribute('data-type')==='num';
    var dir=th.getAttribute('aria-sort')==='ascending'?-1:1;
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(h){h.removeAttribute('aria-sort');});
    th.setAttribute('aria-sort',dir===1?'ascending':'descending');
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=key(a,col),y=key(b,col);
      if(x===''||y==='')return (x==='')-(y==='');
      if(num){x=Number(x);y=Number(y);return dir*(x<y?-1:x>y?1:0);}
      return dir*x.localeCompare(y,undefined,{numeric:true});
    });
    rows.forEach(function(r){body.appendChild(r);});
  }
  Array.prototype.forEach.call(document.querySelectorAll('thead th'),function(th){
    th.addEventListener('click',function(){sortBy(th);});
  });
})();
"""


def page(output: str, rows: list[Row], fields: list[str], now: float | None = None) -> str:
    counts = {state: sum(r.status == state for r in rows) for state in STATES}
    parts = [f"{counts[s]} {s}" for s in STATES if counts[s] or s != "unknown"]
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    where = redact(output)
    name = where.rstrip("/").rsplit("/", 1)[-1] or where
    labels = any(r.label for r in rows)
    model = not all("model.kind" in r.overrides for r in rows)  # else the kind has its own column already
    columns = [("", "", "text"), ("image", "", "text"), *([("label", "", "text")] if labels else [])]
    columns += [
        (
            _short_name(f, fields),
            f,
            "num" if all(_is_number(r.overrides[f]) for r in rows if f in r.overrides) else "text",
        )
        for f in fields
    ]
    columns += [
        *([("model", "", "text")] if model else []),
        ("parameters", "the model's size: its learned parameters", "num"),
        ("bpp", "bits per pixel: parameters x 32 bits / the image's pixels", "num"),
        ("status", "", "text"),
        ("steps", "", "num"),
        ("PSNR dB", "", "num"),
        ("SSIM", "", "num"),
        ("loss", "", "num"),
        ("train s", "", "num"),
        ("wall s", "", "num"),
        ("device", "", "text"),
        ("resumes", "", "num"),
        ("files", "", "num"),
    ]
    head = "".join(
        f'<th data-type="{kind}" scope="col" title="{_e(tip or title)}">{_e(title)}</th>'
        for title, tip, kind in columns
    )
    body = "\n".join(_row_html(r, fields, labels, model) for r in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>imgfit-batch report: {_e(name)}</title>
<style>{_CSS}</style></head>
<body>
<h1>imgfit-batch report <code>{_e(where)}</code></h1>
<p class="summary">{len(rows)} task{"s" if len(rows) != 1 else ""}: {_e(", ".join(parts))}
&middot; generated {_e(generated)} &middot; click a column to sort</p>
<table id="results"><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
{rate_distortion(rows)}
<script>{_SCRIPT}</script>
</body></html>
"""

"""Whether an output location holds a completed job, proven by the job's own record.

A summary.json saying "completed" is not enough: one copied there, or left by
something else, would make `run` exit 0 for work never done and `report` count it.
A job is complete only when its own record backs the summary:

    its spec.json, one this tool wrote (its result fields and their fingerprint agree)
    and, for `run`, made with the same result fields as the spec being run;
    every file summary.json says was published with it (`files`: name -> bytes)
    is there, at the size recorded. A summary from before `files` was recorded
    needs loss.csv, final.png, model.pt, and video.mp4 when it counts frames.

`run` refuses anything else with one line (NotOurs, exit 3: the output holds files
that every later try finds the same, so retrying cannot help; --restart or another
output can); `status` and `report` show such a task as unknown, saying why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imgfit_batch import outputs, storage
from imgfit_batch.errors import SpecError, UnavailableError
from imgfit_batch.spec import changed_fields, fingerprint

# The files a job publishes beside summary.json and spec.json; summary.json records their sizes.
PUBLISHED = (outputs.VIDEO, outputs.LOSS, outputs.FINAL, outputs.MODEL, outputs.PROGRESS)
_NEEDED_BEFORE_FILES = (outputs.LOSS, outputs.FINAL, outputs.MODEL)  # a summary without `files`


class NotOurs(UnavailableError):
    """A summary.json saying completed that the job's own record at the output does not back."""


def published_files(output: str) -> dict[str, int]:
    """{name: bytes} of the files the job published at `output`, for summary.json's `files`
    (called after they are written, before summary.json)."""
    sizes = {}
    for name in PUBLISHED:
        try:
            sizes[name] = storage.size(storage.join(output, name), what=name)
        except UnavailableError:  # not published by this job (no frames: no video.mp4)
            continue
    return sizes


def _size(uri: str, name: str) -> int | None:
    try:
        return storage.size(uri, what=name)
    except storage.LinkOutside:
        raise
    except UnavailableError:  # not there, or not a file
        return None


def doubt(output: str, summary: outputs.Summary, record: outputs.JobRecord | None) -> str | None:
    """Why `summary` (saying completed) is not backed by the job's own record at `output`,
    or None when it is. `record` is the output's spec.json as read (None: absent or foreign)."""
    if record is None:
        return "there is no spec.json of its own beside it (the record of the run that made it)"
    fields = record.result_fields
    if fields is None or record.fingerprint != _fingerprint(fields):
        return "its spec.json does not hold the result fields it was made with"
    recorded = summary.files
    if recorded is None:
        needed: dict[str, Any] = dict.fromkeys(_NEEDED_BEFORE_FILES)
        if summary.frames is None or summary.frames > 0:
            needed[outputs.VIDEO] = None
    else:
        unknown = sorted(str(name)[:60] for name in recorded if name not in PUBLISHED)
        if unknown:
            return f"its summary.json names files a job does not publish ({', '.join(unknown)})"
        needed = {name: outputs.whole(recorded[name]) for name in PUBLISHED if name in recorded}
        if not needed:
            return "its summary.json names no published file"
    for name, want in needed.items():
        got = _size(storage.join(output, name), name)
        if got is None:
            return f"its {name} is missing"
        if want is not None and got != want:
            return f"its {name} is {got} bytes, and summary.json records {want}"
    return None


def _fingerprint(fields: dict) -> str | None:
    try:
        return fingerprint(fields)
    except (TypeError, ValueError, RecursionError):  # not JSON-encodable as read: not ours
        return None


def _present(output: str) -> str:
    try:
        names = [n for n in storage.list_names(output) if n in outputs.JOB_FILES]
    except UnavailableError:
        return ""
    return f" (there: {', '.join(names)})" if names else ""


def completed(output: str, fields: dict[str, Any], warn: Callable[[str], None] | None = None) -> outputs.Summary | None:
    """For `run`: the summary of this job (result fields `fields`) completed at `output`, or
    None when no summary.json there says completed. Raises SpecError when the completed job
    was made with another spec, NotOurs when its own record does not back the summary."""
    summary: outputs.Summary | None = outputs.read(outputs.Summary, storage.join(output, outputs.SUMMARY), warn)
    if summary is None or not summary.completed:
        return None
    record: outputs.JobRecord | None = outputs.read(outputs.JobRecord, storage.join(output, outputs.SPEC), warn)
    if record is not None and record.result_fields is not None:
        changed = changed_fields(record.result_fields, fields)
        if changed:
            raise SpecError(
                f"{output} holds a completed job made with a different spec (changed: {', '.join(changed)}); "
                "use another output, or --restart to discard it"
            )
    why = doubt(output, summary, record)
    if why is not None:
        raise NotOurs(
            f"{output}: its summary.json says completed, but {why}{_present(output)}; not treating the job as "
            "done (it was copied there, left by something else, or edited): use another output, or --restart "
            "to discard what is there and run the job"
        )
    return summary

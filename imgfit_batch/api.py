"""The Python API: what every command of the CLI does, as functions with typed results.

    import imgfit_batch
    summary = imgfit_batch.run({"image": "photo.jpg", "output": "runs/photo", "train": {"epochs": 5}})
    print(summary.psnr_db)

A spec is a path, `-` (stdin), a store URI (s3://, gs://, az://), a dict (the YAML's
tree) or a `JobSpec`. Errors are imgfit_batch.errors' types, each with the exit code
the CLI gives it (`exc.exit_code`): SpecError (2), UnavailableError (3),
TransientError (69), Interrupted and Busy (75). The CLI (imgfit_batch.cli) is this
module plus parsing, printing and that mapping; signals and exit codes stay the CLI's.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imgfit_batch.errors import SpecError

if TYPE_CHECKING:
    from imgfit_batch.outputs import Summary
    from imgfit_batch.progress import Reporter
    from imgfit_batch.reporting import Row
    from imgfit_batch.spec import JobSpec


def load(spec: str | dict[str, Any] | JobSpec, overrides: Sequence[str] = ()) -> JobSpec:
    """A spec, validated (its sweep with it): from a path, `-`, a store URI, a dict or a JobSpec;
    `overrides` are --set's FIELD=VALUE strings."""
    from imgfit_batch import study
    from imgfit_batch.spec import JobSpec
    from imgfit_batch.specfile import apply_overrides

    if isinstance(spec, JobSpec):
        if not overrides:
            return spec
        spec = spec.model_dump(mode="json", exclude_unset=True)
    if isinstance(spec, dict):
        tree = apply_overrides(copy.deepcopy(spec), list(overrides))
        return study.parse(tree, "spec")
    if isinstance(spec, str):
        return study.load_spec(spec, overrides)
    raise SpecError(f"spec: expected a path, a URI, a dict or a JobSpec, not {type(spec).__name__}")


# ---------------------------------------------------------------- run


def run(
    spec: str | dict[str, Any] | JobSpec,
    *,
    index: int | None = None,
    restart: bool = False,
    progress: Reporter | None = None,
    overrides: Sequence[str] = (),
) -> Summary:
    """Run a job to completion (or resume it, or find it already complete) and return its
    summary (summary.json). `index`: the task of a list or sweep spec (default:
    JOB_COMPLETION_INDEX, then SLURM_ARRAY_TASK_ID); `restart`: discard earlier progress;
    `progress`: where events and progress go (default: a Reporter on the spec's cadence)."""
    from imgfit_batch.job import Job, resolve_task
    from imgfit_batch.progress import Reporter

    job_spec, task = resolve_task(load(spec, overrides), index)
    reporter = progress if progress is not None else Reporter(job_spec.log.every_seconds)
    return Job(job_spec, task, reporter, restart=restart).run()


# ---------------------------------------------------------------- validate, plan


@dataclass(frozen=True)
class Validation:
    """A spec checked and resolved: every default filled in, and what depends on the image."""

    spec: JobSpec  # resolved where the image could be read
    resolved: dict[str, Any]  # as `validate` prints it (credentials redacted)
    note: str  # what could not be resolved without the image, or the recipe's calibration ("" if none)
    tasks: int  # images x sweep combinations
    combinations: int  # of the sweep (1 without one)
    images: int

    def text(self) -> str:
        """What `imgfit-batch validate` prints: the YAML, then its notes as comments."""
        import yaml

        out = yaml.safe_dump(self.resolved, sort_keys=False)
        if self.note:
            out += self.note + "\n"
        if self.spec.sweep:
            out += (
                f"# sweep: {self.images} image(s) x {self.combinations} combination(s) = "
                f"{self.tasks} tasks, all valid; `imgfit-batch plan` lists them\n"
            )
        return out


def validate(spec: str | dict[str, Any] | JobSpec, *, overrides: Sequence[str] = ()) -> Validation:
    """Check a spec and resolve it: values that follow the image's size are filled in when
    the image is a local file; otherwise the note names them."""
    from imgfit_batch import study
    from imgfit_batch.redact import redact_tree
    from imgfit_batch.spec import resolved_dict

    job_spec = load(spec, overrides)
    resolved, note = derived_note(job_spec)
    return Validation(
        spec=resolved,
        resolved=redact_tree(resolved_dict(resolved)),
        note=note,
        tasks=study.num_tasks(job_spec),
        combinations=study.num_combinations(job_spec) if job_spec.sweep else 1,
        images=len(job_spec.images),
    )


def derived_note(spec: JobSpec) -> tuple[JobSpec, str]:
    """For `validate`: the spec with derived values filled in where the image's size is
    known here, and a YAML comment saying which values were (or will be) derived."""
    from imgfit_batch import recipe
    from imgfit_batch.data import image_size

    size = image_size(spec.images[0]) if len(spec.images) == 1 else None
    calibrated = recipe.should_calibrate(spec)
    if size is not None:
        resolved, derived = spec.for_image(*size)
        batch = resolved.train.batch_size  # set: a kind that calibrates derives it
        calibrated = calibrated and batch is not None and bool(recipe.candidate_batches(batch, size[0] * size[1]))
        note = f"# derived from the image ({size[0]}x{size[1]}): " + ", ".join(sorted(derived)) if derived else ""
        return (resolved if derived else spec), _join(note, recipe.validate_note() if calibrated else "")
    from imgfit_batch import sizing

    budget_note = ""
    if sizing.follows_image(spec):  # a budget met at one guessed size says nothing of the real one
        budget_note = "# model.max_parameters: met or refused for each image's size when the job runs"
        spec_for_note = spec.model_copy(update={"model": spec.model.model_copy(update={"max_parameters": None})})
        probe, derived = spec_for_note.for_image(1024, 1024)
    else:
        probe, derived = spec.for_image(1024, 1024)
    note = "# derived from each image's size when the job runs: " + ", ".join(sorted(derived)) if derived else ""
    return spec, _join(note, budget_note, recipe.validate_note() if calibrated else "")


def _join(*lines: str) -> str:
    return "\n".join(line for line in lines if line)


@dataclass(frozen=True)
class PlannedTask:
    index: int
    image: str
    label: str | None
    overrides: dict[str, Any]
    output: str


@dataclass(frozen=True)
class Plan:
    """A spec's tasks (its images x its sweep's combinations), as `run --index i` numbers them."""

    count: int
    output: str  # the spec's (where `report` looks)
    tasks: list[PlannedTask] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """`plan --json`'s object."""
        rows = [dict(t.__dict__) for t in self.tasks]
        return {"count": self.count, "array": f"0-{self.count - 1}", "output": self.output, "tasks": rows}

    def text(self) -> str:
        """`plan`'s table and its array sizes."""
        table = [("INDEX", "IMAGE", "LABEL", "OUTPUT")] + [
            (str(t.index), t.image, t.label or "-", t.output) for t in self.tasks
        ]
        widths = [max(len(row[c]) for row in table) for c in range(3)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3] for row in table]
        lines.append(
            f"{self.count} task{'s' if self.count != 1 else ''}: Kubernetes Indexed Job `completions: {self.count}`, "
            f"Slurm `--array=0-{self.count - 1}`"
        )
        return "\n".join(lines) + "\n"


def plan(spec: str | dict[str, Any] | JobSpec, *, overrides: Sequence[str] = ()) -> Plan:
    """List a spec's tasks; every value is validated, nothing is run or written."""
    from imgfit_batch import study
    from imgfit_batch.redact import redact_tree

    job_spec = load(spec, overrides)
    tasks = [
        PlannedTask(
            **redact_tree(
                {"index": i, "image": t.image, "label": t.label, "overrides": t.overrides} | {"output": t.output}
            )
        )
        for i, t in enumerate(study.tasks(job_spec))
    ]
    return Plan(count=study.num_tasks(job_spec), output=redact_tree(job_spec.output), tasks=tasks)


def schema() -> dict[str, Any]:
    """The spec's JSON Schema."""
    from imgfit_batch.spec import json_schema

    return json_schema()


# ---------------------------------------------------------------- reading a job's output


@dataclass(frozen=True)
class Status:
    """A job's state, read from its output: running / interrupted / completed, and its progress."""

    state: str
    output: str
    step: int | None
    total_steps: int | None
    psnr_db: float | None
    resumes: int | None
    fields: dict[str, Any]  # every field, as `status --json` prints them

    def text(self) -> str:
        from imgfit_batch.readback import format_status

        return format_status(self.fields)


def status(output: str) -> Status:
    """A job's state from its output location (a folder, or an s3:// gs:// az:// prefix)."""
    from imgfit_batch.readback import job_status

    where = location(output, "OUTPUT")
    with reading(where):
        fields = job_status(where)
    return Status(
        state=fields["state"],
        output=fields["output"],
        step=fields.get("step"),
        total_steps=fields.get("total_steps"),
        psnr_db=fields.get("psnr_db"),
        resumes=fields.get("resumes"),
        fields=fields,
    )


@dataclass(frozen=True)
class Rendered:
    path: str
    width: int
    height: int


def render(
    source: str,
    output: str,
    *,
    scale: float | None = None,
    width: int | None = None,
    height: int | None = None,
    device: str = "auto",
) -> Rendered:
    """Render a job's trained image (its output location, or a model.pt) to the PNG `output`,
    at `scale` times the input's resolution or at `width` / `height`."""
    from imgfit_batch.readback import render_to

    if device not in ("auto", "cpu", "cuda"):
        raise SpecError(f"--device: must be auto, cpu or cuda, not {device!r}")
    where = location(source, "OUTPUT_OR_MODEL")
    with reading(where):
        w, h = render_to(where, location(output, "--output", need_key=True), scale, width, height, device)
    return Rendered(output, w, h)


@dataclass(frozen=True)
class Report:
    output: str
    rows: list[Row]  # one a task

    def counts(self) -> dict[str, int]:
        """Tasks by state (completed / running / interrupted / unknown), those present only."""
        from imgfit_batch.reporting import STATES

        return {state: n for state in STATES if (n := sum(r.status == state for r in self.rows))}

    def text(self) -> str:
        counts = ", ".join(f"{n} {state}" for state, n in self.counts().items())
        return f"wrote {self.output.rstrip('/')}/results.csv and index.html: {len(self.rows)} tasks ({counts})\n"


def report(output: str) -> Report:
    """Compare every task under a study's output: write OUTPUT/results.csv and OUTPUT/index.html."""
    from imgfit_batch.reporting import write_report

    where = location(output, "OUTPUT")
    with reading(where):
        rows = write_report(where)
    return Report(where, rows)


@dataclass(frozen=True)
class Comparison:
    path: str
    width: int
    height: int
    frames: int


def compare(
    outputs: Sequence[str],
    output: str,
    *,
    height: int | None = None,
    frames: int | None = None,
    fps: float | None = None,
) -> Comparison:
    """The films of several finished jobs side by side in one video (`output`, an .mp4)."""
    from imgfit_batch.comparing import compare as compare_outputs

    with reading(*outputs):
        w, h, n = compare_outputs(list(outputs), output, height=height, frames=frames, fps=fps)
    return Comparison(output, w, h, n)


def location(uri: str, name: str, need_key: bool = False) -> str:
    """A location argument, checked and canonical as the spec's are; `name` is what errors call it."""
    from imgfit_batch.storage import check_uri

    try:
        return check_uri(uri, need_key)
    except ValueError as exc:
        raise SpecError(f"{name}: {exc}") from None


def reading(*locations: str) -> contextlib.AbstractContextManager[Any]:
    """Whatever reads a job's output reads only what lies inside it: a symlink there that
    resolves outside is not followed (storage.confined; report shows its task as unknown,
    the others refuse with exit 3)."""
    from imgfit_batch import storage

    usable = []
    for uri in locations:
        try:
            usable.append(storage.check_uri(uri))
        except ValueError:  # a malformed location: its caller refuses it in its own words
            continue
    return storage.confined(*usable)

"""Studies: a spec's tasks, its images times the combinations of its `sweep:` values.

This module owns sweeps end to end: it loads a spec (`load_spec`, `parse`), checks the
sweep's shape, validates every combination through the ordinary JobSpec validation,
lists the tasks and formats its own errors. imgfit_batch.spec validates one spec and
never imports it.

    image: [a.png, b.png]
    sweep: {model.kind: [fourier, hashgrid], train.lr: [0.001, 0.01]}

is 2 x 2 x 2 = 8 tasks. Task i trains image i // n_combos with combination
i % n_combos; the image varies slowest (in the list's order), then the sweep's
fields in the order written, the last one fastest (itertools.product's order):

    0 a.png kind=fourier,lr=0.001    4 b.png kind=fourier,lr=0.001
    1 a.png kind=fourier,lr=0.01     ...
    2 a.png kind=hashgrid,lr=0.001
    3 a.png kind=hashgrid,lr=0.01    7 b.png kind=hashgrid,lr=0.01

A swept section (a field that holds fields: model, train, ...) takes a list of
bundles, each a mapping of its fields set together; a bundle counts as one value:

    sweep:
      model: [{kind: fourier, fourier_order: 16}, {kind: hashgrid}]
      train.max_seconds: [10, 30]

is 2 x 2 combinations. A bundle flattens into dotted fields (model.kind,
model.fourier_order; a nested section's fields with further dots), each applied
like a swept leaf's value: merged onto what the spec sets, so the spec's own
section should hold only fields every bundle's kind has. A task's overrides and
label hold the flattened fields in order: kind=fourier,fourier_order=16,max_seconds=10
and kind=hashgrid,max_seconds=10.

A task writes to OUTPUT/<image stem>/<label>/; without a sweep, to OUTPUT (one
image) or OUTPUT/<image stem>/ (a list), as before sweeps existed. Every value
is validated like the field itself when the spec is loaded, before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from imgfit_batch import fieldpath, storage
from imgfit_batch.errors import SpecError
from imgfit_batch.redact import redact, redact_tree
from imgfit_batch.spec import JobSpec, image_stem, resolved_dict
from imgfit_batch.specfile import check_outside_output, explain_error, field_path, load_tree, parse_spec, short_value

MAX_COMBINATIONS = 10_000
MAX_TASKS = 100_000  # the most completions a Kubernetes Indexed Job takes
MAX_LABEL = 120  # characters of a label; longer ones are cut and keep a hash of the whole
NOT_SWEPT = ("image", "output", "sweep")  # they decide what the tasks are
SECTION_EXAMPLES = {
    "model": "model.kind",
    "train": "train.lr",
    "video": "video.every_n_steps",
    "checkpoint": "checkpoint.every_n_steps",
    "storage": "storage.region",
    "log": "log.every_seconds",
    "input": "input.max_pixels",
}
INDEX_VARIABLES = ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID")


@dataclass
class Task:
    """One task of a spec: its image, where its outputs go, and its place in the plan."""

    image: str
    output: str
    index: int | None  # None: the spec is one image without a sweep (no array)
    count: int = 1
    label: str | None = None  # None without a sweep
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted field -> value, as written (bundles flattened)

    def record(self) -> dict | None:
        """The "task" object of spec.json and summary.json (None for a lone image)."""
        if self.index is None:
            return None
        return redact_tree(
            {
                "index": self.index,
                "count": self.count,
                "image": self.image,
                "label": self.label,
                "overrides": dict(self.overrides),
            }
        )


# ---------------------------------------------------------------- the sweep's shape


@lru_cache(maxsize=1024)
def field_kind(dotted: str) -> str | None:
    """ "leaf" for a field that holds a value, "section" for one that holds fields,
    None for no field. Model fields count when any model kind has them."""
    found = fieldpath.fields_at([JobSpec], dotted)
    if not found:
        return None
    return "section" if any(fieldpath.models_in(f.annotation) for f in found) else "leaf"


# The sweep field's own type, spelled out: mypy (with pydantic >= 2.14) cannot read a TypeAdapter of an
# annotation fetched at run time. tests/test_sweep.py keeps the two equal.
SWEEP_TYPE = dict[str, list[Any]] | None
_SWEEP_TYPE: TypeAdapter[dict[str, list[Any]] | None] = TypeAdapter(SWEEP_TYPE)


def load_spec(source: str, overrides: Sequence[str] = ()) -> JobSpec:
    """The spec at `source` (a path, `-` or a store URI) with the --set `overrides`, validated,
    its sweep with it."""
    tree, name = load_tree(source, overrides)
    spec = parse(tree, name)
    check_outside_output(spec, name if source != "-" else "-")
    return spec


def parse(tree: Any, source: str = "spec") -> JobSpec:
    """A spec tree validated as a JobSpec, and its sweep: the shape first (fields that
    exist, lists without repeats, the limits), then every combination's values as the
    fields they set."""
    if not isinstance(tree, dict) or tree.get("sweep") is None:
        return parse_spec(tree, source)
    sweep = tree["sweep"]
    spec = parse_spec({k: v for k, v in tree.items() if k != "sweep"}, source)
    try:
        check_shape(sweep, spec.image)
    except ValueError as exc:
        raise SpecError(f"{source}: sweep: {exc}") from None
    # the sweep's own type, validated alone: the rest of the spec (an 80k-image list) is validated once
    spec = spec.model_copy(update={"sweep": _SWEEP_TYPE.validate_python(sweep)})
    check(spec, source)
    return spec


def _check_swept_field(dotted: Any, values: Any) -> None:
    """One field of a sweep: a known leaf (or section, with mappings) and a non-empty list."""
    if not isinstance(dotted, str):
        raise ValueError(f"{short_value(dotted)}: expected a dotted field name, e.g. train.lr")
    name = _short_text(dotted)
    top = fieldpath.split(dotted)[0]
    if top in NOT_SWEPT:
        raise ValueError(
            f"{name}: cannot be swept (image and output decide the tasks themselves; list several images under image:)"
        )
    kind = field_kind(dotted)
    if kind is None:
        raise ValueError(f"{name}: unknown field (check the spelling; `imgfit-batch schema` lists the fields)")
    if kind == "section":
        if not isinstance(values, list) or not values or not all(isinstance(v, dict) for v in values):
            example = fieldpath.split(SECTION_EXAMPLES.get(dotted, f"{dotted}.<field>"))[-1]
            raise ValueError(
                f"{name}: a section; expected a non-empty list of mappings of its fields, each set "
                f"together, e.g. {name}: [{{{example}: a}}, {{{example}: b}}] (got {short_value(values)})"
            )
        for bundle in values:
            flatten_bundle(dotted, bundle)
    if not isinstance(values, list) or not values:
        raise ValueError(
            f"{name}: expected a non-empty list of values, e.g. {name}: [a, b] (got {short_value(values)})"
        )


def check_shape(sweep: Any, images: Any) -> Any:
    """The `sweep:` field's checks that need no validation of values: known leaf
    fields, non-empty lists without repeats, and the limits. Raises ValueError."""
    if sweep is None:
        return None
    if not isinstance(sweep, dict):
        raise ValueError("expected a mapping of dotted fields to lists of values, e.g. {train.lr: [0.001, 0.01]}")
    if not sweep:
        raise ValueError("is empty; leave it out, or list a field and its values, e.g. {train.lr: [0.001, 0.01]}")
    for dotted, values in sweep.items():
        _check_swept_field(dotted, values)
    for dotted in sweep:  # a field inside a swept section would be set twice
        outer = next((f for f in sweep if f != dotted and fieldpath.within(dotted, f)), None)
        if outer is not None:
            raise ValueError(
                f"{_short_text(dotted)}: inside the swept section {_short_text(outer)}; "
                f"set it in {_short_text(outer)}'s mappings instead"
            )
    num_combos = math.prod(len(v) for v in sweep.values())
    if num_combos > MAX_COMBINATIONS:
        raise ValueError(f"{num_combos} combinations; at most {MAX_COMBINATIONS} (sweep fewer values)")
    num_images = 1 if isinstance(images, str) else len(images or [])
    if num_images * num_combos > MAX_TASKS:
        raise ValueError(
            f"{num_images} images x {num_combos} combinations = {num_images * num_combos} tasks; at most "
            f"{MAX_TASKS} (the most a Kubernetes Indexed Job runs): split the images over several specs"
        )
    for dotted, values in sweep.items():
        seen: dict[Any, Any] = {}
        for value in values:
            key = _frozen(value)
            if key in seen:
                shown = [
                    _short_text(bundle_text(v)) if isinstance(v, dict) else short_value(v) for v in (seen[key], value)
                ]
                raise ValueError(
                    f"{_short_text(dotted)}: {shown[1]} is listed twice "
                    f"({shown[0]} and {shown[1]} are equal); list each value once"
                )
            seen[key] = value
    return sweep


def flatten_bundle(section: str, bundle: dict) -> dict[str, Any]:
    """A swept section's mapping as dotted fields in the order written: {kind: fourier,
    hidden_size: 8} under model -> {model.kind: fourier, model.hidden_size: 8}; a nested
    section's mapping flattens further (keys are plain names, so no field is set twice).
    Raises ValueError naming the bundle and the field."""
    flat: dict[str, Any] = {}

    def refuse(why: str) -> ValueError:
        return ValueError(f"{_short_text(section)} = {_short_text(bundle_text(bundle))}: {why}")

    def walk(prefix: str, mapping: dict) -> None:
        if not mapping:
            example = fieldpath.split(SECTION_EXAMPLES.get(prefix, f"{prefix}.<field>"))[-1]
            raise refuse(f"{_short_text(prefix)}: an empty mapping; list the fields it sets, e.g. {{{example}: ...}}")
        for key, value in mapping.items():
            if not isinstance(key, str) or not key or "." in key:
                raise refuse(
                    f"{short_value(key)}: expected a field's name (a nested section's fields as a mapping of them)"
                )
            dotted = fieldpath.join(prefix, key)
            kind = field_kind(dotted)
            if kind is None:
                raise refuse(
                    f"{_short_text(dotted)}: unknown field (check the spelling; `imgfit-batch schema` lists the fields)"
                )
            if kind == "section":
                if not isinstance(value, dict):
                    raise refuse(f"{_short_text(dotted)}: a section; expected a mapping of its fields")
                walk(dotted, value)
                continue
            flat[dotted] = value

    walk(section, bundle)
    return flat


def flatten(combo: dict[str, Any]) -> dict[str, Any]:
    """A combination ({swept field: value}) as dotted fields -> values: a swept
    section's bundle becomes its fields (flatten_bundle), a leaf stays as it is."""
    flat: dict[str, Any] = {}
    for dotted, value in combo.items():
        if isinstance(value, dict) and field_kind(dotted) == "section":
            flat.update(flatten_bundle(dotted, value))
        else:
            flat[dotted] = value
    return flat


def bundle_text(value: Any) -> str:
    """A bundle as one line, the way it is written: {kind: fourier, hidden_size: -1}."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {bundle_text(v)}" for k, v in value.items()) + "}"
    return format_value(value)


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a value, equal where the values are equal (1 == 1.0)."""
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_frozen(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _frozen(v)) for k, v in value.items())))
    try:
        hash(value)
        return value
    except TypeError:
        return ("repr", repr(value))


# ---------------------------------------------------------------- labels


def format_value(value: Any) -> str:
    """A value as a label shows it: strings as written, true/false, null, numbers
    plainly (floats in their shortest form, exponents without `+`: 1e-05, 1e20),
    a list's items joined by `-`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value).replace("e+", "e")
    if isinstance(value, (list, tuple)):
        return "-".join(format_value(v) for v in value)
    return json.dumps(value, sort_keys=True, default=str)


_UNSAFE_IN_LABEL = re.compile(r"[^A-Za-z0-9._=,-]")  # what is a plain folder name on every disk and on S3


def safe_label(label: str) -> str:
    """`label` as a folder name: characters outside [A-Za-z0-9._=,-] (separators,
    spaces, control characters, `+`, ...) become `_`, a leading `.` becomes `_`, and
    a label over MAX_LABEL characters is cut and ends in 8 hex digits of the whole
    label's SHA-256 (so cut labels stay apart)."""
    safe = _UNSAFE_IN_LABEL.sub("_", label)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if len(safe) > MAX_LABEL:
        digest = hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = f"{safe[: MAX_LABEL - 9]}-{digest}"
    return safe


def label_names(fields: list[str]) -> list[str]:
    """Each swept field's name in labels: its last component, or the whole dotted
    path where two swept fields share the last component."""
    last = [fieldpath.split(f)[-1] for f in fields]
    return [f if last.count(n) > 1 else n for f, n in zip(fields, last)]


def swept_fields(sweep: dict[str, list]) -> list[str]:
    """Every dotted field the sweep sets, in first-seen order: its leaves, and each
    field any bundle of a swept section sets."""
    fields: dict[str, None] = {}
    for dotted, values in sweep.items():
        if field_kind(dotted) == "section":
            for bundle in values:
                fields.update(dict.fromkeys(flatten_bundle(dotted, bundle)))
        else:
            fields[dotted] = None
    return list(fields)


def label_namer(sweep: dict[str, list]) -> dict[str, str]:
    """Each dotted field the sweep sets -> its name in labels (label_names over them all)."""
    fields = swept_fields(sweep)
    return dict(zip(fields, label_names(fields)))


def raw_label(names: dict[str, str], overrides: dict[str, Any]) -> str:
    """A combination's flattened fields as name=value pairs, in order."""
    return ",".join(f"{names[f]}={format_value(redact_tree(value))}" for f, value in overrides.items())


# ---------------------------------------------------------------- expansion


def num_combinations(spec: JobSpec) -> int:
    return math.prod(len(v) for v in spec.sweep.values()) if spec.sweep else 1


def num_tasks(spec: JobSpec) -> int:
    return len(spec.images) * num_combinations(spec)


def pick(sweep: dict[str, list], k: int) -> dict[str, Any]:
    """The k-th combination in itertools.product order (the last field fastest), as
    {swept field: its value} (a swept section's value is its bundle)."""
    picked = {}
    for dotted in reversed(list(sweep)):
        values = sweep[dotted]
        k, digit = divmod(k, len(values))
        picked[dotted] = values[digit]
    return {dotted: picked[dotted] for dotted in sweep}


def combination(sweep: dict[str, list], k: int) -> dict[str, Any]:
    """The k-th combination's overrides: dotted fields -> values, bundles flattened."""
    return flatten(pick(sweep, k))


def combinations(sweep: dict[str, list]) -> Iterator[dict[str, Any]]:
    for k in range(math.prod(len(v) for v in sweep.values())):
        yield combination(sweep, k)


def task(spec: JobSpec, i: int) -> Task:
    """Task i of the spec (0 <= i < num_tasks(spec))."""
    images, n = spec.images, num_combinations(spec)
    image = images[i // n]
    if not spec.sweep:
        if isinstance(spec.image, str):
            return Task(image, spec.output, None)
        return Task(image, storage.join(spec.output, image_stem(image)), i, len(images))
    overrides = combination(spec.sweep, i % n)
    label = safe_label(raw_label(label_namer(spec.sweep), overrides))
    return Task(image, storage.join(spec.output, image_stem(image), label), i, len(images) * n, label, overrides)


def tasks(spec: JobSpec) -> Iterator[Task]:
    """Every task in order; task(spec, i) for each i, with each image's folder and
    each combination's label worked out once."""
    if isinstance(spec.image, str) and not spec.sweep:
        yield task(spec, 0)
        return
    images = spec.images
    if not spec.sweep:
        for i, image in enumerate(images):
            yield Task(image, storage.join(spec.output, image_stem(image)), i, len(images))
        return
    combos = list(combinations(spec.sweep))
    names = label_namer(spec.sweep)
    labels = [safe_label(raw_label(names, combo)) for combo in combos]
    count = len(images) * len(combos)
    for i, image in enumerate(images):
        folder = storage.join(spec.output, image_stem(image))
        for k, (combo, label) in enumerate(zip(combos, labels)):
            yield Task(image, storage.join(folder, label), i * len(combos) + k, count, label, combo)


def _with_overrides(tree: dict, overrides: dict[str, Any]) -> dict:
    """A copy of `tree` with the dotted fields set (the dicts on their way copied, the rest shared)."""
    for dotted, value in overrides.items():
        tree = fieldpath.updated(tree, dotted, value)
    return tree


def _base_tree(spec: JobSpec) -> dict:
    """The spec as written (after --set): only what was set, so a swept model.kind
    brings its own defaults and not those the base's kind resolved."""
    tree = spec.model_dump(exclude_unset=True)
    tree["sweep"] = None
    return tree


def task_spec(spec: JobSpec, t: Task) -> JobSpec:
    """The spec task `t` runs: with a sweep, its values applied, its image and output
    in place of the lists, and no sweep; without one, the spec itself (as before)."""
    if not spec.sweep:
        return spec
    tree = _with_overrides(_base_tree(spec), t.overrides)
    tree.update(image=t.image, output=t.output)
    return parse_spec(tree, f"sweep: {t.label}")


def resolve_task(spec: JobSpec, index: int | None) -> tuple[JobSpec, Task]:
    """The task this process runs, and its spec: task `index`, else the one named by
    JOB_COMPLETION_INDEX, else SLURM_ARRAY_TASK_ID. A spec of one task needs none."""
    count = num_tasks(spec)
    where = "--index"
    if count == 1:  # one image without a sweep, as ever: any array index runs it
        if index not in (None, 0):
            raise SpecError(f"--index {index}: out of range; the spec has 1 task (only index 0 exists)")
        index = 0
    if index is None:
        for var in INDEX_VARIABLES:
            if os.environ.get(var, "").strip():
                try:
                    index = int(os.environ[var])
                except ValueError:
                    raise SpecError(f"{var}={short_value(os.environ[var])}: not an integer index") from None
                where = var
                break
    if index is None:
        raise SpecError(
            f"the spec has {_tasks_text(spec)}; pick one with --index N (or JOB_COMPLETION_INDEX / SLURM_ARRAY_TASK_ID)"
        )
    if not 0 <= index < count:
        raise SpecError(f"{where}: index {index} is out of range; the spec has {_tasks_text(spec)} (0..{count - 1})")
    t = task(spec, index)
    return task_spec(spec, t), t


def _tasks_text(spec: JobSpec) -> str:
    images = len(spec.images)
    if not spec.sweep:
        return f"{images} images" if isinstance(spec.image, list) and images != 1 else f"{images} image"
    n = num_combinations(spec)
    return (
        f"{num_tasks(spec)} tasks ({images} image{'s' if images != 1 else ''} x {n} combination{'s' if n != 1 else ''})"
    )


# ---------------------------------------------------------------- validation


def check(spec: JobSpec, source: str) -> None:
    """Every combination of the sweep validates like a spec, and gives a task a
    folder of its own. Raises SpecError naming the field and value, or the
    combination. The combinations are checked with the first image only: the images
    were checked already, and a long list times many combinations stays fast."""
    if not spec.sweep:
        return
    sweep = spec.sweep
    base = _base_tree(spec)
    base["image"] = spec.images[0]
    names = label_namer(sweep)
    # casefolded safe label -> (raw label, overrides): case-insensitive disks, and bundles
    # whose different fields spell the same label
    labels: dict[str, tuple[str, dict]] = {}
    results: dict[str, str] = {}  # resolved spec -> label: two combinations that run the same
    for k in range(num_combinations(spec)):
        picked = pick(sweep, k)
        combo = flatten(picked)
        raw = raw_label(names, combo)
        label = safe_label(raw)
        other, other_combo = labels.setdefault(label.casefold(), (raw, combo))
        if other_combo != combo:
            if other != raw:
                raise SpecError(
                    f"{source}: sweep: the combinations {_short_text(other)} and {_short_text(raw)} would "
                    f"share the folder {_short_text(label)}; make the values differ in letters or digits"
                )
            raise SpecError(f"{source}: sweep: {_same_label_why(other_combo, combo, label, base)}")
        try:
            resolved = JobSpec.model_validate(_with_overrides(base, combo))
        except ValidationError as exc:
            raise SpecError(f"{source}: sweep: {_why_invalid(exc.errors()[0], picked, combo, label, base)}") from None
        key = json.dumps(resolved_dict(resolved), sort_keys=True, default=str)
        same = results.setdefault(key, label)
        if same != label:
            raise SpecError(
                f"{source}: sweep: the combinations {_short_text(same)} and {_short_text(label)} resolve to "
                "the same spec (e.g. a default listed beside its value); list each setting once"
            )


def _same_label_why(one: dict[str, Any], two: dict[str, Any], label: str, base: dict) -> str:
    """Why two different combinations write the same label: a value written alike but
    typed differently (1 and "1", which usually validate to the same value), or a
    value with `,` or `=` that reads as other fields."""
    folder = _short_text(label)
    alike = [f for f in two if f in one and one[f] != two[f] and format_value(one[f]) == format_value(two[f])]
    if not alike:
        return (
            f"the combinations {_short_text(bundle_text(one))} and {_short_text(bundle_text(two))} would share the "
            f"folder {folder}; a value with `,` or `=` reads as other fields; change it"
        )
    field = alike[0]
    a, b = (
        _short_text(json.dumps(v, default=str) if isinstance(v, str) else format_value(v))
        for v in (one[field], two[field])
    )
    try:
        same = resolved_dict(JobSpec.model_validate(_with_overrides(base, one))) == resolved_dict(
            JobSpec.model_validate(_with_overrides(base, two))
        )
    except ValidationError:
        same = False
    if same:
        return f"{_short_text(field)}: {a} and {b} validate to the same value (the same task twice); list it once"
    return (
        f"{_short_text(field)}: {a} and {b} are written alike, so both tasks would write the folder {folder}; "
        "make the values differ in letters or digits"
    )


def _why_invalid(err: ErrorDetails, picked: dict[str, Any], combo: dict[str, Any], label: str, base: dict) -> str:
    """What is wrong with a combination: one swept value, when the error lies in
    it (`train.lr = -1: must be > 0`; in a bundle, `model = {kind: fourier,
    hidden_size: -1}: model.hidden_size: must be >= 1`), else the combination as a whole."""
    path, why = field_path(err["loc"]), explain_error(err)
    if err["type"].startswith("union_tag"):  # a bad model.kind is reported at `model`
        path = f"{path}.kind"
    culprit = next((f for f in combo if fieldpath.within(path, f)), None)
    if culprit is not None and err["type"] != "extra_forbidden":
        owner = next(f for f in picked if fieldpath.within(culprit, f))
        if owner == culprit:
            return f"{culprit} = {_short_text(format_value(combo[culprit]))}: {why}"
        return f"{owner} = {_short_text(bundle_text(picked[owner]))}: {_short_text(culprit)}: {why}"
    if err["type"] == "extra_forbidden" and path.startswith("model."):  # a field of another kind
        kind = _with_overrides(base, combo).get("model", {}).get("kind", "fourier")
        why = f"not a field of model kind {_short_text(format_value(kind))}"
        if "model" in picked and culprit is None:  # the spec's own model section, under every bundle
            why += "; the spec's model section is merged into every model bundle: set it in the bundles that use it"
    where = "" if path == "spec" else f"{path}: "
    return f"the combination {_short_text(label)}: {where}{why}"


def _short_text(text: str, limit: int = 80) -> str:
    text = redact(str(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."

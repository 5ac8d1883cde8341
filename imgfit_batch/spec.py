"""The job spec: one pydantic tree, each component owning its own section.

Loading accepts a path, `-` (stdin) or a store URI (s3://, gs://, az://), applies `--set a.b=v`
overrides to the same tree, and resolves per-model-kind training defaults, so
what `validate` prints is exactly what `run` uses.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails

from imgfit_batch import fieldpath
from imgfit_batch.errors import SpecError
from imgfit_batch.models import KINDS, FourierConfig, ModelConfig
from imgfit_batch.redact import redact

# What a kind's train_defaults may leave out.
GENERIC_TRAIN_DEFAULTS = {"lr_schedule": "step", "ema_decay": 0.0}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainSpec(_Section):
    color: Literal["gray", "rgb"] = Field(
        default="gray", description="gray: one output (the seed); rgb: three outputs."
    )
    epochs: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Passes over all pixels. Unset: the model kind's default (20 for the seed's kinds), "
        "or unlimited when max_seconds is set.",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=1 << 26,
        description="Pixels per step. Unset: the model kind's default (8000 for the seed's kinds; hashgrid's follows "
        "the image, and under max_seconds without epochs a calibration on the job's device, imgfit_batch/recipe.py).",
    )
    lr: float | None = Field(
        default=None,
        gt=0,
        le=10,
        description="Adam learning rate. Unset: the model kind's default (0.001 for the seed's kinds).",
    )
    lr_schedule: Literal["step", "exponential", "cosine"] | None = Field(
        default=None,
        description="step: StepLR, the rate times lr_gamma every lr_step_epochs epochs (the seed's); exponential or "
        "cosine: from lr down to lr * lr_final over the run's planned steps (planned from epochs, or from the measured "
        "speed when only max_seconds is set). Unset: the model kind's default (step for the seed's kinds).",
    )
    lr_step_epochs: int | None = Field(
        default=None,
        ge=1,
        description="lr_schedule step: period in epochs. Unset: the model kind's default (3 for the seed's kinds).",
    )
    lr_gamma: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="lr_schedule step: factor per period. Unset: the model kind's default (0.5 for the seed's kinds).",
    )
    lr_final: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="lr_schedule exponential/cosine: the last step's rate as a fraction of lr. Unset: the model "
        "kind's default.",
    )
    ema_decay: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Frames, final.png and model.pt come from an exponential moving average of the "
        "weights with this decay (0: the raw weights, as the seed). Unset: the model kind's default (0 for the "
        "seed's kinds).",
    )
    grad_clip: float | None = Field(
        default=None,
        ge=0,
        description="Gradient-norm clip; 0 disables. Unset: the model kind's default (0.01 for the seed's kinds).",
    )
    adam_eps: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Adam's epsilon. Unset: the model kind's default (PyTorch's 1e-8 for the seed's kinds; "
        "1e-15 for hashgrid, whose table gradients are tiny).",
    )
    adam_betas: tuple[float, float] | None = Field(
        default=None,
        description="Adam's (beta1, beta2). Unset: the model kind's default (PyTorch's (0.9, 0.999) for the "
        "seed's kinds).",
    )
    seed: int = Field(
        default=0, ge=0, le=2**63 - 1, description="Seeds initialisation and the per-epoch pixel permutations."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA when present, else the CPU. cuda without a GPU is exit 3."
    )
    max_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Wall-clock budget for training (summed over resumes); stops cleanly and writes all outputs.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="Training arithmetic. fp32: IEEE fp32 everywhere (on CUDA no TF32 either). bf16: the MLP "
        "kinds' hidden matmuls autocast to bfloat16 on any device (slow where bf16 is only emulated). auto: bf16 for "
        "fourier and skipconn where bf16 is native (CUDA compute capability 8.0+, CPUs with AVX512-BF16 or AMX), "
        "else fp32; on CUDA, fp32 matmuls may use TF32 unless deterministic. In every mode the raw coordinates, "
        "the loss, the metrics and final.png stay IEEE fp32; hashgrid and siren always compute in fp32.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="CPU threads for torch (unset: torch's default, one per core). "
        "On a CPU shared with other work, fewer threads than cores is often faster.",
    )
    deterministic: bool = Field(
        default=False,
        description="On CUDA, use deterministic algorithms so a resumed run is bit-identical (slower). The CPU "
        "is always deterministic.",
    )

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, v):
        if v is not None and not all(0 <= b < 1 for b in v):
            raise ValueError("both betas must be in [0, 1)")
        return v


class VideoSpec(_Section):
    every_n_steps: int | None = Field(
        default=None,
        ge=1,
        description="Render a frame after every N-th training step. Unset: 2 (the seed's) where a frame "
        "costs less than a step; for hashgrid, derived so frames cost a fraction of training (see docs/models.md).",
    )
    fps: int = Field(default=30, ge=1, le=240, description="Frames per second of video.mp4.")
    max_side: int = Field(
        default=1024,
        ge=16,
        le=16384,
        description="Frames larger than this on their longer side are rendered smaller (see video.filter).",
    )
    filter: Literal["box", "point"] = Field(
        default="box",
        description="How a frame smaller than the input is made. box: each frame pixel is the field averaged "
        "over the input pixels it covers (exact for hashgrid's sum and linear decoders; other kinds average up to "
        "4 x 4 samples a pixel, so such frames cost up to 16 forward passes a pixel). point: the field sampled once "
        "a pixel (cheaper; the film of a detailed image aliases). Frames at the input's size are the same either way.",
    )
    crf: int = Field(
        default=18, ge=0, le=51, description="H.264 constant rate factor (lower is better quality, bigger file)."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="Arithmetic for rendering frames. auto: bf16 where the device does it natively "
        "(CUDA, CPUs with AVX512-BF16/AMX), else fp32. final.png is always rendered in fp32.",
    )
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = Field(
        default="veryfast", description="x264 preset: how much CPU the encoder may spend per frame."
    )


class CheckpointSpec(_Section):
    every_n_steps: int | None = Field(
        default=500, ge=1, description="Checkpoint after every N-th step (null: by time only)."
    )
    every_seconds: float | None = Field(
        default=300,
        gt=0,
        description="Checkpoint when this many seconds passed since the last one (null: by steps only).",
    )
    keep: int = Field(
        default=2,
        ge=2,
        le=1000,
        description="Complete checkpoints kept; older ones are deleted only after a newer one is complete.",
    )
    lease_wait_seconds: float = Field(
        default=90,
        ge=0,
        description="How long a run waits for another live run that holds the same output "
        "(e.g. a pod still terminating) before giving up with exit 75.",
    )
    stop_grace_seconds: float = Field(
        default=90,
        gt=0,
        description="After a stop signal, the longest the job takes to save a checkpoint and exit; past it, it "
        "exits 69 without one (the previous checkpoint stands). Keep it under the scheduler's grace period "
        "(terminationGracePeriodSeconds, Slurm's --signal=USR1@<seconds>). IMGFIT_STOP_GRACE_SECONDS overrides it.",
    )


class StorageSpec(_Section):
    endpoint_url: str | None = Field(
        default=None, description="S3 endpoint for MinIO/Ceph/R2-style stores. Unset: AWS_ENDPOINT_URL or AWS."
    )
    region: str | None = Field(default=None, description="S3 region. Unset: boto3's usual chain (AWS_REGION, profile).")
    retry_seconds: float = Field(
        default=60,
        ge=0,
        le=86_400,
        description="How long a store request (S3, GCS, Azure) that fails transiently (throttling, 5xx, a dropped or "
        "timed-out connection) is retried, with backoff, before the job gives up with exit 69 (run again later). "
        "The environment variable IMGFIT_S3_RETRY_SECONDS overrides it.",
    )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, v):
        if v is not None and not v.lower().startswith(("http://", "https://")):
            raise ValueError(f"{redact(v)}: expected http://host[:port] or https://host[:port]")
        return v


class LogSpec(_Section):
    every_seconds: float = Field(
        default=10,
        gt=0,
        description="JSON progress line interval when stdout is not a terminal; also how often loss.csv is published.",
    )
    tensorboard: bool = Field(
        default=True,
        description="Write TensorBoard event files to OUTPUT/tensorboard/ (every step's loss, "
        "lr, PSNR and SSIM, and a few frames), published at every checkpoint and at the end.",
    )


class InputSpec(_Section):
    max_pixels: int | None = Field(
        default=None,
        ge=1,
        description="Refuse images with more pixels than this (a decompression-bomb guard), from the "
        "header, before decoding. Unset: what this node holds -- the image must fit the host's memory (and the GPU's "
        "when training on one) at the bytes a pixel a job needs (imgfit_batch/memory.py), at most 2^31 - 1 pixels.",
    )
    max_bytes: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Refuse image files larger than this, before reading them (stat / HEAD). Unset: 16 bytes a pixel of "
            "max_pixels "
            "plus 16 MiB of metadata, and the same of the image's own pixels (from its header), so junk after an "
            "image is refused."
        ),
    )


class JobSpec(_Section):
    image: str | list[str] = Field(
        description="Input image: path, file://, s3://bucket/key, gs://bucket/key or az://container/key; or a "
        "list of them (one per array task)."
    )
    output: str = Field(
        description="Output location: folder, file://, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix."
    )
    model: ModelConfig = Field(
        default_factory=FourierConfig,
        description="The network; `kind` picks it (default: the seed's fourier).",
    )
    # validate_default: the kind's defaults are filled in (below) when the section is left out too
    train: TrainSpec = Field(default_factory=TrainSpec, validate_default=True)
    video: VideoSpec = Field(default_factory=VideoSpec, validate_default=True)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    log: LogSpec = Field(default_factory=LogSpec)
    input: InputSpec = Field(default_factory=InputSpec)
    # its shape and every combination are checked by imgfit_batch.study, which loads specs with a sweep
    sweep: dict[str, list[Any]] | None = Field(
        default=None,
        description="Run every combination of these values: a dotted field (e.g. model.kind, train.lr) -> a "
        "non-empty list of values, each validated like the field itself. Tasks = images x the Cartesian product of the "
        "lists: the image varies slowest, then the fields in the order written, the last fastest; task i writes to "
        "OUTPUT/<image stem>/<label>/, the label being the values as name=value pairs, e.g. kind=hashgrid,lr=0.01 "
        "(the whole dotted path where two fields share a name). A swept section (model, train, ...) takes a list of "
        "mappings of its fields, each set together as one value, e.g. model: [{kind: fourier, fourier_order: 16}, "
        "{kind: hashgrid}]; a mapping is merged onto the spec's own section (so keep there only fields every kind "
        "swept has) and its fields appear in the label and the task's overrides one by one, e.g. "
        "kind=fourier,fourier_order=16. A swept field wins over --set for its tasks. "
        "`imgfit-batch plan` lists the tasks and the array size. At most 10000 combinations and 100000 tasks.",
    )

    @field_validator("image")
    @classmethod
    def _images_nonempty(cls, v):
        from imgfit_batch import storage

        images = [v] if isinstance(v, str) else v
        if not images or any(not str(i).strip() for i in images):
            raise ValueError("must name at least one image")
        images = [storage.check_uri(i, need_key=True) for i in images]
        if isinstance(v, list):
            stems = Counter(image_stem(i) for i in images)  # not list.count: quadratic in a long list
            dupes = sorted(s for s, n in stems.items() if n > 1)
            if dupes:
                raise ValueError(f"two images share the stem {dupes[0]!r}; their outputs would collide")
            return images
        return images[0]

    @field_validator("model", mode="before")
    @classmethod
    def _default_kind(cls, v):
        if isinstance(v, dict) and "kind" not in v:
            return {"kind": "fourier", **v}
        return v

    @field_validator("output")
    @classmethod
    def _output_contains_no_input(cls, v, info: ValidationInfo):
        from imgfit_batch import storage

        if not v.strip():
            raise ValueError("must not be empty")
        v = storage.check_uri(v)
        image = info.data.get("image")  # absent when the image failed validation
        for i in [image] if isinstance(image, str) else image or []:
            if storage.contains(v, i):
                raise ValueError(
                    f"{v} contains the input image {i}; the job writes there and could overwrite it: "
                    "keep the input outside the output location"
                )
        return v

    @field_validator("train")
    @classmethod
    def _kind_train_defaults(cls, train: TrainSpec, info: ValidationInfo) -> TrainSpec:
        """The model kind's training defaults where `train` leaves them unset (epochs stays unset under a time
        budget alone). `model` is validated first: when it failed, its error is the one reported."""
        model = info.data.get("model")
        if model is None:
            return train
        budget_only = train.max_seconds is not None and train.epochs is None
        defaults = {**GENERIC_TRAIN_DEFAULTS, **type(model).train_defaults}
        unset = {k: v for k, v in defaults.items() if getattr(train, k) is None and not (k == "epochs" and budget_only)}
        return _filled(train, unset)

    @field_validator("video")
    @classmethod
    def _kind_video_defaults(cls, video: VideoSpec, info: ValidationInfo) -> VideoSpec:
        """A frame every 2 steps (the seed's) unless set, or the kind derives it from the image (for_image)."""
        model = info.data.get("model")
        if model is None or video.every_n_steps is not None or hasattr(model, "derive"):
            return video
        return _filled(video, {"every_n_steps": 2})

    @model_validator(mode="after")
    def _check_schedule(self) -> JobSpec:
        if self.train.lr_schedule == "step":
            for name in ("lr_step_epochs", "lr_gamma"):
                if getattr(self.train, name) is None:
                    raise ValueError(f"train.{name}: required by lr_schedule step")
        elif self.train.lr_final is None:
            raise ValueError("train.lr_final: required by lr_schedule exponential/cosine")
        return self

    def for_image(
        self, width: int, height: int, chosen: dict[str, Any] | None = None
    ) -> tuple[JobSpec, dict[str, Any]]:
        """This spec with the values that follow the image's size filled in where it
        leaves them unset (a value the user set always wins), and those values by
        dotted field name. Kinds derive through `derive(width, height, spec)`.
        `chosen`: values the device's calibration decided (imgfit_batch.recipe), applied
        first, so what follows from them (the film's cadence follows the batch) does."""
        base = self._with(chosen) if chosen else self
        derived = base.model.derive(width, height, base) if hasattr(base.model, "derive") else {}
        derived = {**(chosen or {}), **{k: v for k, v in derived.items() if fieldpath.get(base, k) is None}}
        if not derived:
            return self, {}
        return self._with(derived), derived

    def _with(self, values: dict[str, Any]) -> JobSpec:
        """This spec with dotted fields set to `values`, validated again."""
        tree = resolved_dict(self)
        for dotted, value in values.items():
            fieldpath.set_in(tree, dotted, value)
        return JobSpec.model_validate(tree)

    @property
    def images(self) -> list[str]:
        return [self.image] if isinstance(self.image, str) else list(self.image)


_S = TypeVar("_S", bound=BaseModel)


def _filled(section: _S, values: dict[str, Any]) -> _S:
    """`section` with `values` set, validated as the section again, its model_fields_set still only what was
    written: a default filled in is not "set", so study._base_tree leaves it out and a swept kind brings its own."""
    if not values:
        return section
    checked = type(section).model_validate({**dict(section), **values})
    return type(section).model_construct(set(section.model_fields_set), **dict(checked))


_UNSAFE_IN_STEM = re.compile(r"[\\\x00-\x1f\x7f]")  # a backslash (a separator on some systems), control characters


def image_stem(uri: str) -> str:
    """The folder an image's outputs go to in a list spec: its file name without the
    extension (photos/cat.png -> cat). A name that could not safely be a folder of its
    own (empty, `.`, `..`, starting with a dot, a backslash or a control character)
    is made safe, deterministically: those characters become `_`, leading and trailing
    dots and spaces go (an empty rest becomes `image`), and 8 hex digits of the name's
    SHA-256 keep different names apart (`...png` -> `image-<hash>`). Never contains a
    path separator or `..` as a whole."""
    name = uri.rstrip("/").split("/")[-1]
    stem = PurePosixPath(name).stem if name else ""
    if stem and not stem.startswith(".") and not _UNSAFE_IN_STEM.search(stem):
        return stem
    safe = _UNSAFE_IN_STEM.sub("_", stem).strip(". ") or "image"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe}-{digest}"


# ---------------------------------------------------------------- loading


MAX_SPEC_BYTES = 1 << 20  # a spec is a few hundred bytes; more is a mistake or an attack


class _SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader without aliases: `*name` is how a few hundred bytes of YAML expand
    to gigabytes (billion laughs), and a spec has no use for them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"aliases (*{event.anchor[:40]}) are not allowed in a spec; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def _parse_yaml(text: str) -> Any:
    """YAML through the alias-free loader. Raises yaml.YAMLError, or ValueError for what
    PyYAML lets through (nesting deeper than Python's stack, integers of thousands of digits)."""
    try:
        return yaml.load(text, Loader=_SpecLoader)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _set_path(tree: dict, dotted: str, raw: str) -> None:
    if not all(fieldpath.split(dotted)):
        raise SpecError(f"--set {dotted}=...: not a field path (use a.b=value)")
    try:
        value = _parse_yaml(raw) if raw != "" else ""
    except (yaml.YAMLError, ValueError):
        value = raw
    try:
        fieldpath.set_in(tree, dotted, value, create=True)
    except fieldpath.NotASection as exc:
        raise SpecError(f"--set {dotted}: {exc}") from None


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set train.epochs=5")
        dotted, raw = item.split("=", 1)
        _set_path(tree, dotted.strip(), raw)
    return tree


def field_path(loc: tuple) -> str:
    # pydantic puts the discriminator value in the location of union members; a hostile key can be huge
    parts = [str(p) for p in loc if not (isinstance(p, str) and p in KINDS)]
    return fieldpath.join(*(p if len(p) <= 80 else p[:77] + "..." for p in parts)) or "spec"


def explain_error(err: ErrorDetails) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; `imgfit-batch schema` lists the fields)"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        return f"unknown kind {short_value(err['ctx'].get('tag'))}; expected one of {err['ctx'].get('expected_tags')}"
    if kind == "greater_than":
        return f"must be > {err['ctx']['gt']}"
    if kind == "greater_than_equal":
        return f"must be >= {err['ctx']['ge']}"
    if kind == "less_than_equal":
        return f"must be <= {err['ctx']['le']}"
    if kind == "literal_error":
        return f"must be one of {err['ctx']['expected']}"
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    return f"{msg[0].lower()}{msg[1:]} (got {short_value(err.get('input'))})"


def short_value(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: error lines quote input, and input can be huge."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<a deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_spec(tree: Any, source: str = "spec") -> JobSpec:
    if not isinstance(tree, dict):
        raise SpecError(f"{source}: the spec must be a YAML mapping with at least `image` and `output`")
    try:
        spec = JobSpec.model_validate(tree)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise SpecError(f"{source}: {field_path(first['loc'])}: {explain_error(first)}{more}") from None
    return spec


def read_spec_text(source: str) -> str:
    """The spec's text, read bounded (MAX_SPEC_BYTES) from a file, stdin (`-`) or a store."""
    if source == "-":
        stream = getattr(sys.stdin, "buffer", sys.stdin)  # bytes where there is a buffer
        data = stream.read(MAX_SPEC_BYTES + 1)
    else:
        from imgfit_batch import storage

        data = storage.read_bytes(source, what="spec", max_bytes=MAX_SPEC_BYTES)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{_name(source)}: the spec is over {MAX_SPEC_BYTES >> 20} MiB; a spec is a short YAML file")
    if not isinstance(data, bytes):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:  # replacing the bytes would silently name another file
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(
            f"{_name(source)}: line {line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the spec as UTF-8"
        ) from None


def _name(source: str) -> str:
    return "stdin" if source == "-" else source


def load_tree(source: str, overrides: Sequence[str] = ()) -> tuple[Any, str]:
    """The spec's YAML tree from a file, stdin (`-`) or a store, with the --set overrides
    applied, and the name errors give it. `imgfit_batch.study.load_spec` validates it."""
    from imgfit_batch import storage

    if source != "-":
        try:
            source = storage.check_uri(source, need_key=True)
        except ValueError as exc:
            raise SpecError(f"SPEC: {exc}") from None
    text = read_spec_text(source)
    try:
        tree = _parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{_name(source)}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except ValueError as exc:
        raise SpecError(f"{_name(source)}: not a valid spec ({str(exc)[:200]})") from None
    if tree is None:
        tree = {}
    if isinstance(tree, dict):
        apply_overrides(tree, list(overrides))
    return tree, _name(source)


def check_outside_output(spec: JobSpec, source: str) -> None:
    """The job writes its output location: a spec file inside it could be overwritten."""
    from imgfit_batch import storage

    if source not in ("-", "stdin") and storage.contains(spec.output, source):
        raise SpecError(
            f"{source}: output: {spec.output} contains this spec ({source}); the job writes there and "
            "could overwrite it: keep the spec outside the output location"
        )


def resolved_dict(spec: JobSpec) -> dict:
    return spec.model_dump(mode="json")


def json_schema() -> dict:
    return JobSpec.model_json_schema()


# Fields that change the result. Anything else (checkpoint cadence, logging,
# device, time budget, storage endpoint) may change between runs of one job.
RESULT_FIELDS = (
    "image",
    "model",
    "train.color",
    "train.epochs",
    "train.batch_size",
    "train.lr",
    "train.lr_schedule",
    "train.lr_step_epochs",
    "train.lr_gamma",
    "train.lr_final",
    "train.ema_decay",
    "train.grad_clip",
    "train.adam_eps",
    "train.adam_betas",
    "train.seed",
    "train.precision",
    "video.every_n_steps",
    "video.fps",
    "video.max_side",
    "video.filter",
    "video.crf",
    "video.preset",
)


def result_fields(spec: JobSpec, image: str) -> dict[str, Any]:
    tree = resolved_dict(spec)
    out: dict[str, Any] = {}
    for path in RESULT_FIELDS:
        node = image if path == "image" else fieldpath.get(tree, path)
        if isinstance(node, dict):
            for k, v in node.items():
                out[fieldpath.join(path, k)] = v
        else:
            out[path] = node
    return out


def fingerprint(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def image_size(uri: str) -> tuple[int, int] | None:
    """(width, height) of a local image from its header (EXIF rotation applied); None
    when it is remote or unreadable (the job reports that properly)."""
    from imgfit_batch import storage

    if storage.is_remote(uri):
        return None
    try:
        from PIL import Image

        with storage.open_local(uri, what="image") as fh, Image.open(fh) as img:  # a FIFO would block
            width, height = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees
                width, height = height, width
            return width, height
    except Exception:
        return None


def derived_note(spec: JobSpec) -> tuple[JobSpec, str]:
    """For `validate`: the spec with derived values filled in where the image's size is
    known here, and a YAML comment saying which values were (or will be) derived."""
    from imgfit_batch import recipe

    size = image_size(spec.images[0]) if len(spec.images) == 1 else None
    calibrated = recipe.should_calibrate(spec)
    if size is not None:
        resolved, derived = spec.for_image(*size)
        batch = resolved.train.batch_size  # set: a kind that calibrates derives it
        calibrated = calibrated and batch is not None and bool(recipe.candidate_batches(batch, size[0] * size[1]))
        note = f"# derived from the image ({size[0]}x{size[1]}): " + ", ".join(sorted(derived)) if derived else ""
        return (resolved if derived else spec), _join(note, recipe.validate_note() if calibrated else "")
    probe, derived = spec.for_image(1024, 1024)
    note = "# derived from each image's size when the job runs: " + ", ".join(sorted(derived)) if derived else ""
    return spec, _join(note, recipe.validate_note() if calibrated else "")


def _join(*lines: str) -> str:
    return "\n".join(line for line in lines if line)

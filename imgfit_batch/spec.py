"""The job spec's schema: one pydantic tree, each component owning its own section, which
resolves per-model-kind training defaults, so what `validate` prints is exactly what
`run` uses. The fields that change a job's result say so themselves (`Result`).

Reading a spec (a path, `-` or a store URI; YAML; `--set a.b=v`) and wording what is wrong
with it is imgfit_batch.specfile.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import Counter
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from imgfit_batch import fieldpath
from imgfit_batch.models import FourierConfig, ModelConfig
from imgfit_batch.redact import redact


class Result:
    """The mark of a field that changes a job's result (`Annotated[type, RESULT]`): a run that
    finds a checkpoint or a completed job made with another value refuses to go on (naming the
    field), and spec.json records these fields. Any other field (checkpoint cadence, logging,
    device, time budget, storage endpoint) may change between runs of one job. A marked section
    (model) counts by each of its fields."""

    def __repr__(self) -> str:
        return "RESULT"


RESULT = Result()

# What a kind's train_defaults may leave out.
GENERIC_TRAIN_DEFAULTS = {"lr_schedule": "step", "ema_decay": 0.0}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainSpec(_Section):
    color: Annotated[Literal["gray", "rgb"], RESULT] = Field(
        default="gray", description="gray: one output (the seed); rgb: three outputs."
    )
    epochs: Annotated[int | None, RESULT] = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Passes over all pixels. Unset: the model kind's default (20 for the seed's kinds), "
        "or unlimited when max_seconds is set.",
    )
    batch_size: Annotated[int | None, RESULT] = Field(
        default=None,
        ge=1,
        le=1 << 26,
        description="Pixels per step. Unset: the model kind's default (8000 for the seed's kinds; hashgrid's follows "
        "the image, and under max_seconds without epochs a calibration on the job's device, imgfit_batch/recipe.py).",
    )
    lr: Annotated[float | None, RESULT] = Field(
        default=None,
        gt=0,
        le=10,
        description="Adam learning rate. Unset: the model kind's default (0.001 for the seed's kinds).",
    )
    lr_schedule: Annotated[Literal["step", "exponential", "cosine"] | None, RESULT] = Field(
        default=None,
        description="step: StepLR, the rate times lr_gamma every lr_step_epochs epochs (the seed's); exponential or "
        "cosine: from lr down to lr * lr_final over the run's planned steps (planned from epochs, or from the measured "
        "speed when only max_seconds is set). Unset: the model kind's default (step for the seed's kinds).",
    )
    lr_step_epochs: Annotated[int | None, RESULT] = Field(
        default=None,
        ge=1,
        description="lr_schedule step: period in epochs. Unset: the model kind's default (3 for the seed's kinds).",
    )
    lr_gamma: Annotated[float | None, RESULT] = Field(
        default=None,
        gt=0,
        le=1,
        description="lr_schedule step: factor per period. Unset: the model kind's default (0.5 for the seed's kinds).",
    )
    lr_final: Annotated[float | None, RESULT] = Field(
        default=None,
        gt=0,
        le=1,
        description="lr_schedule exponential/cosine: the last step's rate as a fraction of lr. Unset: the model "
        "kind's default.",
    )
    ema_decay: Annotated[float | None, RESULT] = Field(
        default=None,
        ge=0,
        lt=1,
        description="Frames, final.png and model.pt come from an exponential moving average of the "
        "weights with this decay (0: the raw weights, as the seed). Unset: the model kind's default (0 for the "
        "seed's kinds).",
    )
    grad_clip: Annotated[float | None, RESULT] = Field(
        default=None,
        ge=0,
        description="Gradient-norm clip; 0 disables. Unset: the model kind's default (0.01 for the seed's kinds).",
    )
    adam_eps: Annotated[float | None, RESULT] = Field(
        default=None,
        gt=0,
        le=1,
        description="Adam's epsilon. Unset: the model kind's default (PyTorch's 1e-8 for the seed's kinds; "
        "1e-15 for hashgrid, whose table gradients are tiny).",
    )
    adam_betas: Annotated[tuple[float, float] | None, RESULT] = Field(
        default=None,
        description="Adam's (beta1, beta2). Unset: the model kind's default (PyTorch's (0.9, 0.999) for the "
        "seed's kinds).",
    )
    seed: Annotated[int, RESULT] = Field(
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
    precision: Annotated[Literal["auto", "fp32", "bf16"], RESULT] = Field(
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
    every_n_steps: Annotated[int | None, RESULT] = Field(
        default=None,
        ge=1,
        description="Render a frame after every N-th training step. Unset: 2 (the seed's) where a frame "
        "costs less than a step; for hashgrid, derived so frames cost a fraction of training (see docs/models.md).",
    )
    fps: Annotated[int, RESULT] = Field(default=30, ge=1, le=240, description="Frames per second of video.mp4.")
    max_side: Annotated[int, RESULT] = Field(
        default=1024,
        ge=16,
        le=16384,
        description="Frames larger than this on their longer side are rendered smaller (see video.filter).",
    )
    filter: Annotated[Literal["box", "point"], RESULT] = Field(
        default="box",
        description="How a frame smaller than the input is made. box: each frame pixel is the field averaged "
        "over the input pixels it covers (exact for hashgrid's sum and linear decoders; other kinds average up to "
        "4 x 4 samples a pixel, so such frames cost up to 16 forward passes a pixel). point: the field sampled once "
        "a pixel (cheaper; the film of a detailed image aliases). Frames at the input's size are the same either way.",
    )
    crf: Annotated[int, RESULT] = Field(
        default=18, ge=0, le=51, description="H.264 constant rate factor (lower is better quality, bigger file)."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="Arithmetic for rendering frames. auto: bf16 where the device does it natively "
        "(CUDA, CPUs with AVX512-BF16/AMX), else fp32. final.png is always rendered in fp32.",
    )
    preset: Annotated[Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"], RESULT] = (
        Field(default="veryfast", description="x264 preset: how much CPU the encoder may spend per frame.")
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
    image: Annotated[str | list[str], RESULT] = Field(
        description="Input image: path, file://, s3://bucket/key, gs://bucket/key or az://container/key; or a "
        "list of them (one per array task)."
    )
    output: str = Field(
        description="Output location: folder, file://, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix."
    )
    model: Annotated[ModelConfig, RESULT] = Field(
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
        if self.model.max_parameters is not None:  # a size budget: what the spec leaves unset fits inside it
            from imgfit_batch import sizing

            model = self._with(derived).model if derived else self.model
            out_features = 1 if self.train.color == "gray" else 3
            derived.update(sizing.fit(model, set(self.model.model_fields_set), out_features, width, height))
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


def resolved_dict(spec: JobSpec) -> dict:
    return spec.model_dump(mode="json")


def json_schema() -> dict:
    return JobSpec.model_json_schema()


@functools.cache
def result_paths() -> tuple[str, ...]:
    """The dotted names of the fields marked RESULT, in the order they are declared."""
    paths = []
    for name, info in JobSpec.model_fields.items():
        if RESULT in info.metadata:
            paths.append(name)
        elif isinstance(info.annotation, type) and issubclass(info.annotation, _Section):
            fields = info.annotation.model_fields.items()
            paths += [fieldpath.join(name, sub) for sub, field in fields if RESULT in field.metadata]
    return tuple(paths)


def result_fields(spec: JobSpec, image: str) -> dict[str, Any]:
    tree = resolved_dict(spec)
    out: dict[str, Any] = {}
    for path in result_paths():
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

"""One job, start to finish: `Job.run` is the outline.

claim the output (its lease); load the target; resolve what the spec leaves unset (the
recipe); build the training parts (imgfit_batch.parts) and resume them from the newest
complete checkpoint, read once (or start); write the record (spec.json); train
(imgfit_batch.train: films, checkpoints, stops on a signal with exit 75); publish
video.mp4, loss.csv, final.png, model.pt, summary.json (summary.json last: it is what
marks the job completed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from imgfit_batch import completion, memory, outputs, signals, storage, study, tensorboard_log, video
from imgfit_batch import device as devices
from imgfit_batch import recipe as recipes
from imgfit_batch.checkpoint import CheckpointPolicy, CheckpointStore, Loaded, made_by_job
from imgfit_batch.data import Pixels, Target, decode_image, read_image_bytes
from imgfit_batch.errors import ImgfitError, Interrupted, UnavailableError
from imgfit_batch.final import FINAL_BAND_PIXELS, render_final
from imgfit_batch.lease import Lease
from imgfit_batch.losslog import LiveCsv
from imgfit_batch.parts import Places, build_parts, calibration_step, pixels_on
from imgfit_batch.plot import training_plot
from imgfit_batch.progress import Reporter, TrainingProgress
from imgfit_batch.redact import redact, redact_tree
from imgfit_batch.spec import JobSpec, fingerprint, image_stem, resolved_dict, result_fields
from imgfit_batch.study import Task
from imgfit_batch.train import Parts, train
from imgfit_batch.version import __version__


def resolve_task(spec: JobSpec, index: int | None) -> tuple[JobSpec, Task]:
    """The task to run (imgfit_batch.study: --index, JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID)
    and its spec, its sweep values applied."""
    return study.resolve_task(spec, index)


@dataclass
class Resolved:
    """The spec with what it left unset filled in, those values, and what decided them."""

    spec: JobSpec
    derived: dict
    recipe: dict


@dataclass
class History:
    """The job's runs so far: how often it resumed, and its wall time (this run's included)."""

    started: float  # this run's start (time.monotonic)
    resumes: int = 0
    wall_before: float = 0.0  # the earlier runs' wall time

    def wall_seconds(self) -> float:
        return self.wall_before + (time.monotonic() - self.started)


class Job:
    def __init__(self, spec: JobSpec, task: Task, reporter: Reporter, restart: bool = False):
        self.spec, self.task, self.reporter, self.restart = spec, task, reporter, restart  # spec: as given
        self.output = task.output
        # the result fields of the spec as given: spec.json records them, a completed output is compared with them
        # (a checkpoint holds the resolved spec's: CheckpointPolicy)
        self.given_fields = result_fields(spec, task.image)
        checkpoints = storage.join(self.output, outputs.CHECKPOINTS)
        self.store = CheckpointStore(checkpoints, spec.checkpoint.keep, reporter.warn)

    def run(self) -> outputs.Summary:
        storage.configure(self.spec.storage.endpoint_url, self.spec.storage.region, self.spec.storage.retry_seconds)
        signals.set_grace(self.spec.checkpoint.stop_grace_seconds)
        history = History(started=time.monotonic())
        if (done := self._completed_summary("is already complete")) is not None:
            return done
        with self._claim_output():
            if (done := self._completed_summary("was completed by the run we waited for")) is not None:
                return done
            if self.restart:
                self._clear_output()
            with _local_folder(self.output) as local:
                places = Places(local, self.output)
                target, pixels, device = self._load_target()
                # a resumed run takes the recipe recorded in its checkpoint: the newest usable one is
                # read (once) before anything is built
                read = self.store.load()
                resolved = self._resolve(target, pixels, device, read, places)
                parts = build_parts(resolved.spec, pixels, device, places)
                policy = self._policy(resolved, history)
                self._resume(parts, policy, read, history)
                del read  # the checkpoint's host copy: the parts hold what they need
                self._attach_tensorboard(parts, resolved.spec)
                self._write_record(resolved, target, device)
                stop_reason = self._train(parts, policy, resolved.spec, target, device)
                # from here on a stop signal is ignored: finishing takes seconds and loses nothing
                return self._publish(parts, resolved, target, device, stop_reason, history)

    # ------------------------------------------------------------ claim the output

    def _completed_summary(self, how: str) -> outputs.Summary | None:
        """The output's summary when the job already completed there, proven by the job's own
        record (imgfit_batch.completion; never under --restart); refused when that job was made
        with a spec whose result fields differ, or when its record does not back the summary."""
        if self.restart:
            return None
        summary = completion.completed(self.output, self.given_fields, self.reporter.warn)
        if summary is not None:
            self.reporter.event("completed", f"{self.output} {how}; nothing to do", output=self.output)
        return summary

    @contextlib.contextmanager
    def _claim_output(self) -> Iterator[None]:
        """Hold the output's lease (waiting for a run that holds it) for the job's lifetime."""
        storage.check_writable(self.output)
        lease = Lease(
            self.output,
            wait_seconds=self.spec.checkpoint.lease_wait_seconds,
            log=lambda m: self.reporter.event("waiting", m),
            warn=self.reporter.warn,
        )
        lease.acquire()
        try:
            yield
        finally:
            lease.release()

    def _clear_output(self) -> None:
        """--restart: delete this job's files (and nothing else a user keeps beside them)."""
        self.reporter.event("restart", f"--restart: discarding earlier progress in {self.output}")
        for name in outputs.JOB_FILES:
            storage.delete(storage.join(self.output, name))
        for name in storage.list_names(self.output):  # interrupted writes' temp files
            if name.startswith((".tmp-", ".imgfit-write-probe-")):
                storage.delete(storage.join(self.output, name))
        storage.delete_matching(self.store.folder, made_by_job)
        storage.delete_matching(storage.join(self.output, tensorboard_log.FOLDER), tensorboard_log.is_event_file)

    # ------------------------------------------------------------ load the target

    def _load_target(self) -> tuple[Target, Pixels, torch.device]:
        """The image, decoded, and on the training device; refused before decoding (from its header)
        when it cannot fit this host, and before training when it cannot fit the device."""
        spec, image = self.spec, self.task.image
        data = read_image_bytes(image, memory.max_pixels(spec), spec.input.max_bytes)
        self._check_fits_host(data)  # from the header: a gigapixel image that cannot fit is refused undecoded
        target = decode_image(data, image, spec.train.color, memory.max_pixels(spec))
        del data
        device = devices.pick_device(spec.train.device)
        devices.configure(device, spec.train.deterministic, spec.train.threads, spec.train.precision)
        params = memory.param_bytes(spec, target.channels, target.width, target.height)
        memory.check_device(image, device, target.width, target.height, target.channels, params, FINAL_BAND_PIXELS)
        return target, pixels_on(target, device), device

    def _check_fits_host(self, data: bytes) -> None:
        size = memory.header_size(data)
        if size is None or size[0] * size[1] > memory.max_pixels(self.spec):
            return  # decode_image says what is wrong
        channels = 1 if self.spec.train.color == "gray" else 3
        on_cpu = memory.device_type_for(self.spec.train.device) == "cpu"
        params = memory.param_bytes(self.spec, channels, *size) if on_cpu else 0  # on CUDA they live on the GPU
        memory.check_host(self.task.image, size[0], size[1], channels, len(data), params)

    # ------------------------------------------------------------ resolve, build, resume

    def _resolve(
        self, target: Target, pixels: Pixels, device: torch.device, read: Loaded | None, places: Places
    ) -> Resolved:
        """What the spec leaves unset: from the image's size, and under a time budget from this
        device's measured speed (imgfit_batch.recipe). The checkpoint's recorded recipe wins."""
        spec, width, height = self.spec, target.width, target.height
        chosen, calibration, why = None, None, ""
        if read is not None:  # resuming: the recorded values (none where an older version wrote it)
            chosen = recipes.applicable(spec, recipes.recorded_choice(read.state.get("recipe")) or {})
            why = "recorded in the checkpoint" if chosen else ""
        elif recipes.should_calibrate(spec):
            image_spec, image_derived = spec.for_image(width, height)
            assert image_spec.train.batch_size is not None and spec.train.max_seconds is not None  # should_calibrate
            batches = recipes.candidate_batches(image_spec.train.batch_size, width * height)
            if batches:
                seconds = recipes.calibration_seconds(spec.train.max_seconds)
                name = devices.device_name(device)
                self.reporter.event(
                    "calibrating",
                    f"timing the training step at batches {batches} for ~{seconds:.1f}s on {name}",
                    batches=batches,
                )
                step = calibration_step(image_spec, pixels, device, places)
                calibration = recipes.calibrate(step, batches, seconds, device, name)
                del step
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # the throwaway model's memory, and its graphs'
                chosen, why = recipes.choose(spec, image_derived, calibration)
        resolved, derived = spec.for_image(width, height, chosen)
        return Resolved(resolved, derived, recipes.record(chosen or {}, why, calibration))

    def _policy(self, resolved: Resolved, history: History) -> CheckpointPolicy:
        """When to checkpoint, and what a checkpoint adds to the parts' states: the job's own fields."""

        def job_state() -> dict:
            return {
                "resumes": history.resumes,
                "wall_seconds": history.wall_seconds(),
                "version": __version__,
                "encoder": video.encoder_identity(),
                "recipe": resolved.recipe,
            }

        cfg = resolved.spec.checkpoint
        fields = result_fields(resolved.spec, self.task.image)  # the resolved spec's, which a resume must match
        event = self.reporter.event
        return CheckpointPolicy(self.store, cfg.every_n_steps, cfg.every_seconds, fields, job_state, event)

    def _resume(self, parts: Parts, policy: CheckpointPolicy, read: Loaded | None, history: History) -> None:
        """Load the checkpoint that was read into the parts (after the policy checked its spec)."""
        resumed = policy.resume(read)
        if resumed is None:
            return
        name, state = resumed
        _check_encoder(state, name)
        parts.load_state_dict(state["parts"])
        history.resumes, history.wall_before = int(state["resumes"]) + 1, float(state["wall_seconds"])
        self.reporter.event(
            "resumed",
            f"resuming from {name} (step {parts.budget.step}, frame {parts.filmer.frames})",
            checkpoint=name,
            step=parts.budget.step,
            frames=parts.filmer.frames,
            resumes=history.resumes,
        )

    def _attach_tensorboard(self, parts: Parts, spec: JobSpec) -> None:
        """The loss log and the filmer write TensorBoard events too, where the spec asks for them;
        a resumed run starts its events at the step after its checkpoint."""
        if spec.log.tensorboard:
            folder = storage.join(self.output, tensorboard_log.FOLDER)
            parts.send_events_to(tensorboard_log.EventLog(folder, parts.budget.step + 1))

    # ------------------------------------------------------------ the record, training

    def _write_record(self, resolved: Resolved, target: Target, device: torch.device) -> None:
        """spec.json: what this run trains with (rewritten by every run)."""
        record = outputs.JobRecord(
            # credentials in URLs (storage.endpoint_url) are redacted; result_fields hold none and must stay exact
            spec=redact_tree(resolved_dict(resolved.spec)),
            derived=resolved.derived,
            recipe=resolved.recipe,
            image=redact(self.task.image),
            task=self.task.record(),
            result_fields=self.given_fields,
            fingerprint=fingerprint(self.given_fields),
            width=target.width,
            height=target.height,
            device=devices.device_name(device),
        )
        storage.write_bytes(storage.join(self.output, outputs.SPEC), record.to_bytes())

    def _train(
        self, parts: Parts, policy: CheckpointPolicy, spec: JobSpec, target: Target, device: torch.device
    ) -> str:
        """Train to the end of the budget (or the spec's stop); returns why it stopped. On any
        failure the checkpoint and loss.csv on their way still land."""
        budget, cfg = parts.budget, spec.train
        parameters, bits_per_pixel = outputs.model_size(parts.model, target.width * target.height)
        self.reporter.event(
            "start",
            f"training {self.task.image} ({target.width}x{target.height} {cfg.color}) "
            f"on {devices.device_name(device)}: {spec.model.kind} of {parameters:,} parameters "
            f"({bits_per_pixel:.2f} bits per pixel at fp32, {bits_per_pixel / 2:.2f} at fp16), "
            f"{budget.total_steps if budget.total_steps is not None else '?'} steps",
            image=self.task.image,
            output=self.output,
            device=devices.device_name(device),
            total_steps=budget.total_steps,
            step=budget.step,
            parameters=parameters,
            bits_per_pixel=bits_per_pixel,
        )
        loss_uri = storage.join(self.output, outputs.LOSS)
        live_csv = LiveCsv(parts.log, loss_uri, max(60.0, spec.log.every_seconds), self.reporter.warn)
        progress = TrainingProgress(self.reporter, live_csv, policy, cfg.max_seconds)
        signals.install()
        try:
            stop_reason = _train_to_the_end(parts, policy, progress, self.reporter, cfg.max_seconds)
            live_csv.close()  # its last upload lands before the final loss.csv, never after it
            progress.line(parts, force=True)  # the final line; loss.csv is published with the outputs
            self.reporter.close()
        except BaseException:
            self.reporter.close()
            parts.filmer.abandon()
            for settle in (policy.wait, live_csv.close):  # a checkpoint, loss.csv on its way: still worth having
                try:
                    settle()
                except Exception:
                    pass
            raise
        return stop_reason

    # ------------------------------------------------------------ publish

    def _publish(
        self,
        parts: Parts,
        resolved: Resolved,
        target: Target,
        device: torch.device,
        stop_reason: str,
        history: History,
    ) -> outputs.Summary:
        """Write the outputs, summary.json last; then the checkpoint folder's leftovers go."""
        wall_seconds = history.wall_seconds()
        staging = tempfile.mkdtemp(prefix="imgfit-out-")
        try:
            psnr, ssim, segments = _write_outputs(parts, resolved.spec, self.task.image, self.output, device, staging)
            facts = outputs.RunFacts(
                image=self.task.image,
                width=target.width,
                height=target.height,
                model=resolved.spec.model.kind,
                device=devices.device_name(device),
                peak_memory_mb=devices.peak_memory_mb(device),
                derived=resolved.derived,
                recipe=resolved.recipe,
                task=self.task.record(),
                resumes=history.resumes,
                wall_seconds=wall_seconds,
                stopped_by=stop_reason,
                psnr=psnr,
                ssim=ssim,
                segments=segments,
                files=completion.published_files(self.output),  # what proves the job complete with spec.json
                version=__version__,
            )
            summary = outputs.Summary.from_run(parts, facts)
            summary = outputs.Summary.model_validate(redact_tree(summary.model_dump(mode="json")))
            storage.write_bytes(storage.join(self.output, outputs.SUMMARY), summary.to_bytes())
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._delete_leftovers(parts)
        self.reporter.event(
            "completed",
            f"done: {parts.budget.step} steps, {parts.filmer.frames} frames, PSNR {psnr:.2f} dB -> {self.output}",
            steps=parts.budget.step,
            frames=parts.filmer.frames,
            psnr_db=summary.psnr_db,
            output=self.output,
        )
        return summary

    def _delete_leftovers(self, parts: Parts) -> None:
        try:
            parts.filmer.delete_segments()  # the video is whole now
            parts.log.delete_chunks()  # so is loss.csv
        except ImgfitError as exc:  # the job is complete all the same: leftovers only cost storage
            self.reporter.warn(
                f"could not delete the video segments or loss-log chunks under {self.store.folder} "
                f"({getattr(exc, 'detail', exc)}); the job is complete; they may be deleted by hand"
            )


@contextlib.contextmanager
def _local_folder(output: str) -> Iterator[str]:
    """The output's folder on this machine: itself, or a temp folder for a remote output."""
    if not storage.is_remote(output):
        yield storage.local_path(output)
        return
    workdir = tempfile.mkdtemp(prefix="imgfit-")
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _check_encoder(state: dict, name: str) -> None:
    """A resume joins this run's video segments to the earlier runs' with `-c copy`: they
    must come from the same encoder. Refused (exit 3, before training resumes) when a
    closed segment exists and the checkpoint names another ffmpeg build; a checkpoint
    from before encoders were recorded, or one with no closed segment yet (its open
    frames are raw in the checkpoint and encoded by this run), resumes."""
    made_by = state.get("encoder")
    filmer = state["parts"]["filmer"]
    closed = int(filmer["frames"]) > len(filmer["open_segment"])  # a segment is already encoded
    if not isinstance(made_by, str) or not closed or made_by == video.encoder_identity():
        return
    raise UnavailableError(
        f"{name}: its video segments were encoded by {made_by}, this run's encoder is {video.encoder_identity()}; "
        "segments of two encoders do not join into one video: resume with the earlier ffmpeg (the earlier image), "
        "or --restart"
    )


def _train_to_the_end(
    parts: Parts, policy: CheckpointPolicy, progress: TrainingProgress, reporter: Reporter, max_seconds: float | None
) -> str:
    """The loop (imgfit_batch.train) from where the parts stand, and a checkpoint at its end;
    why it stopped. A stop asked for before the loop began ends the run here (exit 75)."""
    budget = parts.budget
    reporter.start(budget.total_steps, budget.step, max_seconds)
    stop = signals.requested()
    if stop is not None and not budget.done():
        raise Interrupted(
            f"by {stop} before training began (step {budget.step}); run the same command again to continue"
        )
    stop_reason = train(parts, policy, signals.requested, progress) if not budget.done() else budget.why()
    if budget.step != policy.last_step:
        policy.save(parts, "end")
    policy.wait()
    return stop_reason


def _write_outputs(
    parts: Parts, spec: JobSpec, image: str, output: str, device: torch.device, staging: str
) -> tuple[float, float, int]:
    """video.mp4, final.png, model.pt, progress.png and loss.csv, written to the output;
    returns final.png's (PSNR, SSIM) and the video's segments."""
    budget, log, filmer = parts.budget, parts.log, parts.filmer
    local_video = os.path.join(staging, outputs.VIDEO)
    segments = filmer.finish(local_video)  # raises unless video.mp4 decodes to filmer.frames frames
    final_model = parts.averager.model
    parts.sampler.release()  # the epoch's pixel order (4 bytes a pixel) is not needed any more
    # (H, W, C) uint8 on the host, fp32 arithmetic; rendered and scored in bands of rows
    final, psnr, ssim = render_final(final_model, parts.pixels.image(), device)
    steps, loss, psnr_steps, psnr_db = log.plot_series()  # thinned for plotting
    width, height = parts.pixels.width, parts.pixels.height
    shrunk = (filmer.width, filmer.height) != (width, height)
    plot = training_plot(
        steps,
        loss,
        psnr_db,
        psnr_steps=psnr_steps,
        title=f"{image_stem(image)}: {spec.model.kind}, {budget.step} steps",
        psnr_title=(f"PSNR of the frame ({filmer.width}x{filmer.height}) against the input box-filtered to frame size")
        if shrunk
        else "PSNR of the full image",
    )
    files = {
        outputs.FINAL: outputs.png_bytes(final),
        outputs.MODEL: outputs.model_bytes(
            final_model, spec.model.model_dump(mode="json"), spec.train.color, width, height
        ),
        outputs.PROGRESS: plot,
    }
    for name, data in files.items():
        storage.write_bytes(storage.join(output, name), data)
    log.publish(storage.join(output, outputs.LOSS))  # sealed chunks + open rows, streamed
    if log.events is not None:
        log.events.sync()  # the last steps' events
    if segments:
        storage.upload_file(local_video, storage.join(output, outputs.VIDEO))
    return psnr, ssim, segments

"""One job, start to finish: lease the output, resume or start, train, publish.

lease the output; read the image; build the training parts and resume them
from the newest complete checkpoint (or start); run the loop (imgfit_batch.train),
which films, checkpoints and stops on a signal (exit 75); at the end join the
video and publish video.mp4, loss.csv, final.png, model.pt, summary.json
(summary.json last: it is what marks the job completed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from imgfit_batch import (
    __version__,
    completion,
    memory,
    outputs,
    signals,
    storage,
    study,
    tensorboard_log,
    video,
)
from imgfit_batch import adam as fused_adam
from imgfit_batch import (
    device as devices,
)
from imgfit_batch import (
    recipe as recipes,
)
from imgfit_batch.checkpoint import Checkpointer, CheckpointManager, Lease, Loaded, made_by_job
from imgfit_batch.data import Pixels, Target, decode_image, read_image_bytes
from imgfit_batch.errors import ImgfitError, Interrupted, UnavailableError
from imgfit_batch.film import Filmer
from imgfit_batch.final import FINAL_BAND_PIXELS, render_final
from imgfit_batch.graphed import pick_step
from imgfit_batch.losslog import LiveCsv, LogChunks, LossLog
from imgfit_batch.plot import training_plot
from imgfit_batch.progress import Reporter, TrainingProgress
from imgfit_batch.redact import redact, redact_tree
from imgfit_batch.spec import JobSpec, fingerprint, image_stem, resolved_dict, result_fields
from imgfit_batch.study import Task
from imgfit_batch.train import Averager, Budget, Parts, PixelSampler, RandomState, Schedule, train


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


def resolve_task(spec: JobSpec, index: int | None) -> tuple[JobSpec, Task]:
    """The task to run (imgfit_batch.study: --index, JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID)
    and its spec, its sweep values applied."""
    return study.resolve_task(spec, index)


def _pixels(target: Target, device: torch.device) -> Pixels:
    """The target on the device, uint8 (a CPU device shares the decoded array)."""
    return Pixels(torch.from_numpy(target.pixels.reshape(-1, target.channels)).to(device), target.width, target.height)


class Job:
    def __init__(self, spec: JobSpec, task: Task, reporter: Reporter, restart: bool = False):
        self.spec, self.task, self.reporter, self.restart = spec, task, reporter, restart
        self.output = task.output
        self.checkpoints_uri = storage.join(self.output, outputs.CHECKPOINTS)
        self.fields = result_fields(spec, task.image)

    # ------------------------------------------------------------ entry

    def run(self) -> outputs.Summary:
        storage.configure(self.spec.storage.endpoint_url, self.spec.storage.region, self.spec.storage.retry_seconds)
        signals.set_grace(self.spec.checkpoint.stop_grace_seconds)
        wall_start = time.monotonic()
        if not self.restart:
            done = self._completed_summary()
            if done is not None:
                self.reporter.event(
                    "completed", f"{self.output} is already complete; nothing to do", output=self.output
                )
                return done
        storage.check_writable(self.output)
        lease = Lease(
            self.output,
            wait_seconds=self.spec.checkpoint.lease_wait_seconds,
            log=lambda m: self.reporter.event("waiting", m),
            warn=self.reporter.warn,
        )
        lease.acquire()
        workdir = None
        try:
            if not self.restart:  # the run we waited for may have completed the job meanwhile
                done = self._completed_summary()
                if done is not None:
                    self.reporter.event(
                        "completed",
                        f"{self.output} was completed by the run we waited for; nothing to do",
                        output=self.output,
                    )
                    return done
            if self.restart:
                self._clear_output()
            if storage.is_remote(self.output):
                workdir = tempfile.mkdtemp(prefix="imgfit-")
                self.local = workdir
            else:
                self.local = storage.local_path(self.output)
            return self._run(wall_start)
        finally:
            lease.release()
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)

    def _completed_summary(self) -> outputs.Summary | None:
        return completion.completed(self.output, self.fields, self.reporter.warn)  # proven by the job's own record

    def _clear_output(self) -> None:
        """--restart: delete this job's files (and nothing else a user keeps beside them)."""
        self.reporter.event("restart", f"--restart: discarding earlier progress in {self.output}")
        for name in outputs.JOB_FILES:
            storage.delete(storage.join(self.output, name))
        for name in storage.list_names(self.output):  # interrupted writes' temp files
            if name.startswith((".tmp-", ".imgfit-write-probe-")):
                storage.delete(storage.join(self.output, name))
        storage.delete_matching(self.checkpoints_uri, made_by_job)
        storage.delete_matching(storage.join(self.output, tensorboard_log.FOLDER), tensorboard_log.is_event_file)

    # ------------------------------------------------------------ the job

    def _run(self, wall_start: float) -> outputs.Summary:
        data = read_image_bytes(self.task.image, memory.max_pixels(self.spec), self.spec.input.max_bytes)
        self._check_fits_host(data)  # from the header: a gigapixel image that cannot fit is refused undecoded
        target = decode_image(data, self.task.image, self.spec.train.color, memory.max_pixels(self.spec))
        del data
        device = devices.pick_device(self.spec.train.device)
        devices.configure(device, self.spec.train.deterministic, self.spec.train.threads, self.spec.train.precision)
        memory.check_device(
            self.task.image,
            device,
            target.width,
            target.height,
            target.channels,
            memory.param_bytes(self.spec, target.channels, target.width, target.height),
            FINAL_BAND_PIXELS,
        )
        pixels = _pixels(target, device)
        # what the spec leaves unset: from the image's size, and under a time budget from this
        # device's measured speed (imgfit_batch.recipe); a resumed run takes the recipe recorded
        # in its checkpoint, so the newest usable one is read before anything is built
        read = CheckpointManager(self.checkpoints_uri, self.spec.checkpoint.keep, self.reporter.warn).load()
        self.spec, self.derived, self.recipe = self._recipe(target, pixels, device, read)
        spec, cfg = self.spec, self.spec.train
        parts = self._build(target, device, pixels)
        resumes, wall_before = 0, 0.0

        def job_state() -> dict:
            return {
                "resumes": resumes,
                "wall_seconds": wall_before + (time.monotonic() - wall_start),
                "version": __version__,
                "encoder": video.encoder_identity(),
                "recipe": self.recipe,
            }

        checkpointer = Checkpointer(
            self.checkpoints_uri,
            spec.checkpoint.every_n_steps,
            spec.checkpoint.every_seconds,
            spec.checkpoint.keep,
            result_fields(spec, self.task.image),
            job_state,
            self.reporter.event,
            self.reporter.warn,
        )
        loaded = checkpointer.load(read)
        if loaded is not None:
            name, state = loaded
            _check_encoder(state, name)
            parts.load_state_dict(state["parts"])
            resumes, wall_before = int(state["resumes"]) + 1, float(state["wall_seconds"])
            self.reporter.event(
                "resumed",
                f"resuming from {name} (step {parts.budget.step}, frame {parts.filmer.frames})",
                checkpoint=name,
                step=parts.budget.step,
                frames=parts.filmer.frames,
                resumes=resumes,
            )
            del state
        del read, loaded  # the checkpoint's host copy: the parts hold what they need
        if spec.log.tensorboard:  # a resumed run starts its events at the step after its checkpoint
            events = tensorboard_log.EventLog(storage.join(self.output, tensorboard_log.FOLDER), parts.budget.step + 1)
            parts.log.events = parts.filmer.events = events
        record = outputs.JobRecord(
            # credentials in URLs (storage.endpoint_url) are redacted; result_fields hold none and must stay exact
            spec=redact_tree(resolved_dict(spec)),
            derived=self.derived,
            recipe=self.recipe,
            image=redact(self.task.image),
            task=self.task.record(),
            result_fields=self.fields,
            fingerprint=fingerprint(self.fields),
            width=target.width,
            height=target.height,
            device=devices.device_name(device),
        )
        storage.write_bytes(storage.join(self.output, outputs.SPEC), record.to_bytes())

        budget = parts.budget
        self.reporter.event(
            "start",
            f"training {self.task.image} ({target.width}x{target.height} {cfg.color}) "
            f"on {devices.device_name(device)}: {spec.model.kind}, "
            f"{budget.total_steps if budget.total_steps is not None else '?'} steps",
            image=self.task.image,
            output=self.output,
            device=devices.device_name(device),
            total_steps=budget.total_steps,
            step=budget.step,
        )
        live_csv = LiveCsv(
            parts.log, storage.join(self.output, outputs.LOSS), max(60.0, spec.log.every_seconds), self.reporter.warn
        )
        progress = TrainingProgress(self.reporter, live_csv, checkpointer, cfg.max_seconds)
        signals.install()
        try:
            self.reporter.start(budget.total_steps, budget.step, cfg.max_seconds)
            stop = signals.requested()
            if stop is not None and not budget.done():
                raise Interrupted(
                    f"by {stop} before training began (step {budget.step}); run the same command again to continue"
                )
            stop_reason = train(parts, checkpointer, signals.requested, progress) if not budget.done() else budget.why()
            if budget.step != checkpointer.last_step:
                checkpointer.save(parts, "end")
            checkpointer.wait()
            live_csv.close()  # its last upload lands before the final loss.csv, never after it
            progress.line(parts, force=True)  # the final line; loss.csv is published with the outputs
            self.reporter.close()
        except BaseException:
            self.reporter.close()
            parts.filmer.abandon()
            for settle in (checkpointer.wait, live_csv.close):  # a checkpoint, loss.csv on its way: still worth having
                try:
                    settle()
                except Exception:
                    pass
            raise
        # from here on a stop signal is ignored: finishing takes seconds and loses nothing
        return self._publish(parts, target, device, stop_reason, resumes, wall_before + (time.monotonic() - wall_start))

    def _check_fits_host(self, data: bytes) -> None:
        size = memory.header_size(data)
        if size is None or size[0] * size[1] > memory.max_pixels(self.spec):
            return  # decode_image says what is wrong
        channels = 1 if self.spec.train.color == "gray" else 3
        on_cpu = memory.device_type_for(self.spec.train.device) == "cpu"
        params = memory.param_bytes(self.spec, channels, *size) if on_cpu else 0  # on CUDA they live on the GPU
        memory.check_host(self.task.image, size[0], size[1], channels, len(data), params)

    def _recipe(
        self, target: Target, pixels: Pixels, device: torch.device, read: Loaded | None
    ) -> tuple[JobSpec, dict, dict]:
        """(the spec with what it leaves unset filled in, those values, the recipe's record).
        The checkpoint's recorded recipe wins; else a time budget calibrates on this device."""
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
                self.reporter.event(
                    "calibrating",
                    f"timing the training step at batches {batches} for ~{seconds:.1f}s "
                    f"on {devices.device_name(device)}",
                    batches=batches,
                )
                calibration = recipes.calibrate(
                    self._calibration_step(image_spec, pixels, device),
                    batches,
                    seconds,
                    device,
                    devices.device_name(device),
                )
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # the throwaway model's memory, and its graphs'
                chosen, why = recipes.choose(spec, image_derived, calibration)
        resolved, derived = spec.for_image(width, height, chosen)
        return resolved, derived, recipes.record(chosen or {}, why, calibration)

    def _calibration_step(self, spec: JobSpec, pixels: Pixels, device: torch.device) -> Callable[[int], None]:
        """One real training step (model, loss, backward, clip, Adam, the average) at a given
        batch, on a throwaway copy of the model; the job's own generators are left untouched."""
        cfg = spec.train
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            model = spec.model.build(pixels.channels, pixels.width, pixels.height).to(device)
        optimizer = self._optimizer(model, cfg)
        assert cfg.ema_decay is not None  # filled from the kind's defaults by JobSpec's validation
        averager, bf16 = Averager(model, cfg.ema_decay), self._bf16(model, device)
        step_fn = pick_step(device, averager)
        generator = torch.Generator().manual_seed(0)
        batches: dict[int, torch.Tensor] = {}

        def step(batch: int) -> None:
            if batch not in batches:
                batches[batch] = torch.randint(0, pixels.num_pixels, (batch,), generator=generator).to(device)
            xy, y = pixels.batch(batches[batch])
            step_fn(model, optimizer, xy, y, cfg.grad_clip, bf16)
            averager.update(model)

        return step

    def _optimizer(self, model: torch.nn.Module, cfg) -> Any:
        """Fused Adam (one pass, no temporaries: 3x on the CPU): on the CPU our FusedAdam, the same
        kernel without torch.optim's 0.9 s import of torch._dynamo; on CUDA torch's, which the
        graphed step captures."""
        adam = {k: v for k, v in (("eps", cfg.adam_eps), ("betas", cfg.adam_betas)) if v is not None}
        if next(model.parameters()).device.type == "cpu" and fused_adam.available():
            return fused_adam.FusedAdam(model.parameters(), lr=cfg.lr, **adam)
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True, **adam)

    def _bf16(self, model: torch.nn.Module, device: torch.device) -> bool:
        precision = self.spec.train.precision
        return precision == "bf16" or (
            precision == "auto" and getattr(model, "bf16_when_native", False) and devices.native_bf16(device)
        )

    def _build(self, target: Target, device: torch.device, pixels: Pixels | None = None) -> Parts:
        """The training parts, fresh (a checkpoint's state is loaded into them afterwards)."""
        spec, cfg = self.spec, self.spec.train
        pixels = pixels or _pixels(target, device)
        torch.manual_seed(cfg.seed)
        model = spec.model.build(target.channels, target.width, target.height).to(device)
        optimizer = self._optimizer(model, cfg)
        assert cfg.batch_size is not None and cfg.ema_decay is not None  # set: by the spec, its kind or for_image
        sampler = PixelSampler(pixels.num_pixels, cfg.batch_size, cfg.seed, device)
        segments_uri = storage.join(self.checkpoints_uri, "video") if storage.is_remote(self.output) else None
        log_uri = storage.join(self.checkpoints_uri, "log") if storage.is_remote(self.output) else None
        bf16 = self._bf16(model, device)
        averager = Averager(model, cfg.ema_decay)
        return Parts(
            model=model,
            optimizer=optimizer,
            pixels=pixels,
            sampler=sampler,
            budget=Budget(cfg.epochs, sampler.steps_per_epoch, cfg.max_seconds),
            schedule=Schedule(optimizer, cfg),
            averager=averager,
            filmer=Filmer(spec.video, pixels, device, os.path.join(self.local, outputs.CHECKPOINTS), segments_uri),
            log=LossLog(LogChunks(os.path.join(self.local, outputs.CHECKPOINTS, "log"), log_uri)),
            rng=RandomState(device),
            cfg=cfg,
            bf16=bf16,
            step_fn=pick_step(device, averager),
        )

    # ------------------------------------------------------------ the end

    def _publish(
        self, parts: Parts, target: Target, device: torch.device, stop_reason: str, resumes: int, wall_seconds: float
    ) -> outputs.Summary:
        budget, log, filmer = parts.budget, parts.log, parts.filmer
        staging = tempfile.mkdtemp(prefix="imgfit-out-")
        try:
            local_video = os.path.join(staging, outputs.VIDEO)
            segments = filmer.finish(local_video)  # raises unless video.mp4 decodes to filmer.frames frames
            final_model = parts.averager.model
            parts.sampler.release()  # the epoch's pixel order (4 bytes a pixel) is not needed any more
            # (H, W, C) uint8 on the host, fp32 arithmetic; rendered and scored in bands of rows
            final, psnr, ssim = render_final(final_model, parts.pixels.image(), device)
            steps, loss, psnr_steps, psnr_db = log.plot_series()  # thinned for plotting
            shrunk = (filmer.width, filmer.height) != (target.width, target.height)
            plot = training_plot(
                steps,
                loss,
                psnr_db,
                psnr_steps=psnr_steps,
                title=f"{image_stem(self.task.image)}: {self.spec.model.kind}, {budget.step} steps",
                psnr_title=(
                    f"PSNR of the frame ({filmer.width}x{filmer.height}) against the input box-filtered to frame size"
                )
                if shrunk
                else "PSNR of the full image",
            )
            files = {
                outputs.FINAL: outputs.png_bytes(final),
                outputs.MODEL: outputs.model_bytes(
                    final_model,
                    self.spec.model.model_dump(mode="json"),
                    self.spec.train.color,
                    target.width,
                    target.height,
                ),
                outputs.PROGRESS: plot,
            }
            for name, data in files.items():
                storage.write_bytes(storage.join(self.output, name), data)
            log.publish(storage.join(self.output, outputs.LOSS))  # sealed chunks + open rows, streamed
            if log.events is not None:
                log.events.sync()  # the last steps' events
            if segments:
                storage.upload_file(local_video, storage.join(self.output, outputs.VIDEO))
            summary = outputs.Summary(
                status="completed",
                steps=budget.step,
                epochs=parts.sampler.epochs_done,
                frames=filmer.frames,
                psnr_db=round(psnr, 4) if psnr != float("inf") else None,  # JSON has no infinity
                exact=psnr == float("inf"),  # final.png equals the input, pixel for pixel
                ssim=round(ssim, 5),
                final_loss=log.last_loss,
                wall_seconds=round(wall_seconds, 3),
                train_seconds=round(budget.train_seconds, 3),
                # of train_seconds, the loop's wait on filming (render, score, hand-over to the encoder)
                # and on periodic checkpoints (snapshot, and a previous write still in flight)
                # on CUDA the step is one CUDA graph (imgfit_batch.graphed) unless capture failed
                step={
                    "graphed": bool(getattr(parts.step_fn, "graphed", False)),
                    "capture_failed": getattr(parts.step_fn, "failed", None),
                },
                film_wait_seconds=round(budget.waited["film"], 3),
                checkpoint_wait_seconds=round(budget.waited["checkpoint"], 3),
                # this run's time writing TensorBoard events (null: log.tensorboard off)
                tensorboard_seconds=None if log.events is None else round(log.events.seconds, 3),
                resumes=resumes,
                device=devices.device_name(device),
                peak_memory_mb=devices.peak_memory_mb(device),
                stopped_by=stop_reason,
                image=self.task.image,
                width=target.width,
                height=target.height,
                color=self.spec.train.color,
                model=self.spec.model.kind,
                derived=self.derived,  # spec values that followed the image's size (and the device's speed)
                recipe=self.recipe,  # what decided them: the image, a calibration on the device, or the checkpoint
                task=self.task.record(),  # index, count, image, label, overrides (null: a lone image)
                planned_steps=budget.total_steps if budget.planned else None,
                video=outputs.VideoRecord.of_frames(filmer.width, filmer.height, self.spec.video.fps, segments),
                files=completion.published_files(self.output),  # what proves the job complete with spec.json
                version=__version__,
            )
            summary = outputs.Summary.model_validate(redact_tree(summary.model_dump(mode="json")))
            storage.write_bytes(storage.join(self.output, outputs.SUMMARY), summary.to_bytes())
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        try:
            filmer.delete_segments()  # the video is whole now
            log.delete_chunks()  # so is loss.csv
        except ImgfitError as exc:  # the job is complete all the same: leftovers only cost storage
            self.reporter.warn(
                f"could not delete the video segments or loss-log chunks under {self.checkpoints_uri} "
                f"({getattr(exc, 'detail', exc)}); the job is complete; they may be deleted by hand"
            )
        self.reporter.event(
            "completed",
            f"done: {budget.step} steps, {filmer.frames} frames, PSNR {psnr:.2f} dB -> {self.output}",
            steps=budget.step,
            frames=filmer.frames,
            psnr_db=summary.psnr_db,
            output=self.output,
        )
        return summary

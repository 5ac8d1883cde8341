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
from typing import Optional

import torch

from imgfit_batch import __version__, device as devices, metrics, outputs, plan, signals, storage
from imgfit_batch.checkpoint import Checkpointer, Lease, made_by_job
from imgfit_batch.data import Target, read_image
from imgfit_batch.errors import ImgfitError, Interrupted, SpecError
from imgfit_batch.film import Filmer
from imgfit_batch.losslog import LiveCsv, LogChunks, LossLog
from imgfit_batch.plan import Task
from imgfit_batch.plot import training_plot
from imgfit_batch.progress import Reporter, TrainingProgress
from imgfit_batch.redact import redact, redact_tree
from imgfit_batch.render import render
from imgfit_batch.spec import JobSpec, changed_fields, fingerprint, image_stem, resolved_dict, result_fields
from imgfit_batch.train import Averager, Budget, Parts, Pixels, PixelSampler, RandomState, Schedule, train


def resolve_task(spec: JobSpec, index: Optional[int]) -> tuple[JobSpec, Task]:
    """The task to run (imgfit_batch.plan: --index, JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID)
    and its spec, its sweep values applied."""
    return plan.resolve_task(spec, index)


class Job:
    def __init__(self, spec: JobSpec, task: Task, reporter: Reporter, restart: bool = False):
        self.spec, self.task, self.reporter, self.restart = spec, task, reporter, restart
        self.output = task.output
        self.checkpoints_uri = storage.join(self.output, "checkpoints")
        self.fields = result_fields(spec, task.image)

    # ------------------------------------------------------------ entry

    def run(self) -> dict:
        storage.configure(self.spec.storage.endpoint_url, self.spec.storage.region, self.spec.storage.retry_seconds)
        signals.set_grace(self.spec.checkpoint.stop_grace_seconds)
        wall_start = time.monotonic()
        if not self.restart:
            done = self._completed_summary()
            if done is not None:
                self.reporter.event("completed", f"{self.output} is already complete; nothing to do", output=self.output)
                return done
        storage.check_writable(self.output)
        lease = Lease(self.output, wait_seconds=self.spec.checkpoint.lease_wait_seconds,
                      log=lambda m: self.reporter.event("waiting", m), warn=self.reporter.warn)
        lease.acquire()
        workdir = None
        try:
            if not self.restart:  # the run we waited for may have completed the job meanwhile
                done = self._completed_summary()
                if done is not None:
                    self.reporter.event("completed", f"{self.output} was completed by the run we waited for; nothing to do",
                                        output=self.output)
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

    def _completed_summary(self) -> Optional[dict]:
        summary = outputs.read_json(storage.join(self.output, "summary.json"))
        if not summary or summary.get("status") != "completed":
            return None
        previous = outputs.read_json(storage.join(self.output, "spec.json"))
        if previous and "result_fields" in previous:
            changed = changed_fields(previous["result_fields"], self.fields)
            if changed:
                raise SpecError(
                    f"{self.output} holds a completed job made with a different spec (changed: {', '.join(changed)}); "
                    "use another output, or --restart to discard it"
                )
        return summary

    def _clear_output(self) -> None:
        """--restart: delete this job's files (and nothing else a user keeps beside them)."""
        self.reporter.event("restart", f"--restart: discarding earlier progress in {self.output}")
        for name in outputs.JOB_FILES:
            storage.delete(storage.join(self.output, name))
        for name in storage.list_names(self.output):  # interrupted writes' temp files
            if name.startswith((".tmp-", ".imgfit-write-probe-")):
                storage.delete(storage.join(self.output, name))
        storage.delete_matching(self.checkpoints_uri, made_by_job)

    # ------------------------------------------------------------ the job

    def _run(self, wall_start: float) -> dict:
        target = read_image(self.task.image, self.spec.train.color, self.spec.input.max_pixels, self.spec.input.max_bytes)
        # what follows the image's size (grid sizes, batch, ...) where the spec leaves it unset
        self.spec, self.derived = self.spec.for_image(target.width, target.height)
        spec, cfg = self.spec, self.spec.train
        device = devices.pick_device(cfg.device)
        devices.configure(device, cfg.deterministic, cfg.threads, cfg.precision)
        parts = self._build(target, device)
        resumes, wall_before = 0, 0.0

        def job_state() -> dict:
            return {"resumes": resumes, "wall_seconds": wall_before + (time.monotonic() - wall_start), "version": __version__}

        checkpointer = Checkpointer(self.checkpoints_uri, spec.checkpoint.every_n_steps, spec.checkpoint.every_seconds,
                                    spec.checkpoint.keep, result_fields(spec, self.task.image), job_state, self.reporter.event, self.reporter.warn)
        loaded = checkpointer.load()
        if loaded is not None:
            name, state = loaded
            parts.load_state_dict(state["parts"])
            resumes, wall_before = int(state["resumes"]) + 1, float(state["wall_seconds"])
            self.reporter.event("resumed", f"resuming from {name} (step {parts.budget.step}, frame {parts.filmer.frames})",
                                checkpoint=name, step=parts.budget.step, frames=parts.filmer.frames, resumes=resumes)
        storage.write_bytes(storage.join(self.output, "spec.json"), outputs.json_bytes(
            # credentials in URLs (storage.endpoint_url) are redacted; result_fields hold none and must stay exact
            {"spec": redact_tree(resolved_dict(spec)), "derived": self.derived, "image": redact(self.task.image),
             "task": self.task.record(), "result_fields": self.fields,
             "fingerprint": fingerprint(self.fields), "width": target.width, "height": target.height,
             "device": devices.device_name(device)}))

        budget = parts.budget
        self.reporter.event("start", f"training {self.task.image} ({target.width}x{target.height} {cfg.color}) "
                            f"on {devices.device_name(device)}: {spec.model.kind}, "
                            f"{budget.total_steps if budget.total_steps is not None else '?'} steps",
                            image=self.task.image, output=self.output, device=devices.device_name(device),
                            total_steps=budget.total_steps, step=budget.step)
        live_csv = LiveCsv(parts.log, storage.join(self.output, "loss.csv"), max(60.0, spec.log.every_seconds))
        progress = TrainingProgress(self.reporter, live_csv, checkpointer, cfg.max_seconds)
        signals.install()
        try:
            self.reporter.start(budget.total_steps, budget.step, cfg.max_seconds)
            stop = signals.requested()
            if stop is not None and not budget.done():
                raise Interrupted(f"by {stop} before training began (step {budget.step}); run the same command again to continue")
            stop_reason = train(parts, checkpointer, signals.requested, progress) if not budget.done() else budget.why()
            if budget.step != checkpointer.last_step:
                checkpointer.save(parts, "end")
            checkpointer.wait()
            progress.line(parts, force=True)  # the final line; loss.csv is published with the outputs
            self.reporter.close()
        except BaseException:
            self.reporter.close()
            parts.filmer.abandon()
            try:
                checkpointer.wait()  # a checkpoint already on its way is still worth having
            except Exception:
                pass
            raise
        # from here on a stop signal is ignored: finishing takes seconds and loses nothing
        return self._publish(parts, target, device, stop_reason, resumes, wall_before + (time.monotonic() - wall_start))

    def _build(self, target: Target, device: torch.device) -> Parts:
        """The training parts, fresh (a checkpoint's state is loaded into them afterwards)."""
        spec, cfg = self.spec, self.spec.train
        torch.manual_seed(cfg.seed)
        model = spec.model.build(target.channels, target.width, target.height).to(device)
        adam = {k: v for k, v in (("eps", cfg.adam_eps), ("betas", cfg.adam_betas)) if v is not None}
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True, **adam)  # fused: one pass, no temporaries (3x on CPU)
        pixels = Pixels(torch.from_numpy(target.pixels.reshape(-1, target.channels)).to(device), target.width, target.height)
        sampler = PixelSampler(pixels.num_pixels, cfg.batch_size, cfg.seed, device)
        segments_uri = storage.join(self.checkpoints_uri, "video") if storage.is_remote(self.output) else None
        log_uri = storage.join(self.checkpoints_uri, "log") if storage.is_remote(self.output) else None
        bf16 = cfg.precision == "bf16" or (
            cfg.precision == "auto" and getattr(model, "bf16_when_native", False) and devices.native_bf16(device))
        return Parts(
            model=model, optimizer=optimizer, pixels=pixels, sampler=sampler,
            budget=Budget(cfg.epochs, sampler.steps_per_epoch, cfg.max_seconds),
            schedule=Schedule(optimizer, cfg), averager=Averager(model, cfg.ema_decay),
            filmer=Filmer(spec.video, pixels, device, os.path.join(self.local, "checkpoints"), segments_uri),
            log=LossLog(LogChunks(os.path.join(self.local, "checkpoints", "log"), log_uri)),
            rng=RandomState(device), cfg=cfg, bf16=bf16)

    # ------------------------------------------------------------ the end

    def _publish(self, parts: Parts, target: Target, device: torch.device, stop_reason: str, resumes: int,
                 wall_seconds: float) -> dict:
        budget, log, filmer = parts.budget, parts.log, parts.filmer
        staging = tempfile.mkdtemp(prefix="imgfit-out-")
        try:
            local_video = os.path.join(staging, "video.mp4")
            segments = filmer.finish(local_video)  # raises unless video.mp4 decodes to filmer.frames frames
            final_model = parts.averager.model
            final_t = render(final_model, target.width, target.height, device)  # (H, W, C) uint8, fp32 arithmetic
            psnr = float(metrics.psnr(final_t, parts.pixels.image()))
            ssim = float(metrics.ssim(final_t, parts.pixels.image()))
            final = final_t.cpu().numpy()
            del final_t
            steps, loss, psnr_steps, psnr_db = log.plot_series()  # thinned for plotting
            plot = training_plot(steps, loss, psnr_db, psnr_steps=psnr_steps,
                                 title=f"{image_stem(self.task.image)}: {self.spec.model.kind}, {budget.step} steps")
            files = {
                "final.png": outputs.png_bytes(final),
                "model.pt": outputs.model_bytes(final_model, self.spec.model.model_dump(mode="json"),
                                                self.spec.train.color, target.width, target.height),
                "progress.png": plot,
            }
            for name, data in files.items():
                storage.write_bytes(storage.join(self.output, name), data)
            log.publish(storage.join(self.output, "loss.csv"))  # sealed chunks + open rows, streamed
            if segments:
                storage.upload_file(local_video, storage.join(self.output, "video.mp4"))
            summary = {
                "status": "completed",
                "steps": budget.step,
                "epochs": parts.sampler.epochs_done,
                "frames": filmer.frames,
                "psnr_db": round(psnr, 4) if psnr != float("inf") else None,  # JSON has no infinity
                "exact": psnr == float("inf"),  # final.png equals the input, pixel for pixel
                "ssim": round(ssim, 5),
                "final_loss": log.last_loss,
                "wall_seconds": round(wall_seconds, 3),
                "train_seconds": round(budget.train_seconds, 3),
                "resumes": resumes,
                "device": devices.device_name(device),
                "peak_memory_mb": devices.peak_memory_mb(device),
                "stopped_by": stop_reason,
                "image": self.task.image,
                "width": target.width,
                "height": target.height,
                "color": self.spec.train.color,
                "model": self.spec.model.kind,
                "derived": self.derived,  # spec values that followed the image's size
                "task": self.task.record(),  # index, count, image, label, overrides (null: a lone image)
                "planned_steps": budget.total_steps if budget.planned else None,
                "video": {"width": filmer.width, "height": filmer.height, "fps": self.spec.video.fps, "segments": segments},
                "version": __version__,
            }
            storage.write_bytes(storage.join(self.output, "summary.json"), outputs.json_bytes(redact_tree(summary)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        try:
            filmer.delete_segments()  # the video is whole now
            log.delete_chunks()  # so is loss.csv
        except ImgfitError as exc:  # the job is complete all the same: leftovers only cost storage
            self.reporter.warn(f"could not delete the video segments or loss-log chunks under {self.checkpoints_uri} "
                               f"({getattr(exc, 'detail', exc)}); the job is complete; they may be deleted by hand")
        self.reporter.event("completed", f"done: {budget.step} steps, {filmer.frames} frames, PSNR {psnr:.2f} dB -> {self.output}",
                            steps=budget.step, frames=filmer.frames, psnr_db=summary["psnr_db"], output=self.output)
        return summary

"""One job, start to finish: spec -> image -> training -> video -> outputs.

    lease the output; read the image; resume from the newest complete checkpoint
    (or start); train, streaming frames into the video and checkpointing as
    configured; on a stop signal checkpoint and exit 75; at the end join the
    video and publish video.mp4, loss.csv, final.png, model.pt, summary.json
    (summary.json last: it is what marks the job completed).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from imgfit_batch import __version__, metrics, outputs, signals, storage, video
from imgfit_batch.checkpoint import CheckpointManager, Lease
from imgfit_batch.data import Target, decode_image
from imgfit_batch.errors import Interrupted, SpecError, UnavailableError
from imgfit_batch.plot import training_plot
from imgfit_batch.progress import Reporter
from imgfit_batch.render import render
from imgfit_batch.spec import JobSpec, changed_fields, fingerprint, image_stem, resolved_dict, result_fields
from imgfit_batch.train import Trainer

@dataclass
class Task:
    """One image of the spec and where its outputs go."""

    image: str
    output: str
    index: Optional[int]


def resolve_task(spec: JobSpec, index: Optional[int]) -> Task:
    images = spec.images
    if isinstance(spec.image, str):
        if index not in (None, 0):
            raise SpecError(f"--index {index}: the spec has a single image (only index 0 exists)")
        return Task(images[0], spec.output, None)
    if index is None:
        for var in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"):
            if os.environ.get(var, "").strip():
                try:
                    index = int(os.environ[var])
                except ValueError:
                    raise SpecError(f"{var}={os.environ[var]!r}: not an integer index") from None
                break
    if index is None:
        raise SpecError(
            f"image: the spec lists {len(images)} images; pick one with --index N "
            "(or JOB_COMPLETION_INDEX / SLURM_ARRAY_TASK_ID)"
        )
    if not 0 <= index < len(images):
        raise SpecError(f"image: index {index} is out of range; the spec lists {len(images)} images (0..{len(images) - 1})")
    return Task(images[index], storage.join(spec.output, image_stem(images[index])), index)


def pick_device(choice: str) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if choice == "cuda":
        raise UnavailableError("train.device: cuda was asked for, but no CUDA GPU is visible (check --gpus / nvidia.com/gpu); use device: auto to fall back to the CPU")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


class Job:
    def __init__(self, spec: JobSpec, task: Task, reporter: Reporter, restart: bool = False):
        self.spec, self.task, self.reporter, self.restart = spec, task, reporter, restart
        self.output = task.output
        self.checkpoints_uri = storage.join(self.output, "checkpoints")
        self.segments_uri = storage.join(self.checkpoints_uri, "video")
        self.fields = result_fields(spec, task.image)
        self._last_checkpoint_step = -1
        self._last_checkpoint_time = time.monotonic()
        self._last_publish = time.monotonic()
        self._published_step = -1

    # ------------------------------------------------------------ entry

    def run(self) -> dict:
        storage.configure(self.spec.storage.endpoint_url, self.spec.storage.region)
        wall_start = time.monotonic()
        if not self.restart:
            done = self._completed_summary()
            if done is not None:
                self.reporter.event("completed", f"{self.output} is already complete; nothing to do", output=self.output)
                return done
        storage.check_writable(self.output)
        lease = Lease(self.output, wait_seconds=self.spec.checkpoint.lease_wait_seconds,
                      log=lambda m: self.reporter.event("waiting", m))
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
            if storage.is_s3(self.output):
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
        storage.delete_tree(self.checkpoints_uri)

    # ------------------------------------------------------------ the job

    def _run(self, wall_start: float) -> dict:
        spec, train_cfg, video_cfg = self.spec, self.spec.train, self.spec.video
        target = decode_image(storage.read_bytes(self.task.image, what="image"), self.task.image,
                              train_cfg.color, spec.input.max_pixels)
        if train_cfg.deterministic:  # cuBLAS reads this when CUDA starts
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if train_cfg.threads is not None:
            torch.set_num_threads(train_cfg.threads)
        device = pick_device(train_cfg.device)
        if device.type == "cuda":
            configure_cuda(train_cfg.deterministic)

        torch.manual_seed(train_cfg.seed)
        model = spec.model.build(target.channels).to(device)
        fw, fh = video.frame_size(target.width, target.height, video_cfg.max_side)
        target_t = torch.from_numpy(target.pixels.reshape(-1, target.channels)).to(device)
        trainer = Trainer(model, train_cfg, video_cfg, target_t, target.width, target.height, fw, fh, device)

        ckpts = CheckpointManager(self.checkpoints_uri, spec.checkpoint.keep, self.reporter.warn)
        loaded = ckpts.load()
        resumes, wall_before, pending = 0, 0.0, None
        if loaded is not None:
            state = loaded.state
            changed = changed_fields(json.loads(state["result_fields"]), self.fields)
            if changed:
                raise SpecError(
                    f"{self.output} holds a job made with a different spec (changed: {', '.join(changed)}); "
                    "restore those fields, use another output, or --restart to discard its progress"
                )
            trainer.load_state_dict(state)
            resumes, wall_before = int(state["resumes"]) + 1, float(state["wall_seconds"])
            pending = state["video_pending"].numpy()
            self._last_checkpoint_step = trainer.step
            self.reporter.event("resumed", f"resuming from {loaded.name} (step {trainer.step}, frame {trainer.frames})",
                                checkpoint=loaded.name, step=trainer.step, frames=trainer.frames, resumes=resumes)
        self.resumes, self.wall_before, self.wall_start = resumes, wall_before, wall_start
        storage.write_bytes(storage.join(self.output, "spec.json"), outputs.json_bytes(
            {"spec": resolved_dict(spec), "image": self.task.image, "result_fields": self.fields,
             "fingerprint": fingerprint(self.fields), "width": target.width, "height": target.height}))

        seg_dir = os.path.join(self.local, "checkpoints", "video")
        self.writer = video.SegmentWriter(
            seg_dir, fw, fh, target.channels, video_cfg.fps, video_cfg.crf, video_cfg.preset,
            start_frame=trainer.frames, pending=pending, on_closed=self._segment_closed)
        self.ckpts, self.trainer, self.device = ckpts, trainer, device

        self.reporter.event("start", f"training {self.task.image} ({target.width}x{target.height} {train_cfg.color}) "
                            f"on {device_name(device)}: {spec.model.kind}, "
                            f"{trainer.total_steps if trainer.total_steps is not None else '?'} steps",
                            image=self.task.image, output=self.output, device=device_name(device),
                            total_steps=trainer.total_steps, step=trainer.step)
        signals.install()
        try:
            self.reporter.start(trainer.total_steps, trainer.step, train_cfg.max_seconds)
            stop = signals.requested()
            if stop is not None and not trainer.finished():
                raise Interrupted(f"by {stop} before training began (step {trainer.step}); run the same command again to continue")
            if not trainer.finished():
                stop_reason = trainer.train(self)
            else:
                stop_reason = trainer.stop_reason
            if trainer.step != self._last_checkpoint_step:
                self._checkpoint("end")
            self.ckpts.wait()
            self.reporter.update(trainer.step, trainer.epoch, self._last_loss(), trainer.optimizer.param_groups[0]["lr"],
                                 trainer.last_psnr, trainer.train_seconds, train_cfg.max_seconds, force=True)
            self.reporter.close()
        except BaseException:
            self.reporter.close()
            self.writer.abandon()
            try:
                self.ckpts.wait()  # a checkpoint already on its way is still worth having
            except Exception:
                pass
            raise
        # from here on a stop signal is ignored: finishing takes seconds and loses nothing
        return self._finish(target, stop_reason)

    # ------------------------------------------------------------ hooks called by the trainer

    def frame(self, trainer: Trainer, image: torch.Tensor) -> None:
        self.writer.add(image)  # a fresh tensor per frame; the writer thread copies it to the host

    def after_step(self, trainer: Trainer) -> None:
        cfg = self.spec.checkpoint
        now = time.monotonic()
        if self.reporter.should_report():
            trainer.flush_log()
            self.reporter.update(trainer.step, trainer.epoch, self._last_loss(), trainer.optimizer.param_groups[0]["lr"],
                                 trainer.last_psnr, trainer.train_seconds, self.spec.train.max_seconds)
        stop = signals.requested()
        if stop is not None:
            self._checkpoint(f"signal {stop}", wait=True)
            self.writer.abandon()
            raise Interrupted(
                f"by {stop} at step {trainer.step}; checkpoint saved to {self.checkpoints_uri}; "
                "run the same command again to resume"
            )
        due_steps = cfg.every_n_steps is not None and trainer.step % cfg.every_n_steps == 0
        due_time = cfg.every_seconds is not None and now - self._last_checkpoint_time >= cfg.every_seconds
        if (due_steps or due_time) and not trainer.finished():
            self._checkpoint("periodic")
        elif now - self._last_publish >= max(60.0, self.spec.log.every_seconds):
            self._publish_log()

    # ------------------------------------------------------------ checkpoints and publishing

    def _segment_closed(self, j: int, path: str) -> None:
        """Writer thread: make a finished segment durable where the checkpoints live."""
        if storage.is_s3(self.output):
            storage.upload_file(path, storage.join(self.segments_uri, video.segment_name(j)))
        else:
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())

    def _checkpoint(self, reason: str, wait: bool = False) -> None:
        """Snapshot now; serialise and write in the background (never two in flight).
        `wait`: return only once it is complete (a stop signal, the end of training)."""
        t0 = time.monotonic()
        self.writer.sync()  # every closed segment is durable before the checkpoint that counts on it
        state = self.trainer.state_dict()
        state.update(
            video_pending=torch.from_numpy(self.writer.open_frames()),
            resumes=self.resumes,
            wall_seconds=self.wall_before + (time.monotonic() - self.wall_start),
            result_fields=json.dumps(self.fields, sort_keys=True),
            version=__version__,
        )
        last = self.trainer.rows[-1] if self.trainer.rows else None
        summary = {
            "total_steps": self.trainer.total_steps, "epoch": self.trainer.epoch, "frames": self.trainer.frames,
            "loss": last.loss if last else None, "psnr_db": self.trainer.last_psnr, "resumes": self.resumes,
            "train_seconds": round(self.trainer.train_seconds, 3), "reason": reason}
        step, paused = self.trainer.step, time.monotonic() - t0
        log_csv = outputs.loss_csv(self.trainer.rows)

        def done(name: str, size: int, seconds: float) -> None:
            if step >= self._published_step:  # never replace a newer loss.csv with this older one
                storage.write_bytes(storage.join(self.output, "loss.csv"), log_csv)
            self.reporter.event("checkpoint", f"saved {name} ({size / 1e6:.1f} MB, {reason}): training paused "
                                f"{paused:.2f}s, written in {seconds:.2f}s", step=step, checkpoint=name, bytes=size,
                                reason=reason, paused_seconds=round(paused, 3), write_seconds=round(seconds, 3))

        self.ckpts.save_in_background(state, summary, done)
        self._last_checkpoint_step = step
        self._last_checkpoint_time = self._last_publish = time.monotonic()
        if wait:
            self.ckpts.wait()

    def _publish_log(self) -> None:
        self.trainer.flush_log()
        self._published_step = self.trainer.step
        storage.write_bytes(storage.join(self.output, "loss.csv"), outputs.loss_csv(self.trainer.rows))
        self._last_publish = time.monotonic()

    def _last_loss(self) -> Optional[float]:
        return self.trainer.rows[-1].loss if self.trainer.rows else None

    # ------------------------------------------------------------ the end

    def _finish(self, target: Target, stop_reason: str) -> dict:
        trainer, writer = self.trainer, self.writer
        writer.finish()
        segments = []
        for j in range(video.num_segments(trainer.frames, writer.k)):
            path = os.path.join(self.local, "checkpoints", "video", video.segment_name(j))
            if not os.path.exists(path):
                storage.download_file(storage.join(self.segments_uri, video.segment_name(j)), path, what="video segment")
            segments.append(path)
        staging = tempfile.mkdtemp(prefix="imgfit-out-")
        try:
            final_t = render(trainer.model, target.width, target.height, self.device)
            final = final_t.cpu().numpy()
            psnr = outputs.psnr_db(final, target.pixels)
            ssim = float(metrics.ssim(final_t.float() / 255, trainer.target.view(final_t.shape).float() / 255))
            rows = trainer.rows
            plot = training_plot([r.step for r in rows], [r.loss for r in rows], [r.psnr_db for r in rows],
                                 title=f"{image_stem(self.task.image)}: {self.spec.model.kind}, {trainer.step} steps")
            files = {
                "final.png": outputs.png_bytes(final),
                "model.pt": outputs.model_bytes(trainer.model, self.spec.model.model_dump(mode="json"),
                                                self.spec.train.color, target.width, target.height),
                "loss.csv": outputs.loss_csv(trainer.rows),
                "progress.png": plot,
            }
            for name, data in files.items():
                storage.write_bytes(storage.join(self.output, name), data)
            if segments:
                local_video = os.path.join(staging, "video.mp4")
                video.concat(segments, local_video)
                storage.upload_file(local_video, storage.join(self.output, "video.mp4"))
            summary = {
                "status": "completed",
                "steps": trainer.step,
                "epochs": trainer.epoch + (trainer.batch / trainer.steps_per_epoch),
                "frames": trainer.frames,
                "psnr_db": round(psnr, 4) if psnr != float("inf") else None,  # JSON has no infinity
                "exact": psnr == float("inf"),  # final.png equals the input, pixel for pixel
                "ssim": round(ssim, 5),
                "final_loss": trainer.rows[-1].loss if trainer.rows else None,
                "wall_seconds": round(self.wall_before + (time.monotonic() - self.wall_start), 3),
                "train_seconds": round(trainer.train_seconds, 3),
                "resumes": self.resumes,
                "device": device_name(self.device),
                "peak_memory_mb": peak_memory_mb(self.device),
                "stopped_by": stop_reason,
                "image": self.task.image,
                "width": target.width,
                "height": target.height,
                "color": self.spec.train.color,
                "model": self.spec.model.kind,
                "video": {"width": writer.width, "height": writer.height, "fps": self.spec.video.fps,
                          "segments": len(segments)},
                "version": __version__,
            }
            storage.write_bytes(storage.join(self.output, "summary.json"), outputs.json_bytes(summary))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        # the video is whole now; its segments are no longer needed to finish the job
        if storage.is_s3(self.output):
            for j in range(len(segments)):
                storage.delete(storage.join(self.segments_uri, video.segment_name(j)))
        else:
            shutil.rmtree(os.path.join(self.local, "checkpoints", "video"), ignore_errors=True)
        self.reporter.event("completed", f"done: {trainer.step} steps, {trainer.frames} frames, PSNR {psnr:.2f} dB -> {self.output}",
                            steps=trainer.step, frames=trainer.frames, psnr_db=summary["psnr_db"], output=self.output)
        return summary


def peak_memory_mb(device: torch.device) -> dict:
    """This process's peak resident memory, and the GPU's peak allocation when on CUDA."""
    import resource

    peak = {"host": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # Linux: KiB
    if device.type == "cuda":
        peak["cuda"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def configure_cuda(deterministic: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: hashgrid's backward (grid_sample, index_add_) has no deterministic CUDA
        # kernel; torch warns for those instead of failing the job
        torch.use_deterministic_algorithms(True, warn_only=True)

"""What the job tells people while it runs.

On a terminal: a rich progress bar on stderr. Elsewhere (Kubernetes logs, Slurm
out files): one JSON object per line on stdout, every `log.every_seconds`.
Warnings and errors are plain lines on stderr either way.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

from imgfit_batch.redact import redact

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def _line(text: str) -> None:
    """One whole line per write, so lines from the checkpoint thread never interleave."""
    sys.stdout.write(redact(text) + "\n")
    sys.stdout.flush()


class Reporter:
    def __init__(self, every_seconds: float = 10.0, tty: bool | None = None):
        self.every_seconds = every_seconds
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._progress: Progress | None = None  # the bar, on a terminal from start() to close()
        self._task: TaskID | None = None  # its task, added with it
        self._last = 0.0
        self._start = time.monotonic()

    # -- messages

    def event(self, name: str, message: str = "", **fields: Any) -> None:
        if self.tty:
            text = redact(message or " ".join(f"{k}={v}" for k, v in fields.items()))
            self._console().print(f"[bold]{name}[/bold] {text}", highlight=False)
        else:
            _line(json.dumps({"event": name, **({"message": message} if message else {}), **fields}))

    def warn(self, message: str) -> None:
        message = redact(message)
        if self.tty:
            self._console().print(f"[yellow]warning:[/yellow] {message}", highlight=False)
        else:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def _console(self):
        if self._progress is not None:
            return self._progress.console
        from rich.console import Console

        return Console(stderr=True)

    # -- progress

    def start(self, total: int | None, done: int, budget_seconds: float | None) -> None:
        self._start = time.monotonic()
        self._total, self._done0 = total, done
        if not self.tty:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("PSNR {task.fields[psnr]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            refresh_per_second=4,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=done, epoch=0, loss="-", psnr="-")

    def should_report(self) -> bool:
        interval = 0.25 if self.tty else self.every_seconds
        return time.monotonic() - self._last >= interval

    def update(
        self,
        step: int,
        epoch: int,
        loss: float | None,
        lr: float,
        psnr: float | None,
        train_seconds: float,
        budget_seconds: float | None,
        force: bool = False,
        total: int | None = None,
    ) -> None:
        if not force and not self.should_report():
            return
        if total is not None and total != self._total:  # a time budget was just planned in steps
            self._total = total
            if self._progress is not None:
                assert self._task is not None  # added with the bar
                self._progress.update(self._task, total=total)
        if force and step == getattr(self, "_last_step", None):
            return  # this step was just reported
        self._last, self._last_step = time.monotonic(), step
        eta = self._eta(step, train_seconds, budget_seconds)
        if self.tty and self._progress is not None:
            assert self._task is not None  # added with the bar
            self._progress.update(
                self._task,
                completed=step,
                epoch=epoch,
                loss="-" if loss is None else f"{loss:.3g}",
                psnr="-" if psnr is None else f"{psnr:.2f} dB",
            )
            return
        record = {
            "event": "progress",
            "step": step,
            "total_steps": self._total,
            "epoch": epoch,
            "loss": loss,
            "lr": lr,
            "psnr_db": None if psnr is None else round(psnr, 3),
            "elapsed_seconds": round(train_seconds, 2),
            "eta_seconds": None if eta is None else round(eta, 1),
        }
        _line(json.dumps(record))

    def _eta(self, step: int, train_seconds: float, budget: float | None) -> float | None:
        rate_steps = step - self._done0
        elapsed = time.monotonic() - self._start
        eta = None
        if self._total is not None and rate_steps > 0:
            eta = (self._total - step) * elapsed / rate_steps
        if budget is not None:
            left = max(0.0, budget - train_seconds)
            eta = left if eta is None else min(eta, left)
        return eta

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class TrainingProgress:
    """Called after every training step: a progress line on the reporter's cadence,
    and loss.csv republished on its own cadence (`imgfit_batch.losslog.LiveCsv`:
    at checkpoints and every `publish_every` seconds while small, then each time it
    has grown by a quarter), so `status` and people watching the output see the run move."""

    def __init__(self, reporter: Reporter, live_csv, checkpointer, max_seconds: float | None):
        self.reporter, self.live_csv, self.checkpointer = reporter, live_csv, checkpointer
        self.max_seconds = max_seconds

    def __call__(self, parts) -> None:
        if self.reporter.should_report():
            self.line(parts)
        self.live_csv.maybe_publish(checkpointed=self.checkpointer.last_step == parts.budget.step)

    def line(self, parts, force: bool = False) -> None:
        """A progress line now (`force`: even if this step was just reported)."""
        self.reporter.update(
            parts.budget.step,
            parts.sampler.epoch,
            parts.log.last_loss,
            parts.optimizer.param_groups[0]["lr"],
            parts.log.last_psnr,
            parts.budget.train_seconds,
            self.max_seconds,
            force=force,
            total=parts.budget.total_steps,
        )

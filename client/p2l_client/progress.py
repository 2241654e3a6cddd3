"""Live views: a job's rich progress bar over all its epochs with one line per epoch, and an
upload's or a download's bar (bytes sent or received of the total, speed, time left)."""

import os
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from p2l_client.responses import TERMINAL, EpochMetrics, Job


def format_seconds(seconds: float | None) -> str:
    """``75`` -> ``1:15``; ``3700`` -> ``1:01:40``; None -> ``?``."""
    if seconds is None:
        return "?"
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_metrics(metrics: EpochMetrics | dict[str, Any]) -> str:
    """``loss 0.512  acc 0.810  val 0.780`` from an epoch's metrics."""
    parts = []
    if metrics.get("train_loss") is not None:
        parts.append(f"loss {metrics['train_loss']:.3f}")
    if metrics.get("train_accuracy") is not None:
        parts.append(f"acc {metrics['train_accuracy']:.3f}")
    if metrics.get("val_accuracy") is not None:
        parts.append(f"val {metrics['val_accuracy']:.3f}")
    return "  ".join(parts)


ENDED_PHASES = ("done", "failed", "cancelled")


class NoView:
    """The view of ``wait(progress=False)``: shows nothing."""

    def __enter__(self) -> "NoView":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def job(self, job: Job) -> None:
        """Ignore."""

    def status(self, data: dict[str, Any]) -> None:
        """Ignore."""

    def phase(self, data: dict[str, Any]) -> None:
        """Ignore."""

    def epoch(self, data: dict[str, Any]) -> None:
        """Ignore."""

    def step(self, data: dict[str, Any]) -> None:
        """Ignore."""


class JobProgressView(NoView):
    """Overall bar (epochs done of planned), phase label, last epoch's metrics, ETA.

    Fed by whole jobs (at connect, at the end, when polling) and by the stream's small
    events; each finished epoch is also printed as a line above the bar. When the console
    is not a terminal (a log, a pipe), there is no bar: one line per phase, per epoch and
    at the end, so the log keeps the whole story.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            TextColumn("{task.fields[epochs]}", markup=False),
            TextColumn("{task.fields[metrics]}", markup=False),
            TextColumn("{task.fields[eta]}", markup=False),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.live,
        )
        self.task: TaskID | None = None
        self.done = 0.0
        self.planned: int | None = None
        self.printed = 0  # epoch lines printed so far (of the current attempt)
        self.seen: list[tuple[Any, Any]] = []  # (phase, epoch) of those lines
        self.attempt: int | None = None
        self.label = "waiting"
        self.shown_label: str | None = None  # the last label printed (no terminal)
        self.phase_name: str | None = None
        self.started = time.monotonic()
        self.ended = False  # the final line is printed once

    def __enter__(self) -> "JobProgressView":
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=None, epochs="", metrics="", eta="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def epochs_text(self) -> str:
        """``3/10 epochs``."""
        done = int(self.done)
        return f"{done}/{self.planned} epochs" if self.planned else f"{done} epochs"

    def _update(self, eta: float | None = None, ended: bool = False, **fields: Any) -> None:
        shown_eta = "" if ended or eta is None else f"ETA {format_seconds(eta)}"
        if not self.live:
            if ended and not self.ended:
                elapsed = format_seconds(time.monotonic() - self.started)
                self._line(f"{self.label}: {self.epochs_text()} (waited {elapsed})")
            elif self.label != self.shown_label:
                self._line(f"{self.label}: {self.epochs_text()} {shown_eta}")
            self.shown_label, self.ended = self.label, self.ended or ended
            return
        if self.task is None:
            return
        total: float | None = float(self.planned) if self.planned else None
        completed = self.done
        if ended:
            total = max(total or 0.0, self.done, 1.0)
            completed = total if self.label == "done" else self.done
        self.progress.update(
            self.task,
            description=self.label,
            total=total,
            completed=completed,
            epochs=self.epochs_text(),
            eta=shown_eta,
            **fields,
        )

    def _line(self, text: str) -> None:
        self.progress.console.print(text.rstrip(), highlight=False, markup=False)

    def _epoch_line(
        self, metrics: dict[str, Any], epochs: int | None, eta: Any = None, where: bool = False
    ) -> None:
        phase = metrics.get("phase") or self.phase_name or ""
        of = f"/{epochs}" if epochs else ""
        line = f"{phase} epoch {metrics.get('epoch', '?')}{of}  {format_metrics(metrics)}"
        if where and not self.live:  # where the whole job stands, since no bar shows it
            line += f"  [{self.epochs_text()}{f', ETA {format_seconds(eta)}' if eta else ''}]"
        self._line(line)
        self.printed += 1
        self.seen.append((metrics.get("phase"), metrics.get("epoch")))

    def job(self, job: Job) -> None:
        """A whole job: at connect, at the end, or when polling."""
        progress = job.get("progress") or {}
        status = job["status"]
        history = progress.get("history") or []
        # A retried job starts its history over: print the new attempt's epochs from the
        # start instead of waiting for it to outgrow what the first attempt printed.
        keys = [(m.get("phase"), m.get("epoch")) for m in history]
        retried = self.attempt is not None and job.get("attempts") != self.attempt
        if retried or keys[: self.printed] != self.seen:
            self.printed, self.seen = 0, []
        self.attempt = job.get("attempts", self.attempt)
        for metrics in history[self.printed :]:
            self._epoch_line(dict(metrics), None)
        self.done = float(progress.get("epochs_done") or 0)
        self.planned = progress.get("epochs_planned") or self.planned
        self.phase_name = progress.get("phase") or self.phase_name
        ended = status in TERMINAL
        if status == "succeeded":
            self.label = "done"
        elif ended:
            reason = f": {job['error']}" if job.get("error") else ""
            self.label = f"{status}{reason}"[:120]
        elif status == "queued":
            self.label = "queued"
        else:
            self.label = _label(progress) or status
        fields = {"metrics": format_metrics(history[-1]) if history else ""}
        self._update(progress.get("eta_seconds"), ended=ended, **fields)

    def status(self, data: dict[str, Any]) -> None:
        """``event: status``."""
        if data.get("status") == "queued":
            self.label = "queued"
            self._update()

    def phase(self, data: dict[str, Any]) -> None:
        """``event: phase``."""
        if data.get("phase") in ENDED_PHASES:
            return  # the `end` event follows with the whole job; it closes the view
        self.phase_name = data.get("phase") or self.phase_name
        self.label = _label(data) or self.label
        self.done = float(data.get("epochs_done") or self.done)
        self.planned = data.get("epochs_planned") or self.planned
        self._update()

    def epoch(self, data: dict[str, Any]) -> None:
        """``event: epoch``: one line with the metrics, and the bar moves on."""
        metrics = dict(data.get("metrics") or {})
        metrics.setdefault("phase", data.get("phase"))
        metrics.setdefault("epoch", data.get("epoch"))
        self.done = float(data.get("epochs_done") or self.done)
        self.planned = data.get("epochs_planned") or self.planned
        self._epoch_line(metrics, data.get("epochs"), data.get("eta_seconds"), where=True)
        self._update(data.get("eta_seconds"), metrics=format_metrics(metrics))

    def step(self, data: dict[str, Any]) -> None:
        """``event: step``: the bar moves within the epoch."""
        done = float(data.get("epochs_done") or 0)
        steps = data.get("steps_per_epoch") or 0
        if steps:
            done += min(1.0, (data.get("step") or 0) / steps)
        self.done = done
        self.planned = data.get("epochs_planned") or self.planned
        self._update(data.get("eta_seconds"))


def _label(progress: Mapping[str, Any]) -> str | None:
    label = progress.get("label") or progress.get("phase")
    return None if label is None else str(label)


class TransferView:
    """An upload's or a download's bar on stderr: the file's name, bytes sent or received
    of the total (when known), the speed and the time left. Shown on a terminal only (and
    with ``show``): in a log or a pipe it prints nothing, the command's answer says what
    was sent or written."""

    def __init__(self, console: Console | None = None, show: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not (show and self.console.is_terminal),
        )
        self.task: TaskID | None = None

    def __enter__(self) -> "TransferView":
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def start(self, name: str, total: int | None) -> None:
        """The transfer of ``name`` begins; ``total`` bytes, if known."""
        self.task = self.progress.add_task(name, total=total)

    def update(self, done: int) -> None:
        """``done`` bytes so far (fewer than before when a retry starts over)."""
        if self.task is not None:
            self.progress.update(self.task, completed=done)

    def finish(self, done: int) -> None:
        """The whole body went through: the bar shows it complete, total or not."""
        if self.task is not None:
            self.progress.update(self.task, total=done, completed=done)


# The name of the download bar before uploads had one too.
DownloadView = TransferView


class CountedFile:
    """A file an upload reads through: where it stands moves the bar (``report``). A retry
    rewinds it (httpx seeks every file part to its start before sending it), and the bar
    goes back with it."""

    def __init__(self, file: IO[bytes], report: Callable[[], None]) -> None:
        self.file = file
        self.report = report
        self.position = _tell(file)

    def read(self, size: int = -1) -> bytes:
        """Read as the file does, and move the bar."""
        chunk = self.file.read(size)
        self.position += len(chunk)
        self.report()
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Seek as the file does (httpx measures the length so, then rewinds)."""
        self.position = self.file.seek(offset, whence)
        self.report()
        return self.position

    def tell(self) -> int:
        """Where the file stands."""
        return self.position


def _tell(file: IO[bytes]) -> int:
    """Where ``file`` stands; 0 for one that cannot say (a pipe)."""
    try:
        return file.tell()
    except (AttributeError, OSError):
        return 0


def _size(file: IO[bytes]) -> int:
    """The size of a seekable ``file``, left where it stood."""
    here = file.tell()
    size = file.seek(0, os.SEEK_END)
    file.seek(here)
    return size


class UploadProgress:
    """The files of one upload read through ``CountedFile``s: bytes sent of them all."""

    def __init__(self, view: TransferView) -> None:
        self.view = view
        self.files: list[CountedFile] = []

    def count(self, file: IO[bytes]) -> CountedFile:
        """``file``, read through a counter."""
        counted = CountedFile(file, self.report)
        self.files.append(counted)
        return counted

    def start(self, name: str) -> None:
        """The bar, named ``name``, over the files' total size (if they can tell it)."""
        try:
            total: int | None = sum(_size(counted.file) for counted in self.files)
        except (AttributeError, OSError):  # a pipe or a socket: no size, no total
            total = None
        self.view.start(name, total)

    def report(self) -> None:
        """Move the bar to the bytes read of all files."""
        self.view.update(sum(counted.position for counted in self.files))

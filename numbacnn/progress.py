"""The Rich display of a training run: a bar per epoch with loss, accuracy, speed and time left.

On a terminal the bars update live; anywhere else (a log file, a pipe) only one line per finished epoch is
printed, since a live display there would repeat every bar when it ends.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from .train import BatchStats, EpochResult


class TrainingProgress:
    """Context manager whose ``batch``, ``validating`` and ``epoch`` methods are ``fit``'s callbacks."""

    def __init__(self, console: Console, epochs: int):
        self.epochs = epochs
        self.console = console
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[figures]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def batch(self, stats: BatchStats) -> None:
        if self.task is None:
            self.task = self.progress.add_task("", total=stats.batches, epoch=stats.epoch, epochs=self.epochs,
                                               figures="starting...")
        figures = f"loss {stats.loss:.4f}  acc {stats.accuracy:.2%}  {stats.images_per_s:,.0f} img/s"
        self.progress.update(self.task, completed=stats.batch, figures=figures)

    def validating(self, images: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, figures=f"validating on {images:,} images...")

    def epoch(self, result: EpochResult) -> None:
        self.task = None  # the finished bar stays on screen; the next epoch gets its own
        scores = f"loss {result.loss:.4f}, train acc {result.accuracy:.2%}"
        if result.val_accuracy is not None:
            scores += f", val loss {result.val_loss:.4f}, val acc {result.val_accuracy:.2%}"
        best = " (best so far)" if result.best and result.val_accuracy is not None else ""
        self.progress.console.print(f"epoch {result.epoch}/{self.epochs}: {scores}{best}, "
                                    f"{result.images_per_s:,.0f} img/s, {result.seconds:.1f} s")

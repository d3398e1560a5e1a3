"""The Rich progress display of a training run: a bar per epoch with loss, accuracy and images/s."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .train import BatchStats, EpochResult


class TrainingProgress:
    """Context manager whose ``batch`` and ``epoch`` methods are ``fit``'s callbacks."""

    def __init__(self, console: Console, epochs: int):
        self.epochs = epochs
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}  {task.fields[speed]:,.0f} img/s"),
            TimeElapsedColumn(),
            console=console,
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
                                               loss=0.0, acc=0.0, speed=0.0)
        self.progress.update(self.task, completed=stats.batch, loss=stats.loss, acc=stats.accuracy,
                             speed=stats.images_per_s)

    def epoch(self, result: EpochResult) -> None:
        self.task = None  # the finished bar stays on screen; the next epoch gets its own
        if result.test_accuracy is not None:
            self.progress.console.print(
                f"epoch {result.epoch}/{self.epochs}: loss {result.loss:.4f}, train acc {result.accuracy:.2%}, "
                f"test acc {result.test_accuracy:.2%}, {result.images_per_s:,.0f} img/s, {result.seconds:.1f} s"
            )

"""What a training run keeps beside its ``--output`` file, and the checks made before any training starts.

For ``--output model.npz``:

``model.npz``             the best epoch so far, by validation accuracy (without validation, the newest), as a
                          checkpoint; a worse epoch never replaces it. At the end it also gets the whole run's
                          metrics and the test score.
``model.resume.npz``      the run as it stood after the newest epoch, or after the last step before Ctrl-C:
                          weights, optimiser, position, random state. ``numbacnn train --resume model.npz``
                          continues from it; it is removed when the run ends normally.
``model.metrics.jsonl``   one JSON line per finished epoch (training and validation loss and accuracy).
``.model.npz.lock``       held while a run writes these files, so that a second run cannot mix its files in.
"""

from __future__ import annotations

import fcntl
import json
import os
import zipfile
from pathlib import Path
from typing import Any

from . import checkpoint
from .errors import OutputError


class RunOutputs:
    """The files of one run's ``--output``; a context manager that holds their lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.resume_path = self.path.with_suffix(".resume.npz")
        self.metrics_path = self.path.with_suffix(".metrics.jsonl")
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._lock = None

    # -- before training ---------------------------------------------------------------------------------

    def check(self) -> None:
        """An ``OutputError`` unless every file can be written: the folder exists (or can be made) and is
        writable, and each path is absent or a regular file (a checkpoint, for the output itself)."""
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"Cannot make the folder {folder} for --output ({error.strerror}); choose another path.") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"Cannot write into {folder}; choose an --output in a folder you can write to.")
        for path in (self.path, self.resume_path, self.metrics_path):
            if path.exists() and not path.is_file():
                raise OutputError(f"{path} exists and is not a regular file; choose another --output.")
        if self.path.is_file() and not _is_checkpoint(self.path):
            raise OutputError(f"{self.path} exists and is not a numbacnn checkpoint, so it is not overwritten; "
                              f"choose another --output or move that file away.")

    def __enter__(self) -> RunOutputs:
        """Takes the lock (an ``OutputError`` when another run holds it); also proves the folder writable."""
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise OutputError(f"Cannot write into {self.path.parent} ({error.strerror}); choose another --output.") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise OutputError(f"Another numbacnn run (process {holder}) is writing {self.path}; wait for it to "
                                  f"finish or choose another --output.") from None
            # The holder removes the file when it finishes: a lock taken on a removed file locks nothing.
            if _same_file(fd, self.lock_path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self.lock_path.unlink(missing_ok=True)  # while still holding it, so no one locks a removed file
            os.close(self._lock)
            self._lock = None

    def unwritten(self) -> RunOutputs:
        """The same paths, for a process that must not write them (all but the first of a parallel run)."""
        return _Unwritten(self.path)

    # -- while training ----------------------------------------------------------------------------------

    def save_best(self, model, metadata: dict[str, Any]) -> None:
        checkpoint.save(model, self.path, metadata)

    def save_resume(self, model, optimizer, run, settings: dict[str, Any]) -> None:
        checkpoint.save_resume(self.resume_path, model, optimizer, run, settings)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrites the JSON-lines file from the history (a few hundred bytes an epoch), atomically."""
        lines = "".join(json.dumps(row) + "\n" for row in history).encode()
        checkpoint.write_atomically(self.metrics_path, lambda f: f.write(lines))

    def finish(self) -> None:
        """The run ended normally: nothing is left to resume."""
        self.resume_path.unlink(missing_ok=True)


class _Unwritten(RunOutputs):
    """The outputs as a process that does not write them sees them: every call does nothing."""

    def check(self) -> None:
        pass

    def __enter__(self) -> RunOutputs:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def save_best(self, model, metadata) -> None:
        pass

    def save_resume(self, model, optimizer, run, settings) -> None:
        pass

    def write_metrics(self, history) -> None:
        pass

    def finish(self) -> None:
        pass


def _is_checkpoint(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return "__meta__.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

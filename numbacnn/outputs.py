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

The output must end in ``.npz``, so that no two outputs share these names. Every file is written atomically
(``numbacnn.files``); a run taking the lock first removes the temporary files a killed run left. A new run
never replaces an output whose run is waiting to be resumed unless told to (``restart``), and a resumed run
checks that the checkpoint beside its resume state is the one it saved there.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Any

from . import checkpoint
from .errors import CheckpointError, OutputError
from .files import remove_stale_temporaries, write_atomically

SUFFIX = ".npz"
RESUME_SUFFIX = ".resume.npz"
# The lock file holds a process id: anything larger, or linked elsewhere, is not ours to truncate.
_LOCK_MAX_BYTES = 64


class RunOutputs:
    """The files of one run's ``--output``; a context manager that holds their lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.name or self.path.name in (".", ".."):
            raise OutputError(f"The --output {str(path)!r} is not a file name; give one ending in {SUFFIX}, e.g. "
                              f"model{SUFFIX}.")
        self.resume_path = self.path.with_suffix(RESUME_SUFFIX)
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
        # The names beside the output are derived from it: without these rules two outputs could share them.
        if self.path.suffix != SUFFIX or self.path.stem in ("", "-"):
            raise OutputError(f"The --output {self.path} should be a file name ending in {SUFFIX}, e.g. model{SUFFIX}.")
        if self.path.name.endswith(RESUME_SUFFIX):
            raise OutputError(f"The --output {self.path} ends in {RESUME_SUFFIX}, as the resume state of another "
                              f"output does; choose another name.")

    def check_new_run(self, *, restart: bool = False) -> None:
        """For a run that starts afresh: an ``OutputError`` when an interrupted run at this output waits to be
        resumed, unless ``restart`` says to throw it away (its resume state is then removed: call this
        while holding the lock)."""
        if not os.path.lexists(self.resume_path):
            return
        if restart:
            self.resume_path.unlink(missing_ok=True)
            return
        raise OutputError(f"{self.path} belongs to an interrupted run that can still be continued (its state is "
                          f"in {self.resume_path}); continue it with `numbacnn train --resume {self.path}`, or "
                          f"start afresh over it with --restart.")

    def __enter__(self) -> RunOutputs:
        """Takes the lock (an ``OutputError`` when another run holds it); also proves the folder writable.
        Then removes the temporary files that a killed run on this output left behind."""
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as error:
                if os.path.islink(self.lock_path):
                    raise OutputError(f"{self.lock_path} is a link, not a numbacnn lock file; remove it (nothing "
                                      f"of numbacnn's is lost) and run again.") from None
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
        if not _is_own_lock_file(fd):
            os.close(fd)
            raise OutputError(f"{self.lock_path} is not a numbacnn lock file, so it is not overwritten; move it "
                              f"away and run again.")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock = fd
        for path in (self.path, self.resume_path, self.metrics_path):
            remove_stale_temporaries(path)
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
        """Saves the run as it stands, with the digest of the checkpoint beside it, which ``load_resume``
        checks."""
        checkpoint.save_resume(self.resume_path, model, optimizer, run, settings, best=self.path)

    def load_resume(self, *, device="cpu"):
        """(model, optimiser, ``RunState``, settings) of the interrupted run at this output; a
        ``CheckpointError`` when there is none, or when the checkpoint beside it is not the one it saved."""
        if not self.resume_path.is_file():
            raise CheckpointError(
                f"There is no run to resume at {self.path}: {self.resume_path} is missing (it is removed when a run "
                f"ends normally); start a new run with `numbacnn train`."
            )
        return checkpoint.load_resume(self.resume_path, device=device, best=self.path)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrites the JSON-lines file from the history (a few hundred bytes an epoch), atomically."""
        lines = "".join(json.dumps(row) + "\n" for row in history).encode()
        write_atomically(self.metrics_path, lambda f: f.write(lines))

    def finish(self) -> None:
        """The run ended normally: nothing is left to resume."""
        self.resume_path.unlink(missing_ok=True)


class _Unwritten(RunOutputs):
    """The outputs as a process that does not write them sees them: every call does nothing."""

    def check(self) -> None:
        pass

    def check_new_run(self, *, restart: bool = False) -> None:
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


def _is_own_lock_file(fd: int) -> bool:
    """Whether the opened lock file is one numbacnn may truncate: a small regular file of this user's with no
    other name (a hard link to someone's file would otherwise be emptied)."""
    info = os.fstat(fd)
    owner_ok = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and info.st_size <= _LOCK_MAX_BYTES and owner_ok


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

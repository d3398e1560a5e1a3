"""Writing files so that nothing is lost: every file numbacnn writes goes through ``write_atomically``.

A file is written to a new temporary file beside its target (created exclusively, so a link or file planted
at the temporary name is never followed or truncated) and then renamed over the target, so a crash, a full
disk or a kill leaves the old file or the new one, never half of one; a link at the target is replaced, its
target never touched. A failed write ends in one sentence (an ``OutputError``) that says where and why,
with the previous file kept as it was.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import OutputError

TEMPORARY_SUFFIX = ".tmp"
# Opened for a new file only: never through a link, never an existing file.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Calls ``write`` on a new file beside ``path`` and renames it over ``path``: a crash leaves the old file
    or the new one, never half of one. An ``OutputError`` when the place cannot be written (full, read-only,
    a folder at ``path``...), with the previous file untouched; any other error from ``write`` passes
    through, also leaving no temporary file behind."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        if os.path.isdir(path) and not os.path.islink(path):  # refused before anything is written
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        # A new file, so it gets the permissions the umask gives, as any saved file does.
        with os.fdopen(os.open(tmp, _NEW_FILE, 0o666), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        raise cannot_write(path, error) from None
    except BaseException:
        _remove(tmp)
        raise
    return path


def cannot_write(path: Path, error: OSError) -> OutputError:
    """The one sentence for a file that could not be written at ``path``."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        advice = "free some space there or choose another place"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "choose a place you can write to"
    elif error.errno == errno.EISDIR:
        advice = "choose a file name, not a folder"
    else:
        advice = "choose another place"
    kept = "; the file that was there is kept as it was" if os.path.lexists(path) else ""
    return OutputError(f"Cannot write {path} ({reason}){kept}; {advice}.")


def temporary_path(path: Path) -> Path:
    """A fresh temporary name beside ``path``: hidden, and named after it so the next run can clear it."""
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Removes the temporary files that writes of ``path`` left behind when killed mid-write; returns them.
    Call it only while no other process may be writing ``path`` (a run holds its lock)."""
    removed = []
    try:
        candidates = list(path.parent.glob(f".{_glob_escape(path.name)}.*{TEMPORARY_SUFFIX}"))
    except OSError:
        return removed
    for candidate in candidates:
        try:
            if stat.S_ISREG(candidate.lstat().st_mode):
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            pass
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass

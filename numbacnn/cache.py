"""The per-user cache folder: downloaded data sets and compiled kernels.

Nothing is ever written inside the installed package. Numba's ``cache=True`` would otherwise put compiled
kernels in ``__pycache__`` folders next to the sources, in site-packages: files that pip does not know about,
so an uninstall leaves them behind (and the leftover folder then hides a later editable install), and a
read-only install could not cache at all. ``use_kernel_cache`` points Numba at the user's cache instead,
before any kernel is compiled.

Why an upgrade never runs kernels compiled from older code: the kernel folder is named after the numbacnn
version, and within it Numba keys every cached kernel on its source file's modification time and size and on
Numba's own version, so an edited or reinstalled source file (pip writes files afresh) is compiled again.
Numba does not follow a kernel's calls into other files, so a kernel module keeps the compiled helpers it
shares with its CUDA twin in the same file (see ``numbacnn.augment.cpu``); after editing a kernel helper
in another file of an editable install, delete the kernel folder that ``numbacnn data where`` shows.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

CACHE_DIR_ENV = "NUMBACNN_CACHE_DIR"
NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: the argument, else ``NUMBACNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/numbacnn``, else
    ``~/.cache/numbacnn`` (the platform convention on Linux; the same path elsewhere)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_DIR_ENV, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "numbacnn"


def kernel_cache_dir(version: str) -> Path:
    """Where compiled kernels go: ``NUMBA_CACHE_DIR`` when set, else ``<cache folder>/numba/<version>``, else
    (when that cannot be written) a folder of this user's in the system's temporary directory."""
    from_env = os.environ.get(NUMBA_CACHE_ENV, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    preferred = resolve_cache_dir() / "numba" / version
    if _writable(preferred):
        return preferred
    user = os.environ.get("USER") or str(os.getuid() if hasattr(os, "getuid") else "user")
    fallback = Path(tempfile.gettempdir()) / f"numbacnn-{user}"
    if not _private(fallback):  # someone else's, or open to others: a new private folder instead
        fallback = Path(tempfile.mkdtemp(prefix=f"numbacnn-{user}-"))
    return fallback / "numba" / version


def use_kernel_cache(version: str) -> Path:
    """Makes Numba cache compiled kernels in ``kernel_cache_dir(version)``; call before any kernel module is
    imported (a ``cache=True`` kernel picks its folder when it is defined)."""
    folder = kernel_cache_dir(version)
    os.environ[NUMBA_CACHE_ENV] = str(folder)  # for processes started from this one, and for numba's first import
    import numba.core.config

    numba.core.config.CACHE_DIR = str(folder)  # numba may have read its settings before this ran
    return folder


def outside_missing_home(folder: Path) -> bool:
    """False when ``folder`` lies in a home folder that does not exist: numbacnn makes its own folders,
    never a missing home (a mistyped or unset HOME)."""
    try:
        home = Path.home()
    except (KeyError, RuntimeError):  # no home at all
        return True
    return home.is_dir() or not folder.expanduser().absolute().is_relative_to(home)


def _writable(folder: Path) -> bool:
    if not outside_missing_home(folder):
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False


def _private(folder: Path) -> bool:
    """Whether ``folder`` (created if missing) is a directory of this user's that no one else may write to.

    Numba unpickles the kernel index files it finds, so a folder another user could put files in, under a
    name anyone can guess in the shared temporary directory, would run their code as this user."""
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()  # a planted symbolic link is not a directory
    except OSError:
        return False
    owner_ok = not hasattr(os, "getuid") or info.st_uid == os.getuid()  # elsewhere the temp folder is per user
    return stat.S_ISDIR(info.st_mode) and owner_ok and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)

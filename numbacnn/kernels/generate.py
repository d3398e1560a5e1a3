"""Writing kernel source as text and importing it as a module, so that Numba's on-disk cache keeps working.

A generated kernel is specialised to one layer geometry: its loop bounds and blocking are constants in the
source, which lets LLVM keep a block of accumulators in vector registers (see ``simd``). The source goes to a
file in the kernel cache folder named after a digest of its text, and is imported from there: Numba's
``cache=True`` keys compiled code on a file's path and modification time, so the same geometry in a later
process loads its machine code instead of compiling it again, and a change in the generator (or in the vector
intrinsics, whose source is part of the digest) writes a new file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable

from . import simd

_loaded: dict[str, ModuleType] = {}

# Called with a few words for each kernel whose source is written for the first time, just before Numba
# compiles it (a few seconds each, once per geometry and machine): the command line says so, so that a first run
# is not a silent wait.
on_new_kernel: Callable[[str], None] | None = None


def _intrinsics_digest() -> str:
    return hashlib.sha256(Path(simd.__file__).read_bytes()).hexdigest()[:12]


def generated_dir() -> Path:
    """The folder generated kernel modules are written to: ``generated`` inside Numba's cache folder."""
    import numba.core.config

    base = numba.core.config.CACHE_DIR or os.path.join(tempfile.gettempdir(), f"numbacnn-{os.getuid()}")
    return Path(base) / "generated"


def load_module(kind: str, source: str, what: str = "") -> ModuleType:
    """The module made from ``source`` (written once per distinct text, then imported from the file); ``what``
    names it for ``on_new_kernel``."""
    digest = hashlib.sha256(f"{_intrinsics_digest()}\n{source}".encode()).hexdigest()[:20]
    name = f"numbacnn_generated_{kind}_{digest}"
    if name in _loaded:
        return _loaded[name]
    folder = generated_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    if not path.is_file() or path.read_text() != source:
        if on_new_kernel is not None:
            on_new_kernel(what or kind)
        _write_atomically(path, source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's cache looks the module up by name when it pickles the index
    spec.loader.exec_module(module)
    _loaded[name] = module
    return module


def _write_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename: a process that imports the module at
    the same moment sees the whole file or none."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class Source:
    """Lines of Python with indentation, for the generators."""

    def __init__(self):
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, *lines: str) -> "Source":
        for line in lines:
            self.lines.append("    " * self.depth + line)
        return self

    def indent(self) -> "_Indent":
        return _Indent(self)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class _Indent:
    def __init__(self, source: Source):
        self.source = source

    def __enter__(self):
        self.source.depth += 1

    def __exit__(self, *exc):
        self.source.depth -= 1

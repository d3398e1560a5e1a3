"""Checkpoints: the architecture and the weights in one ``.npz`` file, written atomically.

The file holds ``__meta__`` (JSON: format version, input shape, and per layer its registry name, the package
and version that provided it, and its config), one array per parameter, ``layer<i>.<name>``, and one per
array of non-trainable state, ``state<i>.<name>`` (a block's arrays are named ``<child>.<name>``). It is
written to a temporary file beside the target and renamed over it, so a crash never leaves a half-written
checkpoint. Version 1 files, from before layers had state, load as they are.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from .errors import CheckpointError, NumbacnnError
from .model import Sequential
from .registry import registry

FORMAT = "numbacnn-checkpoint"
VERSION = 2
MAX_INPUT_SIDE = 4096  # a larger input axis is a corrupt header, not an image this engine trains on


def save(model: Sequential, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Writes ``model`` (built) and ``metadata`` (JSON-serialisable: data set, epochs, accuracy...) to ``path``."""
    return _write(Path(path), _header(model, metadata), _model_arrays(model))


def save_resume(path: str | Path, model: Sequential, optimizer, run, settings: dict[str, Any]) -> Path:
    """Writes what a run needs to go on where it stopped: the model as it is now (a checkpoint of its own),
    the optimiser's step count and moments (``optim.<parameter>.<slot>``), the ``RunState``, the random
    generators' states, and ``settings`` (how the run was started, JSON-serialisable)."""
    steps, moments = optimizer.get_state(model)
    header = _header(model, {"resume": {"settings": settings, "run": run.as_dict(), "random": model.get_random_state(),
                                        "optimizer": {**optimizer.get_config(), "steps": steps}}})
    arrays = {**_model_arrays(model), **{f"optim.{k}": v for k, v in moments.items()}}
    return _write(Path(path), header, arrays)


def load_resume(path: str | Path, *, device="cpu"):
    """(model, optimiser, ``RunState``, settings) from a file ``save_resume`` wrote, ready to continue."""
    from .optim import make_optimizer
    from .train import RunState

    model, meta, extra = _load(Path(path), device, extra_prefix="optim.")
    try:
        resume = meta["resume"]
        config = dict(resume["optimizer"])
        steps = config.pop("steps")
        optimizer = make_optimizer(**config)
        optimizer.set_state(model, steps, {k.removeprefix("optim."): v for k, v in extra.items()})
        model.set_random_state(resume["random"])
        run = RunState.from_dict(resume["run"])
        return model, optimizer, run, dict(resume["settings"])
    except (KeyError, TypeError, ValueError, AttributeError, NumbacnnError) as error:
        raise CheckpointError(f"{path} is not a state to resume from ({error}); start the run again.") from None


def _header(model: Sequential, metadata: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "input_shape": list(model.input_shape),
        "layers": [_describe(layer) for layer in model.layers],
        "metadata": metadata or {},
    }


def _model_arrays(model: Sequential) -> dict[str, np.ndarray]:
    arrays = {}
    for i, weights in enumerate(model.get_weights()):
        arrays.update({f"layer{i}.{k}": v for k, v in weights.items()})
    for i, state in enumerate(model.get_state()):
        arrays.update({f"state{i}.{k}": v for k, v in state.items()})
    return arrays


def _write(path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Writes the header and arrays as an .npz at ``path``, atomically."""
    arrays = {"__meta__": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays}
    return write_atomically(path, lambda f: np.savez(f, **arrays))


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Calls ``write`` on a new file beside ``path`` and renames it over ``path``: a crash leaves the old file
    or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        # A new file ("x"), so it gets the permissions the umask gives, as any saved file does.
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _describe(layer) -> dict[str, Any]:
    entry = registry.entry_for(type(layer))
    return {"name": layer.name, "package": entry.package, "version": entry.version, "config": layer.get_config()}


def load(path: str | Path, *, device="cpu") -> tuple[Sequential, dict[str, Any]]:
    """The model saved at ``path``, built on ``device`` with its weights, and the metadata saved with it."""
    model, meta, _ = _load(Path(path), device)
    return model, meta


def _load(path: Path, device, extra_prefix: str | None = None) -> tuple[Sequential, dict[str, Any], dict]:
    """(model, metadata, the arrays whose names start with ``extra_prefix``); any other array that belongs
    to no layer makes the file corrupt."""
    meta, arrays = _read(path)
    layers = [_make(i, d, path) for i, d in enumerate(meta["layers"])]
    odd = next((f"{k!r} of {v.dtype}" for k, v in arrays.items() if v.dtype not in (np.float32, np.float64)), None)
    if odd:
        raise CheckpointError(f"{path} holds an array {odd} where float32 or float64 were expected; it is corrupt.")
    dtype = next(iter(arrays.values())).dtype if arrays else np.float32
    try:
        model = Sequential(layers, input_shape=tuple(meta["input_shape"]))
        model.build(dtype=dtype, device=device)
    except NumbacnnError as error:
        raise CheckpointError(f"{path} describes a network that cannot be built ({_clause(error)}); it is corrupt.") from None
    saved = {"layer": [{} for _ in layers], "state": [{} for _ in layers]}
    extra = {}
    for key, value in arrays.items():
        if extra_prefix and key.startswith(extra_prefix):
            extra[key] = value
            continue
        if not np.isfinite(value).all():
            raise CheckpointError(f"{path} holds NaN or infinite numbers in {key!r}, as a diverged run leaves; "
                                  f"train it again, with a smaller learning rate.")
        index, _, name = key.partition(".")
        owner = re.fullmatch(r"(layer|state)(\d+)", index)
        if owner is None or int(owner[2]) >= len(layers):
            raise CheckpointError(f"{path} holds an array {key!r} that belongs to no layer; it is corrupt.")
        saved[owner[1]][int(owner[2])][name] = value
    try:
        model.set_weights(saved["layer"])
        if meta["version"] >= 2:  # older files come from before layers had state
            model.set_state(saved["state"])
    except NumbacnnError as error:
        raise CheckpointError(f"{path} does not match its own architecture ({_clause(error)}); it is corrupt.") from None
    metadata = meta.get("metadata", {})
    return model, metadata if isinstance(metadata, dict) else {}, extra


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}; train one with `numbacnn train --output {path}`.")
    if not zipfile.is_zipfile(path):  # np.load would read it as .npy or offer to unpickle it
        raise CheckpointError(f"{path} is not a readable numbacnn checkpoint (not an .npz archive); train or copy it again.")
    _check_unpacked_size(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["__meta__"]).decode())
            arrays = {k: npz[k] for k in npz.files if k != "__meta__"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, EOFError, MemoryError) as error:
        raise CheckpointError(f"{path} is not a readable numbacnn checkpoint ({error}); train or copy it again.") from None
    if (not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("version"), int)
            or meta["version"] > VERSION):
        raise CheckpointError(
            f"{path} is not a numbacnn checkpoint of version <= {VERSION}; upgrade numbacnn or train it again."
        )
    if not _describes_network(meta):
        raise CheckpointError(f"{path} does not describe its layers and input shape; it is corrupt, train or copy it again.")
    return meta, arrays


def _clause(error: Exception) -> str:
    """An error's sentence, to quote inside another one: without its full stop."""
    return str(error).rstrip(".")


def _check_unpacked_size(path: Path) -> None:
    """Refuses an archive whose arrays, unpacked, would not fit in memory (before unpacking them)."""
    from .device import get_device

    try:
        with zipfile.ZipFile(path) as archive:
            size = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable numbacnn checkpoint ({error}); train or copy it again.") from None
    free = get_device("cpu").free_memory()
    if free is not None and size > free:
        raise CheckpointError(f"{path} unpacks to {size / 1e9:.1f} GB, more than the {free / 1e9:.1f} GB of memory "
                              f"free; load it on a machine with more memory, or check that it is the right file.")


def _describes_network(meta: dict) -> bool:
    """Whether the header lists its layers (name, package, config each) and a plausible input shape."""
    shape, layers = meta.get("input_shape"), meta.get("layers")
    shape_ok = (isinstance(shape, list) and 1 <= len(shape) <= 3
                and all(type(d) is int and 0 < d <= MAX_INPUT_SIDE for d in shape))
    layers_ok = isinstance(layers, list) and bool(layers) and all(
        isinstance(d, dict) and isinstance(d.get("name"), str) and isinstance(d.get("package"), str)
        and isinstance(d.get("config"), dict) for d in layers)
    return shape_ok and layers_ok


def _make(index: int, described: dict, path) -> Any:
    from .spec import LayerSpec, make_layer

    name, package = described["name"], described["package"]
    try:
        entry = registry.lookup(name if package == "numbacnn" else f"{package}:{name}")
    except NumbacnnError:
        raise CheckpointError(
            f"{path} needs layer {name!r} from package {package} {described.get('version', '')}, which is not "
            f"installed; install it with: pip install {package}"
        ) from None
    try:
        return make_layer(LayerSpec(entry.qualified_name, [], described["config"]))
    except NumbacnnError as error:
        raise CheckpointError(f"{path}: layer {index + 1} ({name}) has a config that does not work ({_clause(error)}); "
                              f"it is corrupt, train or copy it again.") from None

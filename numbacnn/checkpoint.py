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
from typing import Any

import numpy as np

from .errors import CheckpointError, NumbacnnError
from .model import Sequential
from .registry import registry

FORMAT = "numbacnn-checkpoint"
VERSION = 2


def save(model: Sequential, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Writes ``model`` (built) and ``metadata`` (JSON-serialisable: data set, epochs, accuracy...) to ``path``."""
    path = Path(path)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "input_shape": list(model.input_shape),
        "layers": [_describe(layer) for layer in model.layers],
        "metadata": metadata or {},
    }
    arrays = {"__meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for i, weights in enumerate(model.get_weights()):
        arrays.update({f"layer{i}.{k}": v for k, v in weights.items()})
    for i, state in enumerate(model.get_state()):
        arrays.update({f"state{i}.{k}": v for k, v in state.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        # A new file ("x"), so it gets the permissions the umask gives, as any saved file does.
        with open(tmp, "xb") as f:
            np.savez(f, **arrays)
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
    meta, arrays = _read(Path(path))
    layers = [_make(i, d, path) for i, d in enumerate(meta["layers"])]
    model = Sequential(layers, input_shape=tuple(meta["input_shape"]))
    dtype = next(iter(arrays.values())).dtype if arrays else np.float32
    model.build(dtype=dtype, device=device)
    saved = {"layer": [{} for _ in layers], "state": [{} for _ in layers]}
    for key, value in arrays.items():
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
        raise CheckpointError(f"{path} does not match its own architecture ({error}); it is corrupt.") from None
    return model, meta.get("metadata", {})


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}; train one with `numbacnn train --output {path}`.")
    if not zipfile.is_zipfile(path):  # np.load would read it as .npy or offer to unpickle it
        raise CheckpointError(f"{path} is not a readable numbacnn checkpoint (not an .npz archive); train or copy it again.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["__meta__"]).decode())
            arrays = {k: npz[k] for k in npz.files if k != "__meta__"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, EOFError) as error:
        raise CheckpointError(f"{path} is not a readable numbacnn checkpoint ({error}); train or copy it again.") from None
    if (not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("version"), int)
            or meta["version"] > VERSION):
        raise CheckpointError(
            f"{path} is not a numbacnn checkpoint of version <= {VERSION}; upgrade numbacnn or train it again."
        )
    if not isinstance(meta.get("layers"), list) or not isinstance(meta.get("input_shape"), list):
        raise CheckpointError(f"{path} does not describe its layers and input shape; it is corrupt, train or copy it again.")
    return meta, arrays


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
    return make_layer(LayerSpec(entry.qualified_name, [], described["config"]))

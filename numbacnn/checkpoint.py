"""Checkpoints: the architecture and the weights in one ``.npz`` file, written atomically.

The file holds ``__meta__`` (JSON: format version, input shape, and per layer its registry name, the package
and version that provided it, and its config), one array per parameter, ``layer<i>.<name>``, and one per
array of non-trainable state, ``state<i>.<name>`` (a block's arrays are named ``<child>.<name>``). It is
written to a temporary file beside the target and renamed over it, so a crash never leaves a half-written
checkpoint. Version 1 files, from before layers had state, load as they are.

Reading trusts nothing: the header alone is unpacked first (at most ``MAX_HEADER_BYTES``, nested at most
``MAX_NESTING`` deep), its input shape and layers are checked, the network is built from them (each layer's
parameters estimated before they are made), and only then are the arrays unpacked, none larger than the
largest array of that network; the metadata training writes (data set, history, scores) and a resume state's
position are checked for their types and ranges. A resume state keeps the SHA-256 of the checkpoint beside it,
so that a resumed run can tell when that file was replaced.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError, NumbacnnError
from .files import write_atomically
from .model import Sequential
from .registry import registry

FORMAT = "numbacnn-checkpoint"
VERSION = 2
MAX_INPUT_SIDE = 4096  # a larger input axis is a corrupt header, not an image this engine trains on
MAX_INPUT_VALUES = 4096 * 4096  # nor is an input of more values than a 4096-square picture
MAX_HEADER_BYTES = 64 << 20  # the JSON header: layers, settings, a run's history
MAX_NESTING = 32  # numbacnn writes headers a few levels deep
NPY_HEADER_BYTES = 4096  # room for an array's .npy header in an archive member
MAX_EPOCHS = 1_000_000  # in a saved history: more is an edited file, and would cost plots their memory
MAX_METRIC = 1e15  # a saved metric larger than this (a loss, a speed) is an edited file, not a run's figure


def save(model: Sequential, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Writes ``model`` (built) and ``metadata`` (JSON-serialisable: data set, epochs, accuracy...) to ``path``."""
    return _write(Path(path), _header(model, metadata), _model_arrays(model))


def save_resume(path: str | Path, model: Sequential, optimizer, run, settings: dict[str, Any],
                best: str | Path | None = None) -> Path:
    """Writes what a run needs to go on where it stopped: the model as it is now (a checkpoint of its own),
    the optimiser's step count and moments (``optim.<parameter>.<slot>``), the ``RunState``, the random
    generators' states, and ``settings`` (how the run was started, JSON-serialisable). With ``best`` (the
    run's checkpoint of its best epoch), the SHA-256 of that file too, which ``load_resume`` checks."""
    steps, moments = optimizer.get_state(model)
    resume = {"settings": settings, "run": run.as_dict(), "random": model.get_random_state(),
              "optimizer": {**optimizer.get_config(), "steps": steps}}
    if best is not None:
        resume["best_sha256"] = file_digest(Path(best))
    header = _header(model, {"resume": resume})
    arrays = {**_model_arrays(model), **{f"optim.{k}": v for k, v in moments.items()}}
    return _write(Path(path), header, arrays)


def load_resume(path: str | Path, *, device="cpu", best: str | Path | None = None):
    """(model, optimiser, ``RunState``, settings) from a file ``save_resume`` wrote, ready to continue. With
    ``best``, a ``CheckpointError`` unless that file is the one the run had saved when it stopped."""
    from .optim import make_optimizer
    from .train import RunState

    model, meta, extra = _load(Path(path), device, extra_prefix="optim.")
    try:
        resume = meta["resume"]
        _check_resume(resume)
        config = dict(resume["optimizer"])
        steps = config.pop("steps")
        optimizer = make_optimizer(**config)
        optimizer.set_state(model, steps, {k.removeprefix("optim."): v for k, v in extra.items()})
        model.set_random_state(resume["random"])
        run = RunState.from_dict(resume["run"])
        settings = dict(resume["settings"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, NumbacnnError) as error:
        raise CheckpointError(f"{path} is not a state to resume from ({_clause(error)}); start the run again "
                              f"with --restart.") from None
    if best is not None and "best_sha256" in resume and resume["best_sha256"] != file_digest(Path(best)):
        raise CheckpointError(f"{best} is not the checkpoint that the interrupted run saved beside {path} (it was "
                              f"changed, replaced or removed since); put that file back, or start the run again "
                              f"with --restart.")
    return model, optimizer, run, settings


def file_digest(path: Path) -> str | None:
    """The SHA-256 of the file at ``path`` (hex), or None when there is none."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CheckpointError(f"Cannot read {path} ({error.strerror}); check its permissions.") from None
    return digest.hexdigest()


def _check_resume(resume: Any) -> None:
    """A ``ValueError`` naming the first field of a resume state that has the wrong type or range."""
    if not isinstance(resume, dict):
        raise ValueError("its resume record is not a mapping")
    for key, kind in (("settings", dict), ("run", dict), ("random", dict), ("optimizer", dict)):
        if not isinstance(resume.get(key), kind):
            raise ValueError(f"its {key!r} is missing or not a mapping")
    if resume.get("best_sha256") is not None and not isinstance(resume["best_sha256"], str):
        raise ValueError("its 'best_sha256' is not a digest")
    run = resume["run"]
    check_field(run, "epoch", int, 1)
    check_field(run, "batches_done", int, 0)
    check_field(run, "correct", int, 0)
    check_field(run, "loss_sum", float, 0.0)
    check_field(run, "finished", bool)
    history = run.get("history")
    if not isinstance(history, list) or not all(_is_epoch_record(row) for row in history):
        raise ValueError("its run history is not a list of epoch records")
    check_field(run, "best_epoch", int, 1, len(history), optional=True)
    check_field(run, "best_accuracy", float, 0.0, 1.0, optional=True)
    check_field(resume["optimizer"], "steps", int, 0)
    # The settings are the caller's (``numbacnn.run`` checks its own); the data set's name is checked by the
    # loader, which knows built-in names and folders of images alike.


def check_field(record: dict, key: str, kind: type, low=None, high=None, *, optional: bool = False) -> None:
    """A ``ValueError`` unless ``record[key]`` is of ``kind`` (an int passes for a float, a bool for nothing
    else) and within [low, high]; None passes when ``optional``."""
    value = record.get(key)
    if value is None and optional:
        return
    kinds = (int, float) if kind is float else (kind,)
    if type(value) not in kinds or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"its {key!r} is {value!r}, not {'a number' if kind is float else 'a ' + kind.__name__}")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"its {key!r} is {value!r}, not a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"its {key!r} is {value!r}, outside {low}..{'' if high is None else high}")


def _is_epoch_record(row: Any) -> bool:
    """Whether ``row`` is one epoch's metrics: a flat mapping of names to numbers (or None for a metric the
    run did not measure), numbered by a whole "epoch" from 1, with the training "loss" and "accuracy"."""
    return (isinstance(row, dict) and type(row.get("epoch")) is int and 1 <= row["epoch"] <= MAX_EPOCHS
            and all(type(row.get(key)) in (int, float) for key in ("loss", "accuracy"))
            and all(isinstance(k, str) and (v is None or (type(v) in (int, float) and abs(v) <= MAX_METRIC))
                    for k, v in row.items()))


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


def _describe(layer) -> dict[str, Any]:
    entry = registry.entry_for(type(layer))
    return {"name": layer.name, "package": entry.package, "version": entry.version, "config": layer.get_config()}


def load(path: str | Path, *, device="cpu") -> tuple[Sequential, dict[str, Any]]:
    """The model saved at ``path``, built on ``device`` with its weights, and the metadata saved with it."""
    model, meta, _ = _load(Path(path), device)
    _check_scores_fit(Path(path), model, meta)
    return model, meta


def _check_scores_fit(path: Path, model: Sequential, metadata: dict[str, Any]) -> None:
    """A ``CheckpointError`` when the metadata names the data set the network was trained on and the network
    does not end in one score per class of it (a network saved through the Python API may not)."""
    from .data import DataSpec

    if "data" not in metadata and "dataset" not in metadata:
        return
    try:
        spec = DataSpec.from_metadata(metadata)
    except NumbacnnError:  # an unknown data set is reported where it is used, naming -d
        return
    classes = len(spec.classes)
    if tuple(model.output_shape) != (classes,):
        raise CheckpointError(f"{path} ends in shape {tuple(model.output_shape)}, but the data set it names, "
                              f"{spec.name}, has {classes} classes, so it cannot classify it; train it again ending "
                              f"in dense({classes}).")


def _load(path: Path, device, extra_prefix: str | None = None) -> tuple[Sequential, dict[str, Any], dict]:
    """(model, metadata, the arrays whose names start with ``extra_prefix``); any other array that belongs
    to no layer makes the file corrupt. Nothing large is unpacked before the header has been checked and the
    network it describes built: every array must fit the largest the network has."""
    from .device import get_device

    meta, members = _read_header(path)
    layers = [_make(i, d, path) for i, d in enumerate(meta["layers"])]
    device = get_device(device)  # a device this machine lacks is its fault, not the file's
    try:
        model = Sequential(layers, input_shape=tuple(meta["input_shape"]))
        model.build(dtype=_stored_dtype(path, members), device=device)
    except NumbacnnError as error:
        raise CheckpointError(f"{path} describes a network that cannot be built ({_clause(error)}); it is corrupt.") from None
    _check_member_sizes(path, members, model)
    arrays = _read_arrays(path)
    odd = next((f"{k!r} of {v.dtype}" for k, v in arrays.items() if v.dtype not in (np.float32, np.float64)), None)
    if odd:
        raise CheckpointError(f"{path} holds an array {odd} where float32 or float64 were expected; it is corrupt.")
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
    return model, _checked_metadata(path, meta.get("metadata", {})), extra


def _read_header(path: Path) -> tuple[dict, dict[str, zipfile.ZipInfo]]:
    """(the checked header, the archive's other members by array name), having unpacked only the header."""
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}; train one with `numbacnn train --output {path}`.")
    if not zipfile.is_zipfile(path):  # np.load would read it as .npy or offer to unpickle it
        raise CheckpointError(f"{path} is not a readable numbacnn checkpoint (not an .npz archive); train or copy it again.")
    _check_unpacked_size(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            header = members.pop("__meta__", None)
            if header is None or header.file_size > MAX_HEADER_BYTES:
                raise ValueError("no header of at most 64 MB" if header is None else
                                 f"a header of {header.file_size / 1e6:.0f} MB, more than a header can be")
            with archive.open(header) as f:
                text = np.lib.format.read_array(f, allow_pickle=False)
        meta = json.loads(bytes(text).decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, EOFError, MemoryError,
            RecursionError) as error:
        raise CheckpointError(f"{path} is not a readable numbacnn checkpoint ({_clause(error)}); train or copy it "
                              f"again.") from None
    if (not isinstance(meta, dict) or meta.get("format") != FORMAT or type(meta.get("version")) is not int
            or meta["version"] > VERSION):
        raise CheckpointError(
            f"{path} is not a numbacnn checkpoint of version <= {VERSION}; upgrade numbacnn or train it again."
        )
    if _depth(meta) > MAX_NESTING:
        raise CheckpointError(f"{path} has a header nested more than {MAX_NESTING} levels deep, which numbacnn never "
                              f"writes; it is corrupt, train or copy it again.")
    if not _describes_network(meta):
        raise CheckpointError(f"{path} does not describe its layers and input shape; it is corrupt, train or copy it again.")
    return meta, members


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files if k != "__meta__"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, MemoryError) as error:
        raise CheckpointError(f"{path} is not a readable numbacnn checkpoint ({_clause(error)}); train or copy it "
                              f"again.") from None


def _stored_dtype(path: Path, members: dict[str, zipfile.ZipInfo]) -> np.dtype:
    """The dtype of the first array, read from its .npy header alone (float32 when there is none)."""
    if not members:
        return np.dtype(np.float32)
    try:
        with zipfile.ZipFile(path) as archive, archive.open(next(iter(members.values()))) as f:
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(f))
            if read_header is None:
                raise ValueError("an array of an unknown .npy version")
            _, _, dtype = read_header(f)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise CheckpointError(f"{path} is not a readable numbacnn checkpoint ({_clause(error)}); train or copy it "
                              f"again.") from None
    if dtype not in (np.float32, np.float64):
        raise CheckpointError(f"{path} holds an array of {dtype} where float32 or float64 were expected; it is corrupt.")
    return np.dtype(dtype)


def _check_member_sizes(path: Path, members: dict[str, zipfile.ZipInfo], model: Sequential) -> None:
    """Refuses, before unpacking it, an array larger than the largest one the network has (in float64)."""
    sizes = [math.prod(shape) for _, shape in model.parameter_slices()]
    sizes += [math.prod(v.shape) for layer in model.layers for v in layer.state.values()]
    largest = max(sizes, default=0) * 8 + NPY_HEADER_BYTES
    big = next((info for info in members.values() if info.file_size > largest), None)
    if big is not None:
        raise CheckpointError(f"{path} holds an array {big.filename!r} of {big.file_size:,} bytes, larger than any "
                              f"array of the network it describes; it is corrupt, train or copy it again.")


def _depth(value: Any) -> int:
    """How deeply lists and mappings nest in ``value`` (0 for a number or a text), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_NESTING:
                return deepest
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _checked_metadata(path: Path, metadata: Any) -> dict[str, Any]:
    """The metadata training saved, its well-known keys checked: a ``CheckpointError`` when one is off."""
    problem = None
    if not isinstance(metadata, dict):
        problem = "its metadata is not a mapping"
    elif "dataset" in metadata and not (isinstance(metadata["dataset"], str) and metadata["dataset"].strip()):
        problem = "its data set is not a name"
    elif "history" in metadata and not (isinstance(metadata["history"], list)
                                        and all(_is_epoch_record(row) for row in metadata["history"])):
        problem = "its history is not a list of epoch records"
    else:
        for key, kind, low, high in (("epochs", int, 1, None), ("epochs_run", int, 0, None),
                                     ("val_accuracy", float, 0.0, 1.0), ("test_accuracy", float, 0.0, 1.0)):
            try:
                check_field(metadata, key, kind, low, high, optional=True)
            except ValueError as error:
                problem = str(error)
                break
    if problem:
        raise CheckpointError(f"{path} holds metadata that numbacnn does not write ({problem}); it is corrupt, "
                              f"train or copy it again.")
    return metadata


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
                and all(type(d) is int and 0 < d <= MAX_INPUT_SIDE for d in shape) and math.prod(shape) <= MAX_INPUT_VALUES)
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
            f"{path} needs layer {name!r} from package {package} {described.get('version', '')}, "
            f"{registry.why_missing(package)}"
        ) from None
    try:
        return make_layer(LayerSpec(entry.qualified_name, [], described["config"]))
    except NumbacnnError as error:
        raise CheckpointError(f"{path}: layer {index + 1} ({name}) has a config that does not work ({_clause(error)}); "
                              f"it is corrupt, train or copy it again.") from None

"""The ``config`` and ``save_load`` checks: a layer made again from its config, or loaded from saved arrays."""

from __future__ import annotations

import io
import json
from typing import Callable, Mapping

import numpy as np

from .. import spec
from ..layer import Layer
from .built import _arrays_that_differ, _BuiltLayer, _kept_outside, _random_like
from .case import Example, LayerCase, _check, _for_each_example
from .compare import (_assert_params_untouched, _assert_same, _assert_same_keys, _assert_same_passes,
                      _assert_same_state, _train_state)
from .tolerances import STATE_STEPS


@_check("config")
def check_config(case: LayerCase) -> None:
    """get_config() survives JSON, ``type(layer)(**config)`` and the spec text; the rebuilt layers give the
    same outputs and gradients when built with the same seed."""
    return _for_each_example(case, _config_example, check="config")


def _config_example(case: LayerCase, example: Example) -> None:
    built = _BuiltLayer(case, example, dtype=np.float32)
    layer, where = built.layer, built.where
    config = layer.get_config()
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise AssertionError(f"{where}: get_config() returned {config!r}; it must be a dict with str keys.")
    try:
        through_json = json.loads(json.dumps(config))
    except (TypeError, ValueError) as error:
        raise AssertionError(f"{where}: get_config() {config!r} is not JSON-serialisable: {error}.") from None
    if through_json != config:
        raise AssertionError(
            f"{where}: get_config() changes in a JSON round trip: {config!r} came back as {through_json!r} "
            f"(keep lists, not tuples, in a config)."
        )
    cls = type(layer)
    # The name as the case gives it: "package:name" must reach this plug-in even where a built-in shares its name.
    text = spec.layer_text(case.layer if isinstance(case.layer, str) else layer.name, config, block=cls.holds_layers)
    registry = None if isinstance(case.layer, str) else _OneLayerRegistry(cls)
    parsed = spec.parse(text, registry)
    if len(parsed) != 1:
        raise AssertionError(f"{where}: the spec text {text!r} reads back as {len(parsed)} layers, not one.")
    makers = {
        "type(layer)(**config)": lambda: cls(**config),
        f"the spec text {text!r}": lambda: spec.make_layer(parsed[0], registry),
    }
    rebuilt = {how: _rebuilt(where, how, make) for how, make in makers.items()}
    x = example.x
    r = _random_like(example, (example.batch_size, *built.out_shape), 1)
    state = built.random_state()
    params = built.params()
    reference = built.forward(x, training=False), built.training_pass(x, r, state)
    # Otherwise a layer that changes its params (running statistics kept there) fails below as if rebuilding
    # it from its config gave other parameters.
    _assert_params_untouched(built, params, by="forward and backward", grads=reference[1][2])
    for how, other in rebuilt.items():
        if type(other) is not cls:
            raise AssertionError(f"{where}: {how} made a {type(other).__name__}, not a {cls.__name__}.")
        if other.get_config() != config:
            raise AssertionError(f"{where}: {how} has config {other.get_config()!r}, expected {config!r}.")
        copy_built = _BuiltLayer(case, example, dtype=np.float32, layer=other)
        _assert_same_keys(copy_built.params(), params, what=f"{how}: params", where=where)
        for k, v in params.items():
            _assert_same(copy_built.params()[k], v, where=where,
                         what=f"{how}, built with the same seed: parameter {k!r}")
        _assert_same(copy_built.forward(x, training=False), reference[0], where=where,
                     what=f"{how}, built with the same seed: forward(training=False) outputs")
        _assert_same_passes(copy_built.training_pass(x, r, state), reference[1], where=where,
                            what=f"{how}, built with the same seed")


def _rebuilt(where: str, how: str, make: Callable[[], Layer]) -> Layer:
    try:
        return make()
    except Exception as error:  # noqa: BLE001  (whatever it is, the config does not rebuild the layer)
        raise AssertionError(f"{where}: {how} does not make the layer again: {type(error).__name__}: {error}") from None


class _OneLayerRegistry:
    """Stands in for the registry when a LayerCase names a class that may not be installed as a plug-in: its
    name means that class; other names (the layers inside a block) mean the installed layers."""

    def __init__(self, cls: type):
        self.cls = cls

    def get(self, name: str) -> type:
        from ..registry import registry

        return self.cls if name == self.cls.name else registry.get(name)


@_check("save_load")
def check_save_load(case: LayerCase) -> int:
    """Parameters and state saved with np.savez (the state after a few training steps) and loaded into a layer
    built from another seed reproduce the outputs, gradients and state exactly."""
    return _for_each_example(case, _save_load_example, check="save_load")


def _save_load_example(case: LayerCase, example: Example) -> None:
    saved = _BuiltLayer(case, example, dtype=np.float32)
    fresh = _BuiltLayer(case, example, dtype=np.float32, seed=example.seed + 1)
    where, has_state = saved.where, bool(saved.layer.state)
    # Trained a few steps, with or without state: what training changed must be in what is saved.
    _train_state(saved, case, example)
    loaded = _through_npz({"params": saved.params(), "state": saved.state()})
    for attribute, arrays in loaded.items():
        _assert_fits(arrays, getattr(fresh.layer, attribute), attribute, where)
        fresh.load(arrays, attribute)
    unsaved = _arrays_that_differ(saved.kept_arrays(), fresh.kept_arrays())
    what = "after loading the saved params and state" if has_state else "after loading the saved params"
    x = example.x
    r = _random_like(example, (example.batch_size, *saved.out_shape), 1)
    random = saved.random_state()
    try:
        _assert_same(fresh.forward(x, training=False), saved.forward(x, training=False), where=where,
                     what=f"{what}, forward(training=False) outputs")
        _assert_same_passes(fresh.training_pass(x, r, random), saved.training_pass(x, r, random), where=where,
                            what=what)
        _assert_same_state(fresh.state(), saved.state(), where=where, what=f"{what}, after a training pass")
    except AssertionError as error:
        if not unsaved:
            raise
        raise AssertionError(
            f"{where}: after {STATE_STEPS} training steps a layer loaded from the saved params and state computes "
            f"otherwise ({_first_clause(error, where)}), because {_kept_outside(unsaved)}, kept outside params and "
            f"state, {'is' if len(unsaved) == 1 else 'are'} not saved; keep such arrays in state (return them from "
            f"init_state) and update them in place."
        ) from None


def _first_clause(error: AssertionError, where: str) -> str:
    """What a comparison found, without the layer description it starts with."""
    return str(error).removeprefix(f"{where}: ").split("; ")[0]


def _through_npz(groups: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Arrays written with np.savez and read back, as a checkpoint keeps them: ``{group: {key: array}}``."""
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{group}/{k}": v for group, arrays in groups.items() for k, v in arrays.items()})
    buffer.seek(0)
    loaded: dict[str, dict[str, np.ndarray]] = {group: {} for group in groups}
    with np.load(buffer) as npz:
        for name in npz.files:
            group, _, k = name.partition("/")
            loaded[group][k] = npz[name]
    return loaded


def _assert_fits(arrays: Mapping[str, np.ndarray], target: Mapping, attribute: str, where: str) -> None:
    _assert_same_keys(arrays, target, what=f"the saved {attribute} (against a fresh layer's)", where=where)
    for k, v in arrays.items():
        if v.shape != tuple(target[k].shape):
            raise AssertionError(f"{where}: saved {attribute}[{k!r}] has shape {v.shape}, a fresh layer's "
                                 f"{tuple(target[k].shape)}.")

"""A layer built for one dtype and device, run on NumPy arrays, and the helpers that describe it."""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..block import walk
from ..device import Device, get_device
from ..errors import ShapeError, SpecError
from ..layer import Layer
from .case import Example, LayerCase, _hypothesis


class _BuiltLayer:
    """A layer built for one dtype and device, run on NumPy arrays: inputs are copied to the device and
    results copied back, so a layer that reuses its output buffers cannot change what was already returned."""

    def __init__(self, case: LayerCase, example: Example, *, dtype=np.float64, device="cpu", seed=None, layer=None):
        self.layer: Layer = _make_layer(case, example) if layer is None else layer
        self.dtype = np.dtype(dtype)
        self.device: Device = get_device(device)
        self.example = example
        rng = np.random.default_rng(example.seed if seed is None else seed)
        try:
            self.out_shape = self.layer.build(example.input_shape, rng=rng, dtype=self.dtype, device=device)
        except ShapeError:
            _hypothesis().reject()  # the layer may refuse a shape; it is not a failure
        # Standing alone, a layer must give its input gradient (a model turns it off for its first layer).
        self.layer.needs_input_grad = True
        # Arrays kept aside from the start, unlike those a pass makes for its backward pass (caches).
        self.kept_as_built = set(self.kept_arrays())

    @property
    def where(self) -> str:
        """The layer, its hyperparameters and the input, for messages."""
        return _where(self.layer, self.example, self.dtype, self.device.name)

    def forward(self, x: np.ndarray, *, training: bool) -> np.ndarray:
        # A fresh copy each time: the caller's array stays as it was whatever the layer does.
        y = self.layer.forward(self.device.to_device(np.array(x, dtype=self.dtype)), training=training)
        return self._host(y)

    def backward(self, dy: np.ndarray):
        dx = self.layer.backward(self.device.to_device(np.array(dy, dtype=self.dtype)))
        return None if dx is None else self._host(dx)

    # Host copies of the layer's arrays. A block's are views of its children's (``ChildArrays``), read and
    # written through the same mapping interface.
    def params(self) -> dict[str, np.ndarray]:
        return {k: self._host(v) for k, v in self.layer.params.items()}

    def grads(self) -> dict[str, np.ndarray]:
        return {k: self._host(v) for k, v in self.layer.grads.items()}

    def state(self) -> dict[str, np.ndarray]:
        return {k: self._host(v) for k, v in self.layer.state.items()}

    def write_param(self, name: str, values: np.ndarray) -> None:
        """Overwrites a parameter in place, on whatever device it lives."""
        self._write(self.layer.params[name], values)

    def write_state(self, name: str, values: np.ndarray) -> None:
        """Overwrites a state array in place, on whatever device it lives."""
        self._write(self.layer.state[name], values)

    def load(self, arrays: Mapping[str, np.ndarray], attribute: str) -> None:
        """Replaces the arrays of ``layer.params`` or ``layer.state`` by new ones, as loading a checkpoint does
        (``Sequential.set_weights``, ``set_state``): a layer must read them from the dict on every pass."""
        target = getattr(self.layer, attribute)
        for k, v in arrays.items():
            target[k] = self.device.to_device(np.array(v, dtype=self.dtype))  # a copy: the layer's own

    @staticmethod
    def _write(target, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=target.dtype)
        if isinstance(target, np.ndarray):
            target[...] = values
        else:
            target.copy_to_device(values)

    def _host(self, array) -> np.ndarray:
        self.device.synchronize()
        return np.array(self.device.to_host(array), copy=True)

    # The layer's random state: see "Randomness" in the module docstring.
    def random_state(self) -> dict[str, Any]:
        return {name: copy.deepcopy(g.bit_generator.state) for name, g in _generators(self.layer).items()}

    def set_random_state(self, state: dict[str, Any]) -> None:
        generators = _generators(self.layer)
        for name, saved in state.items():
            generators[name].bit_generator.state = copy.deepcopy(saved)

    # Where a repeated training pass starts from: the layer's state, its random state, and copies of the arrays
    # it keeps outside params and state. A pass that reads statistics it updates (a running mean) gives the
    # same results again only from the same state.
    def start_point(self) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, np.ndarray]]:
        return self.state(), self.random_state(), self.kept_arrays()

    def rewind(self, point, *, kept_arrays: bool = False) -> None:
        """Back to ``point``: the state and the random state, and with ``kept_arrays`` the arrays kept
        outside them too (which tells whether they are why a repeated pass differs)."""
        state, random, kept = point
        for k, v in state.items():
            self.write_state(k, v)
        self.set_random_state(random)
        if kept_arrays:
            for name, put, _ in _kept_places(self.layer):
                if name in kept:
                    put(kept[name].copy())

    def kept_arrays(self) -> dict[str, np.ndarray]:
        """Copies of the NumPy arrays the layer (and a block's children) keeps in its attributes outside
        ``params``, ``grads`` and ``state``, keyed by where they are (``"self._mean"``, ``"child '0':
        self._copy['mean']"``): what a checkpoint does not save. ``Layer.buffer``'s scratch arrays are left out."""
        return {name: array.copy() for name, _, array in _kept_places(self.layer)}

    def training_pass(self, x: np.ndarray, dy: np.ndarray, state=None):
        """(output, input gradient, parameter gradients) of one training forward and backward pass."""
        if state is not None:
            self.set_random_state(state)
        y = self.forward(x, training=True)
        dx = self.backward(dy)
        return y, dx, self.grads()


def _make_layer(case: LayerCase, example: Example) -> Layer:
    cls = case.layer_class
    try:
        return cls(**example.hyper)
    except SpecError as error:
        raise AssertionError(
            f"{cls.name}({_arguments(example.hyper)}) refused the drawn hyperparameters: {error} "
            f"Draw only valid ones in LayerCase.hyper."
        ) from None


def _generators(layer: Layer) -> dict[str, np.random.Generator]:
    """The random generators a layer holds, a block's children's included (keyed "<place>.<attribute>")."""
    return {f"{place.key}.{k}": v for place in walk([layer]) for k, v in sorted(vars(place.layer).items())
            if isinstance(v, np.random.Generator)}


# Attributes of a layer that hold what is saved, or what is remade each step (Layer.buffer's scratch arrays,
# the zeros bias_or_zeros makes), or a block's children, which are walked on their own.
_SAVED_OR_SCRATCH = ("params", "grads", "state", "children", "execution_order", "_zero_bias")


def _kept_places(layer: Layer) -> Iterator[tuple[str, Callable[[np.ndarray], None], np.ndarray]]:
    """(name, a function that puts an array in its place, the array) for each array ``kept_arrays`` reports."""
    for place in walk([layer]):
        prefix = f"child {place.key.partition('.')[2]!r}: " if place.depth else ""
        yield from ((prefix + name, put, array) for name, put, array in _own_kept_places(place.layer))


def _own_kept_places(layer: Layer) -> Iterator[tuple[str, Callable[[np.ndarray], None], np.ndarray]]:
    saved = {id(a) for group in (layer.params, layer.grads, layer.state) for a in group.values()}
    for attribute, value in sorted(vars(layer).items()):
        if attribute in _SAVED_OR_SCRATCH or attribute.startswith("_buffer_"):
            continue
        if isinstance(value, dict):
            items = [(f"{attribute}[{k!r}]", functools.partial(value.__setitem__, k), v) for k, v in value.items()]
        elif isinstance(value, list):
            items = [(f"{attribute}[{i}]", functools.partial(value.__setitem__, i), v) for i, v in enumerate(value)]
        else:
            items = [(attribute, functools.partial(setattr, layer, attribute), value)]
        for name, put, array in items:
            if isinstance(array, np.ndarray) and id(array) not in saved:
                yield f"self.{name}", put, array


def _arrays_that_differ(one: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> list[str]:
    """The names of arrays kept in both that differ in shape or values."""
    return [name for name in one if name in other and not (
        one[name].shape == other[name].shape and np.array_equal(one[name], other[name], equal_nan=True))]


def _kept_outside(names: list[str]) -> str:
    """"self._mean" / "self._mean and self._var", for messages."""
    listed = names[:4]
    return listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]


def _arguments(hyper: Mapping) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in hyper.items())


def _where(layer: Layer, example: Example, dtype, device: str) -> str:
    try:
        config = layer.get_config()  # every hyperparameter, defaults included
    except Exception:  # noqa: BLE001  (a broken get_config is the config check's business)
        config = example.hyper
    return (
        f"{layer.name}({_arguments(config)}) on a batch of {example.batch_size} input(s) of shape "
        f"{example.input_shape} [{np.dtype(dtype).name}, {device}, seed {example.seed}]"
    )


def _random_like(example: Example, shape, salt: int) -> np.ndarray:
    """Standard normal values of ``shape``, fixed by the example's seed (``salt`` tells uses apart)."""
    return np.random.default_rng([example.seed, salt]).standard_normal(shape)

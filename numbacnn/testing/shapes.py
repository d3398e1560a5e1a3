"""The ``shapes`` check."""

from __future__ import annotations

import numpy as np

from .built import _BuiltLayer, _random_like
from .case import Example, LayerCase, _check, _for_each_example
from .compare import _assert_params_untouched, _assert_same, _assert_same_keys


@_check("shapes")
def check_shapes(case: LayerCase) -> int:
    """build() declares the shape forward() returns; backward() and grads have the right shapes; inputs and
    params stay unchanged."""
    return _for_each_example(case, _shapes_example, check="shapes")


def _shapes_example(case: LayerCase, example: Example) -> None:
    built = _BuiltLayer(case, example, dtype=np.float32)
    layer, device, where = built.layer, built.device, built.where
    out_shape = built.out_shape
    if not (isinstance(out_shape, tuple) and all(isinstance(d, (int, np.integer)) and d >= 1 for d in out_shape)):
        raise AssertionError(f"{where}: build() returned {out_shape!r}; it must return a tuple of positive ints.")
    expected = (example.batch_size, *out_shape)
    x_host = example.x.astype(np.float32)
    dy_host = _random_like(example, expected, 1).astype(np.float32)
    params = built.params()
    # A model hands one layer's output to the next and keeps it: a layer must not write into its inputs.
    for training in (False, True):
        x = device.to_device(x_host.copy())
        y = layer.forward(x, training=training)
        if tuple(y.shape) != expected:
            raise AssertionError(
                f"{where}: forward(training={training}) returned shape {tuple(y.shape)}, but build() declared "
                f"the output {out_shape}, so {expected} was expected."
            )
        _assert_same(device.to_host(x), x_host, what=f"the input after forward(training={training})", where=where)
        _assert_params_untouched(built, params, by=f"forward(training={training})")
    dy = device.to_device(dy_host.copy())
    dx = layer.backward(dy)
    _assert_params_untouched(built, params, by="backward", grads=built.grads())
    if dx is None or tuple(dx.shape) != tuple(example.x.shape):
        got = None if dx is None else tuple(dx.shape)
        raise AssertionError(f"{where}: backward() returned shape {got}; the input's {example.x.shape} was expected.")
    _assert_same(device.to_host(x), x_host, what="the input after backward", where=where)
    _assert_same(device.to_host(dy), dy_host, what="the output gradient after backward", where=where)
    _assert_same_keys(layer.grads, layer.params, what="grads (against params)", where=where)
    for k, param in layer.params.items():
        grad_shape, param_shape = tuple(layer.grads[k].shape), tuple(param.shape)
        if grad_shape != param_shape:
            raise AssertionError(f"{where}: grads[{k!r}] has shape {grad_shape}, params[{k!r}] {param_shape}.")

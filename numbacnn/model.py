"""Sequential: layers in a row, built from a spec, trained by forward and backward passes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .block import Block, backward_chain, build_chain, forward_chain, run_order
from .device import get_device
from .errors import ShapeError
from .layer import Layer, Shape
from .spec import layers_text, make_layer, parse

MNIST_SHAPE = (28, 28, 1)


@dataclass
class SummaryRow:
    """One line of the summary table: a layer, or (``depth`` > 0, index "3.1") a layer inside a block."""

    index: str
    layer: str
    out_shape: Shape
    weights: int
    biases: int
    detail: str = ""
    non_trainable: int = 0
    depth: int = 0

    @property
    def params(self) -> int:
        """Trainable parameters: weights and biases."""
        return self.weights + self.biases


class Sequential:
    """A stack of layers applied in order.

    Args:
        layers: a spec text (``"conv2d(32,3) relu ..."``) or a list of ``Layer`` objects.
        input_shape: one example's shape, channels last; (28, 28, 1) for MNIST.
    """

    def __init__(self, layers: str | list[Layer], input_shape: Shape = MNIST_SHAPE):
        self.layers: list[Layer] = [make_layer(s) for s in parse(layers)] if isinstance(layers, str) else list(layers)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.built = False
        self.device = get_device("cpu")
        self.dtype = np.dtype(np.float32)

    def build(self, *, seed: int = 0, dtype=np.float32, device="cpu") -> Sequential:
        """Make every layer's parameters; ``ShapeError`` naming the first layer that does not fit."""
        self.device, self.dtype = get_device(device), np.dtype(dtype)
        rng = np.random.default_rng(seed)
        build_chain(self.layers, self.input_shape, rng=rng, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self.layers):
            # The first layer's input gradient is never used: skipping it saves its largest kernel.
            layer.needs_input_grad = i > 0
        self.execution_order = run_order(self.layers)
        self.built = True
        return self

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].out_shape if self.built else None

    # -- running ---------------------------------------------------------------------------------------------

    def forward(self, x, *, training: bool = False):
        """The logits for the batch ``x`` of shape (N, *input_shape)."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(f"The model takes inputs of shape {self.input_shape}, got {tuple(x.shape[1:])}.")
        return forward_chain(self.execution_order, x, training)

    def backward(self, dy) -> None:
        """Fills every layer's gradients from the loss gradient of the logits."""
        backward_chain(self.execution_order, dy)

    def parameters(self) -> list[tuple]:
        """(parameter, gradient) pairs in a fixed order: layer by layer, names as the layer lists them. Only
        trainable arrays: a layer's ``state`` is not among them."""
        return [(layer.params[k], layer.grads[k]) for layer in self.layers for k in layer.params]

    def predict(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Class probabilities for ``images`` (N, *input_shape), computed in batches."""
        out = []
        for start in range(0, len(images), batch_size):
            x = self.device.to_device(np.ascontiguousarray(images[start:start + batch_size], dtype=self.dtype))
            logits = self.device.to_host(self.forward(x)).astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            out.append(p / p.sum(axis=1, keepdims=True))
        return np.concatenate(out) if out else np.empty((0, self.output_shape[0]))

    # -- describing ------------------------------------------------------------------------------------------

    @property
    def spec(self) -> str:
        """The spec text that rebuilds this architecture."""
        return layers_text(self.layers)

    def summary(self) -> list[SummaryRow]:
        """Per layer: output shape, weights and biases (a (3,3,1) filter counts 9 weights + 1 bias), and the
        non-trainable numbers it keeps; a block's row is followed by its children's (``depth`` 1 and more)."""
        if not self.built:
            self.build()
        return [row for i, layer in enumerate(self.layers) for row in _rows(str(i + 1), layer, 0)]

    def count_params(self) -> int:
        """Every number the model keeps, trainable or not (as Keras counts its total)."""
        return sum(row.params + row.non_trainable for row in self.summary() if row.depth == 0)

    def trainable_count(self) -> int:
        return sum(row.params for row in self.summary() if row.depth == 0)

    def non_trainable_count(self) -> int:
        return sum(row.non_trainable for row in self.summary() if row.depth == 0)

    def get_weights(self) -> list[dict[str, np.ndarray]]:
        """Every layer's parameters, copied to host memory."""
        return self._host_copies("params")

    def set_weights(self, weights: list[dict[str, np.ndarray]]) -> None:
        """Loads parameters saved by ``get_weights``; ``ShapeError`` when they do not fit."""
        self._load("params", weights, "weights")

    def get_state(self) -> list[dict[str, np.ndarray]]:
        """Every layer's non-trainable state (running statistics...), copied to host memory."""
        return self._host_copies("state")

    def set_state(self, states: list[dict[str, np.ndarray]]) -> None:
        """Loads state saved by ``get_state``; ``ShapeError`` when it does not fit."""
        self._load("state", states, "state")

    def _host_copies(self, attribute: str) -> list[dict[str, np.ndarray]]:
        """Each layer's ``params`` or ``state`` arrays, copied to host memory."""
        return [{k: self.device.to_host(v).copy() for k, v in getattr(layer, attribute).items()}
                for layer in self.layers]

    def _load(self, attribute: str, saved: list[dict[str, np.ndarray]], what: str) -> None:
        """Replaces each layer's ``params`` or ``state`` arrays (``what`` names them in errors) by ``saved``."""
        if len(saved) != len(self.layers):
            raise ShapeError(f"{len(saved)} layers of {what} for a model of {len(self.layers)} layers.")
        for layer, values in zip(self.layers, saved):
            arrays = getattr(layer, attribute)
            if set(values) != set(arrays):
                raise ShapeError(f"{layer.name}: {what} {sorted(values)} where {sorted(arrays)} were expected.")
            for k, v in values.items():
                if tuple(v.shape) != tuple(arrays[k].shape):
                    raise ShapeError(f"{layer.name}.{k}: shape {v.shape}, expected {tuple(arrays[k].shape)}.")
                arrays[k] = self.device.to_device(np.asarray(v, dtype=self.dtype))


def _rows(index: str, layer: Layer, depth: int) -> list[SummaryRow]:
    """The summary row of ``layer`` and, for a block, its children's rows below it."""
    row = SummaryRow(index, repr(layer), layer.out_shape, *layer.param_counts(), layer.describe_params(),
                     layer.state_count(), depth)
    children = layer.named_children() if isinstance(layer, Block) else []
    nested = [r for n, (key, child) in enumerate(children)
              for r in _rows(f"{index}.{n + 1}" if key.isdigit() else f"{index}.{key}", child, depth + 1)]
    return [row, *nested]

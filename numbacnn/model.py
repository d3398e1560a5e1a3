"""Sequential: layers in a row, built from a spec, trained by forward and backward passes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .device import get_device
from .errors import NumbacnnError, ShapeError
from .layer import Layer, Shape
from .spec import layer_text, make_layer, parse

MNIST_SHAPE = (28, 28, 1)


@dataclass
class SummaryRow:
    """One line of the summary table."""

    index: int
    layer: str
    out_shape: Shape
    weights: int
    biases: int
    detail: str = ""

    @property
    def params(self) -> int:
        return self.weights + self.biases


def run_order(layers: list[Layer]) -> list[Layer]:
    """The order the layers run in: as written, except that a relu followed by max pooling runs after it.

    ReLU and max pooling commute (max(relu(a), relu(b)) = relu(max(a, b)), and the gradient goes to the same
    input, or is zero, either way), so the outputs and gradients are exactly the same, while the ReLU then
    touches a quarter of the values for 2x2 pooling. The layers keep the shapes they were built with, as the
    summary shows them: ReLU works on whatever shape it is given.
    """
    from .layers.maxpool2d import MaxPool2D
    from .layers.relu import ReLU

    order = list(layers)
    for i in range(len(order) - 1):
        if type(order[i]) is ReLU and type(order[i + 1]) is MaxPool2D:
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


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
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.build(shape, rng=rng, dtype=self.dtype, device=self.device)
            except NumbacnnError as error:
                raise type(error)(f"Layer {i + 1} ({layer.name}) with input {shape}: {error}") from None
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
        for layer in self.execution_order:
            x = layer.forward(x, training=training)
        return x

    def backward(self, dy) -> None:
        """Fills every layer's gradients from the loss gradient of the logits."""
        for layer in reversed(self.execution_order):
            dy = layer.backward(dy)
            if dy is None:
                break

    def parameters(self) -> list[tuple]:
        """(parameter, gradient) pairs in a fixed order: layer by layer, names as the layer lists them."""
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
        from .registry import registry

        return " ".join(layer_text(registry.spec_name(type(layer)), layer.get_config()) for layer in self.layers)

    def summary(self) -> list[SummaryRow]:
        """Per layer: output shape, weights and biases (a (3,3,1) filter counts 9 weights + 1 bias)."""
        if not self.built:
            self.build()
        return [SummaryRow(i + 1, repr(layer), layer.out_shape, *layer.param_counts(), layer.describe_params())
                for i, layer in enumerate(self.layers)]

    def count_params(self) -> int:
        return sum(row.params for row in self.summary())

    def get_weights(self) -> list[dict[str, np.ndarray]]:
        """Every layer's parameters, copied to host memory."""
        return [{k: self.device.to_host(v).copy() for k, v in layer.params.items()} for layer in self.layers]

    def set_weights(self, weights: list[dict[str, np.ndarray]]) -> None:
        """Loads parameters saved by ``get_weights``; ``ShapeError`` when they do not fit."""
        if len(weights) != len(self.layers):
            raise ShapeError(f"{len(weights)} layers of weights for a model of {len(self.layers)} layers.")
        for layer, values in zip(self.layers, weights):
            if set(values) != set(layer.params):
                raise ShapeError(f"{layer.name}: weights {sorted(values)} where {sorted(layer.params)} were expected.")
            for k, v in values.items():
                if tuple(v.shape) != tuple(layer.params[k].shape):
                    raise ShapeError(f"{layer.name}.{k}: shape {v.shape}, expected {tuple(layer.params[k].shape)}.")
                layer.params[k] = self.device.to_device(np.asarray(v, dtype=self.dtype))

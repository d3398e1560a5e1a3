"""Sequential: layers in a row, built from a spec, trained by forward and backward passes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .block import backward_chain, build_chain, forward_chain, run_order, walk
from .device import format_bytes, get_device
from .errors import ShapeError
from .layer import Layer, Shape
from .spec import layers_text, make_layer, parse

MNIST_SHAPE = (28, 28, 1)
# Memory a training step keeps per output value: the output, its gradient, and as much again for scratch
# arrays (a convolution's unfolded input). An estimate, used only to refuse what cannot possibly fit.
ACTIVATION_COPIES = 3


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

    def build(self, *, seed: int = 0, dtype=np.float32, device="cpu", batch_size: int | None = None) -> Sequential:
        """Make every layer's parameters; ``ShapeError`` naming the first layer that does not fit. With
        ``batch_size``, also a ``ShapeError`` as soon as a layer's outputs for such a batch would not fit in
        memory, before the layers after it allocate anything."""
        self.device, self.dtype = get_device(device), np.dtype(dtype)
        rng = np.random.default_rng(seed)
        free = self.device.free_memory() if batch_size else None
        outputs = []

        def fits_in_memory(i: int, layer: Layer) -> None:
            outputs.append(int(np.prod(layer.out_shape)))
            # Only the outputs: the optimiser is not known yet (``check_memory`` counts it before training).
            if self._training_bytes(sum(outputs), batch_size) > free:
                before = self._training_bytes(sum(outputs[:-1]), batch_size)
                with_before = f", which with the {format_bytes(before)} of the layers before it is" if before else ","
                raise ShapeError(
                    f"its {'x'.join(map(str, layer.out_shape))} outputs an image need "
                    f"{format_bytes(self._training_bytes(outputs[-1], batch_size))} for a batch of "
                    f"{batch_size:,}{with_before} more than the {format_bytes(free)} free; use a smaller "
                    f"--batch-size or a smaller layer."
                )

        build_chain(self.layers, self.input_shape, rng=rng, dtype=self.dtype, device=self.device,
                    after_each=fits_in_memory if free else None)
        for i, layer in enumerate(self.layers):
            # The first layer's input gradient is never used: skipping it saves its largest kernel.
            layer.needs_input_grad = i > 0
        self.execution_order = run_order(self.layers)
        self._every_layer = [place.layer for place in walk(self.layers)]  # blocks' children too
        self.flat_params, self.flat_grads = self._gather("params"), self._gather("grads")
        self.built = True
        return self

    def _gather(self, attribute: str):
        """Moves every layer's ``params`` (or ``grads``) into one contiguous array, in ``parameters()`` order,
        and leaves each layer a view of its part: one optimiser kernel, or one sum across processes, then
        covers them all. Layers write their arrays in place (the contract), so the views stay in use."""
        slices = self.parameter_slices()
        flat = self.device.empty(slices[-1][0].stop if slices else 0, self.dtype)
        arrays = [(getattr(layer, attribute), k) for layer in self.layers for k in layer.params]
        for (owner, k), (where, shape) in zip(arrays, slices):
            view = flat[where].reshape(shape)
            self.device.copy_into(view, owner[k])
            owner[k] = view
        return flat

    def parameter_slices(self) -> list[tuple[slice, tuple]]:
        """(where in ``flat_params`` and ``flat_grads``, shape) of each parameter array, in ``parameters()``
        order."""
        slices, offset = [], 0
        for param, _ in self.parameters():
            size = int(np.prod(param.shape))
            slices.append((slice(offset, offset + size), tuple(param.shape)))
            offset += size
        return slices

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].out_shape if self.built else None

    # -- running ---------------------------------------------------------------------------------------------

    def forward(self, x, *, training: bool = False):
        """The logits for the batch ``x`` of shape (N, *input_shape): while training in memory the next
        training step reuses, else a new array. Outside training the layers reuse their outputs' memory from
        call to call (``Layer.reuses_outputs``): fresh pages cost more than the kernels that fill them."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(f"The model takes inputs of shape {self.input_shape}, got {tuple(x.shape[1:])}.")
        if training:
            return forward_chain(self.execution_order, x, training)
        for layer in self._every_layer:
            layer.reuses_outputs = True
        try:
            logits = forward_chain(self.execution_order, x, training)
        finally:
            for layer in self._every_layer:
                layer.reuses_outputs = False
        mine = self.device.empty(logits.shape, logits.dtype)
        self.device.copy_into(mine, logits)
        return mine

    def set_batch_part(self, first: int, total: int) -> None:
        """Tells every layer that the batches it gets are rows ``first``... of batches of ``total`` rows (see
        ``Layer.batch_part``); ``set_batch_part(0, 0)`` goes back to whole batches."""
        part = (first, total) if total else None
        for place in walk(self.layers):
            place.layer.batch_part = part

    def backward(self, dy) -> None:
        """Fills every layer's gradients from the loss gradient of the logits."""
        backward_chain(self.execution_order, dy)

    def parameters(self) -> list[tuple]:
        """(parameter, gradient) pairs in a fixed order: layer by layer, names as the layer lists them. Only
        trainable arrays: a layer's ``state`` is not among them."""
        return [(layer.params[k], layer.grads[k]) for layer in self.layers for k in layer.params]

    def predict(self, images: np.ndarray, batch_size: int = 250) -> np.ndarray:
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
        return [SummaryRow(index, repr(layer), layer.out_shape, *layer.param_counts(), layer.describe_params(),
                           layer.state_count(), depth) for index, depth, layer in numbered_layers(self.layers)]

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

    def get_random_state(self) -> dict[str, dict]:
        """The state of every random generator a layer keeps (dropout's, say), keyed "<layer>.<attribute>"
        (a block's children "<layer>.<child>.<attribute>"): with the weights, what makes a resumed run draw
        the same random numbers as the run that never stopped. JSON-serialisable."""
        return {key: rng.bit_generator.state for key, rng in _generators(self.layers)}

    def set_random_state(self, states: dict[str, dict]) -> None:
        """Restores what ``get_random_state`` gave; ``ShapeError`` when the model has other generators."""
        generators = dict(_generators(self.layers))
        if set(states) != set(generators):
            raise ShapeError(f"Random states for {sorted(states)}, but this model draws from {sorted(generators)}.")
        for key, rng in generators.items():
            rng.bit_generator.state = states[key]

    def weights_are_finite(self) -> bool:
        """False as soon as one parameter is NaN or infinite (a diverged run)."""
        return bool(np.isfinite(self.device.to_host(self.flat_params)).all())

    def check_memory(self, batch_size: int, optimizer_slots: int = 2) -> None:
        """A ``ShapeError`` naming the largest layer when training at ``batch_size`` would need more memory
        than the device has free. Counted: each layer's output and input gradient for the whole batch (and
        as much again for the scratch arrays that convolutions keep), the gradients and the optimiser's
        moments; the parameters themselves are already allocated."""
        free = self.device.free_memory()
        if free is None:
            return
        rows = self.summary()
        per_image = {r.index: int(np.prod(r.out_shape)) for r in rows}
        trainable = sum(r.params for r in rows if r.depth == 0)
        need = self._training_bytes(sum(per_image.values()), batch_size, trainable, optimizer_slots)
        if need <= free:
            return
        largest = max(rows, key=lambda r: per_image[r.index])
        shape = "x".join(str(d) for d in largest.out_shape)
        raise ShapeError(
            f"Training at batch {batch_size:,} needs about {format_bytes(need)} of memory, more than the "
            f"{format_bytes(free)} free on {self.device.name}; the largest is layer {largest.index} {largest.layer}, with "
            f"{shape} outputs an image ({format_bytes(self._training_bytes(per_image[largest.index], batch_size))} "
            f"a batch). Use a smaller --batch-size or a smaller layer."
        )

    def _training_bytes(self, values_per_image: int, batch_size: int, trainable: int = 0,
                        optimizer_slots: int = 0) -> int:
        """The one estimate of the memory a training step needs beyond the parameters themselves: for
        ``values_per_image`` output values of each image of a batch, ``ACTIVATION_COPIES`` copies; for each of
        ``trainable`` parameters, its gradient and the optimiser's ``optimizer_slots`` moments."""
        itemsize = self.dtype.itemsize
        activations = ACTIVATION_COPIES * batch_size * itemsize * values_per_image
        return activations + (1 + optimizer_slots) * itemsize * trainable

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
                self.device.copy_into(arrays[k], v)  # in place: parameters are views of ``flat_params``


def _generators(layers: list[Layer]):
    """(key, generator) for each NumPy random generator the layers keep as an attribute, blocks included."""
    for place in walk(layers):
        for attribute, value in sorted(vars(place.layer).items()):
            if isinstance(value, np.random.Generator):
                yield f"{place.key}.{attribute}", value


def numbered_layers(layers: list[Layer]):
    """(index, depth, layer) of every layer, a block's children right after it, numbered as the summary
    shows them: "1", "2", ..., "5.1", "5.2", "5.skip" (``depth`` 1 and more inside blocks)."""
    return ((place.index, place.depth, place.layer) for place in walk(layers))

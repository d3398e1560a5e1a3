"""The contract every layer follows, built-in or plug-in.

Arrays are channels-last (NHWC): a batch of MNIST images is (N, 28, 28, 1), a conv filter is (KH, KW, C) and
a conv layer's weights are (KH, KW, C, F), the way Keras counts "a (3,3,1) filter has 9 weights and 1 bias".
Shapes passed to ``build`` leave out the batch axis.

A layer's life: ``__init__(**hyperparameters)`` (checked at once, JSON-serialisable), ``build(in_shape, ...)``
(makes parameters and state, returns the output shape or raises ``ShapeError``), then ``forward`` and
``backward`` pairs.

What a layer holds, and who may change it:
    ``params``  trainable arrays. Only the optimiser changes them (in place), and checkpoints save them.
    ``grads``   one array per parameter, same key and shape. ``backward`` fills them (overwrites, never adds).
    ``state``   non-trainable arrays that are saved but not trained: batch normalisation's running mean and
                variance, say. Only ``forward(x, training=True)`` may change them (in place); ``forward`` with
                ``training=False`` and ``backward`` read them only. Optimisers never see them; checkpoints save
                and load them; ``summary`` counts them as non-trainable.
``forward`` and ``backward`` never write into the arrays they are given (a model keeps them).

Random numbers (dropout's) come only from ``np.random.Generator`` objects held as attributes of the layer,
spawned from the ``rng`` that ``build`` gets: ``Sequential.get_random_state`` saves them, so a run stopped with
Ctrl-C resumes bit for bit. NaN in the input stays NaN in the output, so that a diverged run shows in its loss.
"""

from __future__ import annotations

import inspect
import math
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from .device import Device, format_bytes, get_device, kernels_for
from .errors import DeviceError, ShapeError, SpecError

Shape = tuple[int, ...]


class Layer:
    """Base class of all layers.

    Subclasses set ``name`` (the registry name) and ``devices`` (where they have kernels), keep each
    hyperparameter in an attribute of the same name as its ``__init__`` argument (so ``get_config`` works
    unchanged), and implement ``output_shape``, ``forward`` and ``backward``; layers with parameters also
    implement ``init_params``.

    Optional, each used by one command and said by the layer itself, as every built-in layer does:

    ``to_onnx(self, builder, x) -> str`` adds the layer to an ONNX graph for ``numbacnn export`` (``builder``
    is a ``numbacnn.export.OnnxBuilder``; ``x`` and the result name tensors, images in NCHW); see
    docs/plugins.md, "Exporting to ONNX".
    ``to_torch(self, torch) -> torch.nn.Module`` the same layer in PyTorch (NCHW, the channels it is built
    for), which ``numbacnn bench`` times beside it; ``torch`` is the imported module, so that no layer
    imports PyTorch itself.
    ``continues_stage`` (class attribute) True when the feature-map picture (``numbacnn show features``) shows
    the layer's output beside the layer before it (an activation, a pooling) rather than starting a new row.
    ``moves_ahead_of`` (class attribute) the layer classes that, written just before this layer, run just
    after it: for max pooling, ReLU, since max(relu(a), relu(b)) = relu(max(a, b)) and the gradient goes to
    the same input either way, while the ReLU then touches fewer values. Outputs and gradients are unchanged.
    ``fused_with(self, following)`` one step doing this layer and the ``following`` one at once, or None.
    """

    name: ClassVar[str] = ""
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    # True for a block (``numbacnn.block.Block``): its first hyperparameter is the spec text of its children.
    holds_layers: ClassVar[bool] = False
    # See the class docstring.
    continues_stage: ClassVar[bool] = False
    moves_ahead_of: ClassVar[tuple[type, ...]] = ()
    # A model sets this to False on its first layer, whose input gradient nobody reads: a layer with
    # parameters may then skip computing it and return None from backward.
    needs_input_grad: bool = True
    # While a data-parallel run trains, (first, total): the batch a layer gets is rows first, first + 1, ...
    # of a batch of ``total`` rows split across processes. A layer that draws random numbers per example
    # (dropout) draws them for all ``total`` rows and keeps its own, so each example gets what it would get
    # in a one-process run. None: the batch is the whole batch.
    batch_part: tuple[int, int] | None = None

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self.in_shape: Shape | None = None
        self.out_shape: Shape | None = None
        self.dtype = np.dtype(np.float32)
        self.device: Device = get_device("cpu")
        self.kernels: ModuleType | None = None

    # -- building ----------------------------------------------------------------------------------------

    def build(self, in_shape: Shape, *, rng: np.random.Generator, dtype=np.float32, device="cpu") -> Shape:
        """Make the parameters and state for inputs of shape ``in_shape`` (no batch axis); returns the output
        shape."""
        self.place(in_shape, dtype, device)
        self.out_shape = self.output_shape(self.in_shape)
        self._check_param_memory()
        host_params = self.init_params(self.in_shape, rng)
        self.params = {k: self.device.to_device(v.astype(self.dtype)) for k, v in host_params.items()}
        self.grads = {k: self.device.zeros(v.shape, self.dtype) for k, v in host_params.items()}
        self.state = {k: self.device.to_device(v.astype(self.dtype)) for k, v in self.init_state(self.in_shape).items()}
        return self.out_shape

    def place(self, in_shape: Shape, dtype, device) -> None:
        """Sets ``in_shape``, ``dtype``, ``device`` and the ``kernels`` for that device: what every ``build``
        does first."""
        self.in_shape = tuple(int(d) for d in in_shape)
        self.dtype = np.dtype(dtype)
        self.device = get_device(device)
        self.kernels = self.load_kernels(self.device)

    def output_shape(self, in_shape: Shape) -> Shape:
        """The output shape for ``in_shape``; raises ``ShapeError`` when the layer cannot take it."""
        raise NotImplementedError

    def init_params(self, in_shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Initial parameter values as NumPy arrays (none by default)."""
        return {}

    def param_count(self, in_shape: Shape) -> int | None:
        """How many parameter values ``init_params`` will make for inputs of ``in_shape``, said before they
        are made, or None when the layer cannot tell (the default). A layer whose parameters grow with its
        arguments should say: a network too large for memory is then refused from its shapes, in one
        sentence, instead of after minutes of filling gigabytes."""
        return None

    def _check_param_memory(self) -> None:
        """A ``ShapeError`` when the parameters ``param_count`` announces (made in float64, then kept with
        their gradients) would not fit in the memory the device has free."""
        count = self.param_count(self.in_shape)
        free = self.device.free_memory() if count else None
        need = (count or 0) * (8 + 2 * self.dtype.itemsize)
        if free is not None and need > free:
            raise ShapeError(f"its {count:,} parameters need {format_bytes(need)}, more than the "
                             f"{format_bytes(free)} of memory free; make the layer smaller.")

    def init_state(self, in_shape: Shape) -> dict[str, np.ndarray]:
        """Initial non-trainable state as NumPy arrays (none by default): see ``state`` in the module docstring."""
        return {}

    def load_kernels(self, device: Device) -> ModuleType | None:
        """The module holding this layer's kernels for ``device``: by default ``<layer module>.<device>``."""
        if device.name not in self.devices:
            raise DeviceError(
                f"Layer {self.name!r} has no {device.name} kernels (it runs on: {', '.join(self.devices)}); "
                f"choose another device or another layer."
            )
        return kernels_for(type(self).__module__, device)

    # -- running -----------------------------------------------------------------------------------------

    def forward(self, x, *, training: bool = False):
        """The output for the batch ``x``; when ``training``, keeps what ``backward`` needs."""
        raise NotImplementedError

    def backward(self, dy):
        """Given the loss gradient of the output, fills ``self.grads`` and returns the input gradient."""
        raise NotImplementedError

    def forward_for_gradients(self, x):
        """The evaluation-time output for ``x``, keeping what ``backward`` needs to give the gradient of that
        evaluation-time output; state and random generators stay as they are. Saliency maps and Grad-CAM use
        it (``numbacnn.attribution``). By default ``forward(x, training=True)``, which is right for every layer
        whose training pass is the same function as its evaluation pass; a layer whose training pass differs
        (dropout, batch normalisation: one that keeps ``state`` or draws random numbers) overrides it."""
        return self.forward(x, training=True)

    def to_torch(self, torch):
        """The same layer as a ``torch.nn.Module`` (see the class docstring); by default there is none."""
        raise NotImplementedError(f"no PyTorch twin for layer {self.name!r}; timing numbacnn only")

    def fused_with(self, following: Layer):
        """A step of the run order that does this layer and ``following`` (the layer run next) in one, or
        None (the default): see ``numbacnn.block.run_order``."""
        return None

    # Set while a model runs this layer outside training (``Sequential.forward``): its outputs are then read
    # only by the next layer before this one runs again, so ``result`` may reuse their memory too.
    reuses_outputs = False

    def result(self, name: str, shape, training: bool = True):
        """An array for a result this layer hands on (an output, an input gradient).

        While training, the same memory is reused every step, because on the CPU fresh pages for large
        activations cost more than the kernels that fill them: such a result stays valid until this layer's
        next call of the same kind. Outside training the same holds while a model runs the layer (its own
        memory, apart from training's); called on its own, every call gets a new array.
        """
        if training or self.reuses_outputs:
            return self.buffer(name if training else f"{name}_outside_training", shape)
        return self.device.empty(shape, self.dtype)

    def bias_or_zeros(self, size: int):
        """The ``bias`` parameter, or for a layer built without one, zeros made once on its device: kernels
        can then always add a bias instead of having a second version without it."""
        if "bias" in self.params:
            return self.params["bias"]
        zeros = getattr(self, "_zero_bias", None)
        if zeros is None or zeros.shape[0] != size or zeros.dtype != self.dtype:
            self._zero_bias = zeros = self.device.zeros(size, self.dtype)
        return zeros

    def buffer(self, name: str, shape, dtype=None):
        """A scratch array kept across steps and remade only when its shape changes."""
        attr = f"_buffer_{name}"
        buf = getattr(self, attr, None)
        if buf is None or tuple(buf.shape) != tuple(shape):
            buf = self.device.empty(shape, dtype or self.dtype)
            setattr(self, attr, buf)
        return buf

    # -- describing --------------------------------------------------------------------------------------

    @classmethod
    def hyperparameters(cls) -> list[inspect.Parameter]:
        """The ``__init__`` arguments, in order: what the spec text takes positionally."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def get_config(self) -> dict[str, Any]:
        """The hyperparameters, JSON-serialisable: ``type(self)(**config)`` rebuilds the layer."""
        return {p.name: getattr(self, p.name) for p in self.hyperparameters()}

    def param_counts(self) -> tuple[int, int]:
        """(weights, biases): a parameter whose name contains "bias" (``bias``, ``gate_bias``, ``bias2``) counts
        as a bias, every other one as a weight."""
        sizes = {k: int(np.prod(v.shape)) for k, v in self.params.items()}
        biases = sum(n for k, n in sizes.items() if "bias" in k.lower())
        return sum(sizes.values()) - biases, biases

    def state_count(self) -> int:
        """How many non-trainable numbers the layer keeps in ``state``."""
        return sum(int(np.prod(v.shape)) for v in self.state.values())

    def describe_params(self) -> str:
        """The parameters in a user's words, for the summary table ("" when there is nothing to say)."""
        return ""

    def __repr__(self) -> str:
        """The short spec form, as a person writes it: conv2d(32, 3, padding='same')."""
        config, args = self.get_config(), []
        for p in self.hyperparameters():
            value = config[p.name]
            if p.default is p.empty:
                args.append(repr(value))
            elif value != p.default:
                args.append(f"{p.name}={value!r}")
        return f"{self.name}({', '.join(args)})" if args else self.name


# -- helpers for hyperparameter and shape checks, shared by the built-in layers and plug-ins ---------------


def check_int(layer: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a ``SpecError`` naming the layer and the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SpecError(f"{layer}: {name} must be a whole number >= {minimum}, got {value!r}.")
    return int(value)


def check_bool(layer: str, name: str, value) -> bool:
    """``value`` as a bool: True or False (1 and 0 too), or a ``SpecError`` naming the layer and the argument
    (a word such as "no" would otherwise count as true)."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise SpecError(f"{layer}: {name} must be True or False, got {value!r}.")


def check_number(layer: str, name: str, value, minimum: float = 0.0, below: float | None = None) -> float:
    """``value`` as a finite float with ``minimum <= value`` (and ``value < below`` when given)."""
    is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value < minimum or (below is not None and value >= below):
        limits = f"from {minimum:g} up to (not including) {below:g}" if below is not None else f">= {minimum:g}"
        raise SpecError(f"{layer}: {name} must be a number {limits}, got {value!r}.")
    return float(value)


def check_pair(layer: str, name: str, value, minimum: int = 1) -> tuple[int, int]:
    """An int or a pair of ints, each >= ``minimum``, as a pair (height, width)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise SpecError(f"{layer}: {name} must be one number or two (height, width), got {value!r}.")
        return check_int(layer, name, value[0], minimum), check_int(layer, name, value[1], minimum)
    v = check_int(layer, name, value, minimum)
    return v, v


def check_padding(layer: str, padding) -> str | tuple[int, int]:
    """"valid", "same", or the zero rows and columns added on each side as a pair; ``SpecError`` otherwise."""
    if padding in ("valid", "same"):
        return padding
    if isinstance(padding, (bool, str)) or not isinstance(padding, (int, np.integer, list, tuple)):
        raise SpecError(f"{layer}: padding must be 'valid', 'same' or a number, got {padding!r}.")
    return check_pair(layer, "padding", padding, minimum=0)


def filter_geometry(layer: str, in_shape: Shape, kernel: tuple[int, int], stride: tuple[int, int],
                    padding: str | tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, out_height, out_width) of a filter slid over an image input: the padding before the first
    row and column, and the output size. "same" pads so that output = ceil(input / stride), as Keras does.
    ``ShapeError`` when the filter does not fit (``padding`` as ``check_padding`` returns it)."""
    h, w, _ = check_image_shape(layer, in_shape)
    (kh, kw), (sh, sw) = kernel, stride
    if padding == "same":
        oh, ow = math.ceil(h / sh), math.ceil(w / sw)
        top, left = max((oh - 1) * sh + kh - h, 0) // 2, max((ow - 1) * sw + kw - w, 0) // 2
    else:
        top, left = (0, 0) if padding == "valid" else padding
        oh, ow = (h + 2 * top - kh) // sh + 1, (w + 2 * left - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ShapeError(
            f"{layer}: a {kh}x{kw} filter does not fit a {h}x{w} input; "
            f"use a smaller kernel_size, padding='same', or fewer pooling layers before it."
        )
    return top, left, oh, ow


def check_image_shape(layer: str, in_shape: Shape) -> tuple[int, int, int]:
    """``in_shape`` as (height, width, channels), or a ``ShapeError`` saying what to put before the layer."""
    if len(in_shape) != 3:
        raise ShapeError(
            f"{layer} needs an image input (height, width, channels) but gets shape {tuple(in_shape)}; "
            f"put it before flatten/dense, not after."
        )
    return in_shape  # type: ignore[return-value]


def as_config_value(value):
    """Tuples become lists so a config survives a JSON round trip unchanged."""
    return list(value) if isinstance(value, tuple) else value

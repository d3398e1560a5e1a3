"""The ONNX graph builder: what a layer's export writes into, and the model-level export around it.

Inside the graph, images are NCHW (batch, channels, height, width), as ONNX's Conv, pooling and
BatchNormalization expect; flat features are (batch, features). The graph's input is the model's own
channels-last batch (N, 28, 28, 1), turned into NCHW once at the start, and its output is the class
probabilities, as ``Sequential.predict`` gives them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ExportError
from ..layer import Layer
from ..model import Sequential

OPSET = 17
# The file format version that goes with opset 17: runtimes from 2022 on read it.
IR_VERSION = 8
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


def import_onnx():
    """The onnx module, or an ``ExportError`` saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise ExportError('Exporting to ONNX needs the onnx package: pip install "numbacnn[onnx]".') from None
    return onnx


class OnnxBuilder:
    """Collects the nodes and weights of an ONNX graph; a layer's ``to_onnx(builder, x)`` adds its own.

    Tensors are named by strings: each method takes the names of its inputs and returns the name of its output.
    """

    def __init__(self):
        self.onnx = import_onnx()
        self.nodes: list = []
        self.initializers: list = []
        self._used: dict[str, int] = {}

    def fresh_name(self, hint: str) -> str:
        """A tensor name not used yet in this graph, built from ``hint``."""
        count = self._used.get(hint, 0)
        self._used[hint] = count + 1
        return hint if count == 0 else f"{hint}_{count}"

    def add_node(self, op_type: str, inputs: list[str], output: str | None = None, **attributes) -> str:
        """Adds an ONNX operator (``"Conv"``, ``"Relu"``...) with its attributes; returns its output's name
        (``output`` when given). An empty string in ``inputs`` leaves out an optional input."""
        output = output or self.fresh_name(op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output], name=output, **attributes))
        return output

    def add_constant(self, array, hint: str = "const") -> str:
        """Adds the NumPy ``array`` as a weight; returns its name. Floating-point arrays are stored as float32,
        the graph's type. (A layer's arrays may live on a GPU: ``layer.device.to_host(array)`` brings them.)"""
        value = np.asarray(array)
        if value.dtype.kind == "f":
            value = value.astype(np.float32)
        name = self.fresh_name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def add_layer(self, layer: Layer, x: str) -> str:
        """Adds ``layer`` (inference behaviour) applied to tensor ``x``; returns the output's name.

        Every layer, built-in or plug-in, exports through its own ``to_onnx(builder, x)`` method; ``ExportError``
        naming the layer and its package when it has none.
        """
        if not hasattr(layer, "to_onnx"):
            raise ExportError(f"Layer {layer.name!r} ({_provider(layer)}) has no ONNX export: its package must "
                              f"give it a to_onnx method (see docs/plugins.md, \"Exporting to ONNX\").")
        return layer.to_onnx(self, x)

    def add_layers(self, layers: list[Layer], x: str) -> str:
        """Adds a chain of layers, as written (what a block's export calls for its children)."""
        for layer in layers:
            x = self.add_layer(layer, x)
        return x


def _provider(layer: Layer) -> str:
    """"from package P V" for a registered layer, else its Python class."""
    from ..registry import registry

    try:
        entry = registry.entry_for(type(layer))
    except Exception:  # noqa: BLE001 - a layer made in Python without an entry point
        return f"class {type(layer).__module__}.{type(layer).__qualname__}"
    return f"from package {entry.package} {entry.version}"


def to_onnx(model: Sequential):
    """``model`` (built) as an ``onnx.ModelProto``: input "images" (N, *input_shape) float32 channels-last,
    output "probabilities" (N, classes), the softmax of the logits."""
    builder = OnnxBuilder()
    helper, float_type = builder.onnx.helper, builder.onnx.TensorProto.FLOAT
    x = INPUT_NAME
    if len(model.input_shape) == 3:  # channels-last images become ONNX's NCHW once, here
        x = builder.add_node("Transpose", [x], perm=[0, 3, 1, 2])
    logits = builder.add_layers(model.layers, x)
    builder.add_node("Softmax", [logits], output=OUTPUT_NAME, axis=1)
    graph = helper.make_graph(
        builder.nodes, "numbacnn",
        [helper.make_tensor_value_info(INPUT_NAME, float_type, ["N", *model.input_shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, float_type, ["N", *model.output_shape])],
        initializer=builder.initializers,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="numbacnn")
    onnx_model.ir_version = IR_VERSION
    builder.onnx.checker.check_model(onnx_model)
    return onnx_model


def save_onnx(model: Sequential, path: str | Path) -> Path:
    """Writes ``model`` as an ONNX file at ``path``, atomically (an ``OutputError`` when it cannot be
    written); returns the path."""
    from ..files import write_atomically

    data = to_onnx(model).SerializeToString()
    return write_atomically(Path(path), lambda f: f.write(data))

"""The ONNX export of each built-in layer: ``export(builder, layer, x) -> output name``, tensors NCHW.

numbacnn keeps images channels-last and conv weights as (KH, KW, C, F); ONNX wants NCHW tensors and
(F, C, KH, KW) weights, so the weights are transposed here once and the data once at the graph's input.
"""

from __future__ import annotations

from ..layers.avgpool2d import AvgPool2D
from ..layers.batchnorm2d import BatchNorm, BatchNorm2D
from ..layers.conv2d import Conv2D
from ..layers.dense import Dense
from ..layers.dropout import Dropout
from ..layers.flatten import Flatten
from ..layers.maxpool2d import MaxPool2D
from ..layers.relu import ReLU
from ..layers.residual import Residual


def conv2d(builder, layer: Conv2D, x: str) -> str:
    weight = builder.add_constant(layer.device.to_host(layer.params["weight"]).transpose(3, 2, 0, 1), "conv_weight")
    bias = builder.add_constant(layer.device.to_host(layer.params["bias"]), "conv_bias") if layer.bias else ""
    (kh, kw), (sh, sw) = layer._kernel, layer._stride
    top, left, oh, ow = layer._geometry_for(layer.in_shape)
    h, w, _ = layer.in_shape
    # "same" may pad one row or column more at the end than at the start (as Keras does); the rows a
    # filter never reaches need no padding, hence the max(0, ...).
    bottom, right = max(0, (oh - 1) * sh + kh - h - top), max(0, (ow - 1) * sw + kw - w - left)
    inputs = [x, weight, bias] if bias else [x, weight]
    return builder.add_node("Conv", inputs, kernel_shape=[kh, kw], strides=[sh, sw], pads=[top, left, bottom, right])


def dense(builder, layer: Dense, x: str) -> str:
    weight = builder.add_constant(layer.device.to_host(layer.params["weight"]), "dense_weight")  # (in, units)
    if not layer.bias:
        return builder.add_node("MatMul", [x, weight])
    bias = builder.add_constant(layer.device.to_host(layer.params["bias"]), "dense_bias")
    return builder.add_node("Gemm", [x, weight, bias])


def relu(builder, layer: ReLU, x: str) -> str:
    return builder.add_node("Relu", [x])


def pool(op_type: str):
    def export(builder, layer, x: str) -> str:
        return builder.add_node(op_type, [x], kernel_shape=list(layer._size), strides=list(layer._stride))

    return export


def flatten(builder, layer: Flatten, x: str) -> str:
    if len(layer.in_shape) == 3:
        # numbacnn flattens (H, W, C) with channels fastest: back to channels-last before the reshape.
        x = builder.add_node("Transpose", [x], perm=[0, 2, 3, 1])
    return builder.add_node("Flatten", [x], axis=1)


def dropout(builder, layer: Dropout, x: str) -> str:
    return x  # at inference dropout passes its input on unchanged


def batchnorm(builder, layer, x: str) -> str:
    """Inference batch normalisation with the running statistics (ONNX's op takes (N, C) or (N, C, H, W))."""
    host = layer.device.to_host
    inputs = [x] + [builder.add_constant(host(array), f"bn_{key}") for key, array in (
        ("weight", layer.params["weight"]), ("bias", layer.params["bias"]),
        ("running_mean", layer.state["running_mean"]), ("running_var", layer.state["running_var"]))]
    return builder.add_node("BatchNormalization", inputs, epsilon=layer.eps)


def residual(builder, layer: Residual, x: str) -> str:
    branch = builder.add_layers(layer.children, x)
    skip = x if layer.projection is None else builder.add_layer(layer.projection, x)
    return builder.add_node("Add", [branch, skip])


BUILTIN_EXPORTS = {
    Conv2D: conv2d,
    Dense: dense,
    ReLU: relu,
    MaxPool2D: pool("MaxPool"),
    AvgPool2D: pool("AveragePool"),
    Flatten: flatten,
    Dropout: dropout,
    BatchNorm2D: batchnorm,
    BatchNorm: batchnorm,
    Residual: residual,
}

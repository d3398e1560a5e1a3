"""depthwise_conv2d: each input channel convolved with its own filters, with no mixing between channels.

With depth_multiplier M, channel c gets M filters and the output has C * M channels, in the order
(c0 m0, c0 m1, ..., c1 m0, ...), as in Keras. Followed by a 1x1 conv2d it makes a depthwise-separable
convolution: most of a conv2d's accuracy for a fraction of its weights.
"""

from __future__ import annotations

import numpy as np
from numbacnn.errors import SpecError
from numbacnn.layer import Layer, as_config_value, check_int, check_pair, check_padding, filter_geometry


class DepthwiseConv2D(Layer):
    """Depthwise 2-D convolution over channels-last images.

    Args:
        kernel_size: the filter's height and width (one number for a square filter).
        stride: the step between filter positions (one number or height, width).
        padding: "valid" (no padding), "same" (output size = ceil(input / stride), as in Keras),
            or the number of zero rows/columns added on each side (one number or height, width).
        depth_multiplier: filters per input channel.
        bias: whether each filter has a bias.
    """

    name = "depthwise_conv2d"
    devices = ("cpu", "cuda")

    def __init__(self, kernel_size=3, stride=1, padding="valid", depth_multiplier=1, bias=True):
        super().__init__()
        self.kernel_size = as_config_value(kernel_size)
        self.stride = as_config_value(stride)
        self.padding = as_config_value(padding)
        self.depth_multiplier = check_int(self.name, "depth_multiplier", depth_multiplier)
        self.bias = _check_bool(self.name, "bias", bias)
        self._kernel = check_pair(self.name, "kernel_size", kernel_size)
        self._stride = check_pair(self.name, "stride", stride)
        self._padding = check_padding(self.name, padding)

    # -- shapes and parameters -------------------------------------------------------------------------------

    def _geometry_for(self, in_shape) -> tuple[int, int, int, int]:
        """(top, left, out_height, out_width) for ``in_shape``."""
        return filter_geometry(self.name, in_shape, self._kernel, self._stride, self._padding)

    def output_shape(self, in_shape):
        _, _, oh, ow = self._geometry_for(in_shape)
        return (oh, ow, in_shape[2] * self.depth_multiplier)

    def init_params(self, in_shape, rng):
        (kh, kw), c = self._kernel, in_shape[2]
        # He normal with the true fan-in of one output, kh * kw: a depthwise filter sees a single channel.
        std = np.sqrt(2.0 / (kh * kw))
        params = {"weight": rng.normal(0.0, std, size=(kh, kw, c, self.depth_multiplier))}
        if self.bias:
            params["bias"] = np.zeros(c * self.depth_multiplier)
        return params

    def describe_params(self):
        (kh, kw), c, m = self._kernel, self.in_shape[2], self.depth_multiplier
        each = f"{kh * kw} weights + 1 bias" if self.bias else f"{kh * kw} weights"
        return f"{c * m} filters of shape ({kh},{kw}), {m} per input channel, each {each}"

    # -- running -----------------------------------------------------------------------------------------

    def _geometry(self) -> tuple[int, int, int, int]:
        """(stride_h, stride_w, pad_top, pad_left): what every kernel needs besides the arrays."""
        top, left, _, _ = self._geometry_for(self.in_shape)
        return self._stride[0], self._stride[1], top, left

    def forward(self, x, *, training=False):
        out = self.result("out", (x.shape[0], *self.out_shape), training)
        bias = self.bias_or_zeros(self.out_shape[2])
        self.kernels.depthwise_conv2d_forward(x, self.params["weight"], bias, *self._geometry(), out)
        self._x = x if training else None
        return out

    def backward(self, dy):
        x, geometry = self._x, self._geometry()
        db = self.grads["bias"] if self.bias else self.buffer("unused_db", (self.out_shape[2],))
        partial_shape = (self.kernels.param_chunks(x.shape[0]), self.params["weight"].size + db.size)
        partial = self.buffer("partial", partial_shape)
        self.kernels.depthwise_conv2d_backward_params(x, dy, *geometry, partial, self.grads["weight"], db)
        if not self.needs_input_grad:  # the first layer of a model: nobody reads its input gradient
            return None
        dx = self.result("dx", x.shape)
        self.kernels.depthwise_conv2d_backward_input(dy, self.params["weight"], *geometry, dx)
        return dx


def _check_bool(layer: str, name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise SpecError(f"{layer}: {name} must be True or False, got {value!r}.")
    return bool(value)

"""conv2d: a bank of learned filters slid over the image; each filter's output plus its bias is a feature map."""

from __future__ import annotations

import numpy as np

from ...initializers import he_normal
from ...layer import Layer, as_config_value, check_int, check_pair, check_padding, filter_geometry


class Conv2D(Layer):
    """2-D convolution over channels-last images.

    Args:
        filters: how many filters, i.e. output feature maps.
        kernel_size: the filter's height and width (one number for a square filter).
        stride: the step between filter positions (one number or height, width).
        padding: "valid" (no padding), "same" (output size = ceil(input / stride), as in Keras),
            or the number of zero rows/columns added on each side.
        bias: whether each filter has a bias.
    """

    name = "conv2d"
    devices = ("cpu", "cuda")

    def __init__(self, filters, kernel_size=3, stride=1, padding="valid", bias=True):
        super().__init__()
        self.filters = check_int(self.name, "filters", filters)
        self.kernel_size = as_config_value(kernel_size)
        self.stride = as_config_value(stride)
        self.padding = as_config_value(padding)
        self.bias = bool(bias)
        self._kernel = check_pair(self.name, "kernel_size", kernel_size)
        self._stride = check_pair(self.name, "stride", stride)
        self._padding = check_padding(self.name, padding)
        self._workspace = {}  # what a training forward pass keeps for the backward pass (the kernels decide)

    def _geometry_for(self, in_shape) -> tuple[int, int, int, int]:
        """(top, left, out_height, out_width) for ``in_shape``."""
        return filter_geometry(self.name, in_shape, self._kernel, self._stride, self._padding)

    def output_shape(self, in_shape):
        _, _, oh, ow = self._geometry_for(in_shape)
        return (oh, ow, self.filters)

    def init_params(self, in_shape, rng):
        (kh, kw), c = self._kernel, in_shape[2]
        params = {"weight": he_normal(rng, (kh, kw, c, self.filters), fan_in=kh * kw * c)}
        if self.bias:
            params["bias"] = np.zeros(self.filters)
        return params

    def describe_params(self):
        kh, kw = self._kernel
        c = self.in_shape[2]
        per_filter = f"{kh * kw * c} weights + 1 bias" if self.bias else f"{kh * kw * c} weights"
        return f"{self.filters} filters of shape ({kh},{kw},{c}), each {per_filter}"

    def _geometry(self):
        top, left, _, _ = self._geometry_for(self.in_shape)
        return self._stride[0], self._stride[1], top, left

    def forward(self, x, *, training=False):
        out = self.result("out", (x.shape[0], *self.out_shape), training)
        self.kernels.conv2d_forward(x, self.params["weight"], self.bias_or_zeros(self.filters), *self._geometry(), out,
                                    workspace=self._workspace if training else None)
        self._x = x if training else None
        return out

    def backward(self, dy):
        x, geometry = self._x, self._geometry()
        db = self.grads["bias"] if self.bias else self.buffer("unused_db", (self.filters,))
        dx = self.result("dx", x.shape) if self.needs_input_grad else None
        self.kernels.conv2d_backward(x, dy, self.params["weight"], *geometry, self.grads["weight"], db, dx,
                                     workspace=self._workspace)
        return dx


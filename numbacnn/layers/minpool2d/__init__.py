"""minpool2d: keeps the smallest value of each window, per channel.

The minimum of a window is minus the maximum of the window negated, and the first minimum is where the first
maximum of the negated values is: the kernels negate the input and reuse max pooling's, so that ties (the
first minimum wins the gradient), NaN (it passes through) and overlapping windows behave exactly as there.
"""

import numpy as np

from ..pooling import Pool2D


class MinPool2D(Pool2D):
    """Min pooling. Args: size (window, one number or height, width), stride (default: size)."""

    name = "minpool2d"
    continues_stage = True  # the feature-map picture shows it beside the layer before it

    def forward(self, x, *, training=False):
        out = self.result("out", (x.shape[0], *self.out_shape), training)
        argmin = self.buffer("argmin", out.shape, np.int32)
        negated = self.buffer("negated", x.shape)
        self.kernels.minpool2d_forward(x, *self._window(), negated, out, argmin)
        self._argmin = argmin if training else None
        return out

    def backward(self, dy):
        dx = self.result("dx", (dy.shape[0], *self.in_shape))
        self.kernels.minpool2d_backward(dy, self._argmin, *self._window(), dx)
        return dx

    def to_onnx(self, builder, x: str) -> str:
        """ONNX has no MinPool: -MaxPool(-x), which keeps NaN as MaxPool does."""
        pooled = builder.add_node("MaxPool", [builder.add_node("Neg", [x])], **self.onnx_window())
        return builder.add_node("Neg", [pooled])

    def to_torch(self, torch):
        """PyTorch has no min pooling either: -max_pool2d(-x)."""
        window, strides = self.window, self.strides

        class MinPool2d(torch.nn.Module):
            def forward(self, x):
                return -torch.nn.functional.max_pool2d(-x, window, stride=strides)

        return MinPool2d()

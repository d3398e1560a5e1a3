"""maxpool2d: keeps the largest value of each window, per channel."""

import numpy as np

from ..pooling import Pool2D


class MaxPool2D(Pool2D):
    """Max pooling. Args: size (window, one number or height, width), stride (default: size)."""

    name = "maxpool2d"

    def forward(self, x, *, training=False):
        out = self.result("out", (x.shape[0], *self.out_shape), training)
        argmax = self.buffer("argmax", out.shape, np.int32)
        self.kernels.maxpool2d_forward(x, *self._window(), out, argmax)
        self._argmax = argmax if training else None
        return out

    def backward(self, dy):
        dx = self.result("dx", (dy.shape[0], *self.in_shape))
        self.kernels.maxpool2d_backward(dy, self._argmax, dx)
        return dx

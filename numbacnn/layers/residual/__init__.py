"""residual: a branch of layers whose output is added to the block's input, y = branch(x) + skip(x)."""

from __future__ import annotations

import math

from ...block import Block
from ...errors import ShapeError
from ..conv2d import Conv2D
from ..dense import Dense


class Residual(Block):
    """A residual block (He et al., 2015): the branch learns what to add to its input.

    Args:
        layers: the branch, written inside the parentheses:
            ``residual(conv2d(32,3,padding=same) batchnorm2d relu conv2d(32,3,padding=same) batchnorm2d)``.

    The skip is the input itself when the branch keeps its shape. When the branch changes the number of
    channels, or shrinks the image by a whole stride, the skip is a projection that makes the shapes agree: a
    1x1 convolution with that stride and no bias (a dense layer for flat inputs), trained with the branch.
    Put the activation after the block (``residual(...) relu``), as in the original ResNet.
    """

    name = "residual"
    devices = ("cpu", "cuda")

    def __init__(self, layers=""):
        super().__init__(layers)
        self.projection = None

    def named_children(self):
        skip = [("skip", self.projection)] if self.projection is not None else []
        return super().named_children() + skip

    def combine(self, in_shape, children_shape, rng):
        self.projection = None
        if children_shape != in_shape:
            self.projection = self._projection_for(in_shape, children_shape)
            self.projection.build(in_shape, rng=rng, dtype=self.dtype, device=self.device)
        return children_shape

    def _projection_for(self, in_shape, out_shape):
        """The layer that maps the input to the branch's output shape; ``ShapeError`` when none can."""
        if len(in_shape) == 1 and len(out_shape) == 1:
            return Dense(out_shape[0], bias=False)
        if len(in_shape) == 3 and len(out_shape) == 3:
            (h, w, _), (oh, ow, channels) = in_shape, out_shape
            strides = [math.ceil(size / out) for size, out in ((h, oh), (w, ow))]
            if all((size - 1) // s + 1 == out for size, out, s in zip((h, w), (oh, ow), strides)):
                return Conv2D(channels, 1, stride=strides, bias=False)
        raise ShapeError(
            f"the branch turns {tuple(in_shape)} into {tuple(out_shape)}, which no skip connection can match; "
            f"a residual branch must keep the image size or shrink it by a whole stride (use padding='same')."
        )

    def describe_params(self):
        if self.projection is None:
            return "adds its input to the branch's output"
        kind = "dense layer" if isinstance(self.projection, Dense) else "1x1 convolution"
        return f"adds its input, through a {kind} (the skip row), to the branch's output"

    def forward(self, x, *, training=False):
        y = self.forward_children(x, training)
        skip = x if self.projection is None else self.projection.forward(x, training=training)
        out = self.result("out", y.shape, training)
        self.kernels.add(y.reshape(-1), skip.reshape(-1), out.reshape(-1))
        return out

    def backward(self, dy):
        through_branch = self.backward_children(dy)
        if self.projection is None:
            through_skip = dy
        else:
            self.projection.needs_input_grad = self.needs_input_grad
            through_skip = self.projection.backward(dy)
        if not self.needs_input_grad:
            return None
        dx = self.result("dx", through_branch.shape)
        self.kernels.add(through_branch.reshape(-1), through_skip.reshape(-1), dx.reshape(-1))
        return dx

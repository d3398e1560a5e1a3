"""maxpool2d: keeps the largest value of each window, per channel."""

import numpy as np

from ...layer import Layer
from ..pooling import Pool2D
from ..relu import ReLU


class MaxPool2D(Pool2D):
    """Max pooling. Args: size (window, one number or height, width), stride (default: size)."""

    name = "maxpool2d"
    continues_stage = True
    # A ReLU written before max pooling runs after it, on a quarter of the values for a 2x2 window: the
    # outputs and gradients are the same (see ``Layer.moves_ahead_of``).
    moves_ahead_of = (ReLU,)

    @property
    def fuses_relu(self) -> bool:
        """Whether its kernels can also do a ReLU that follows it (``forward(..., relu=True)``): the GPU's can,
        where each launch saved counts; on the CPU a separate ReLU costs little."""
        return getattr(self.kernels, "FUSES_RELU", False)

    def forward(self, x, *, training=False, relu=False):
        out = self.result("out", (x.shape[0], *self.out_shape), training)
        argmax = self.buffer("argmax", out.shape, np.int32)
        fused = {"relu": True} if relu else {}
        self.kernels.maxpool2d_forward(x, *self._window(), out, argmax, **fused)
        self._argmax = argmax if training else None
        self._relu_out = out if training and relu else None
        return out

    def backward(self, dy):
        dx = self.result("dx", (dy.shape[0], *self.in_shape))
        fused = {"out": self._relu_out, "relu": True} if self._relu_out is not None else {}
        self.kernels.maxpool2d_backward(dy, self._argmax, *self._window(), dx, **fused)
        return dx

    def fused_with(self, following):
        """Where the kernels can do the ReLU that follows too (on the GPU, where every launch costs more than
        the ReLU's arithmetic), the two run as one step, ``MaxPoolThenReLU``."""
        if type(following) is ReLU and self.fuses_relu:
            return MaxPoolThenReLU(self, following)
        return None

    def to_onnx(self, builder, x: str) -> str:
        return builder.add_node("MaxPool", [x], **self.onnx_window())

    def to_torch(self, torch):
        return torch.nn.MaxPool2d(self.window, stride=self.strides)


class MaxPoolThenReLU:
    """Max pooling and the ReLU after it, run as one step of a model's run order (see ``block.run_order``):
    one kernel each way instead of two. Both layers stay in the model as they were built; only the running
    is shared."""

    name = "maxpool2d+relu"

    def __init__(self, pool: MaxPool2D, relu: Layer):
        self.pool, self.relu = pool, relu
        self.needs_input_grad = True
        self.out_shape = pool.out_shape

    @property
    def parts(self) -> tuple[Layer, Layer]:
        """The layers this step runs, in the order they run; the first one does the work."""
        return self.pool, self.relu

    def fused_with(self, following):
        return None

    def forward(self, x, *, training=False):
        return self.pool.forward(x, training=training, relu=True)

    def backward(self, dy):
        return self.pool.backward(dy)

    def __repr__(self) -> str:
        return f"{self.pool!r} {self.relu!r}"

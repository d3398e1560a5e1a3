"""avgpool2d: the mean of each window, per channel."""

from ..pooling import Pool2D


class AvgPool2D(Pool2D):
    """Average pooling. Args: size (window, one number or height, width), stride (default: size)."""

    name = "avgpool2d"
    continues_stage = True

    def forward(self, x, *, training=False):
        out = self.result("out", (x.shape[0], *self.out_shape), training)
        self.kernels.avgpool2d_forward(x, *self._window(), out)
        return out

    def backward(self, dy):
        dx = self.result("dx", (dy.shape[0], *self.in_shape))
        self.kernels.avgpool2d_backward(dy, *self._window(), dx)
        return dx

    def backward_through_relu(self, dy, relu_out):
        """With 2x2 windows and stride 2 after a ReLU whose output was ``relu_out``, on the CPU: the gradient at
        the ReLU's input, this layer's backward pass and the ReLU's in one pass (the same numbers)."""
        dx = self.result("dx", (dy.shape[0], *self.in_shape))
        self.kernels.avgpool2d_backward_relu(dy, relu_out, dx)
        return dx

    def to_onnx(self, builder, x: str) -> str:
        return builder.add_node("AveragePool", [x], **self.onnx_window())

    def to_torch(self, torch):
        return torch.nn.AvgPool2d(self.window, stride=self.strides)

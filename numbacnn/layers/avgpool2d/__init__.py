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

    def to_onnx(self, builder, x: str) -> str:
        return builder.add_node("AveragePool", [x], **self.onnx_window())

    def to_torch(self, torch):
        return torch.nn.AvgPool2d(self.window, stride=self.strides)

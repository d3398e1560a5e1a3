"""relu: max(x, 0), elementwise; the usual activation after a convolution or a dense layer."""

from ...layer import Layer


class ReLU(Layer):
    """Rectified linear unit: passes positive values, zeroes the rest."""

    name = "relu"
    devices = ("cpu", "cuda")
    continues_stage = True

    def __init__(self):
        super().__init__()

    def output_shape(self, in_shape):
        return in_shape

    def forward(self, x, *, training=False):
        out = self.result("out", x.shape, training)
        self.kernels.relu_forward(x.reshape(-1), out.reshape(-1))
        self._y = out if training else None
        return out

    def backward(self, dy):
        dx = self.result("dx", dy.shape)
        self.kernels.relu_backward(self._y.reshape(-1), dy.reshape(-1), dx.reshape(-1))
        return dx

    def to_onnx(self, builder, x: str) -> str:
        return builder.add_node("Relu", [x])

    def to_torch(self, torch):
        return torch.nn.ReLU()

"""leaky_relu: x where x > 0, alpha * x elsewhere; unlike relu it never stops the gradient completely."""

from numbacnn.layer import Layer, check_number


class LeakyReLU(Layer):
    """Leaky rectified linear unit, elementwise, on inputs of any shape.

    Args:
        alpha: the slope for negative inputs (>= 0; 0 makes it relu).
    """

    name = "leaky_relu"
    devices = ("cpu", "cuda")

    def __init__(self, alpha=0.01):
        super().__init__()
        self.alpha = check_number(self.name, "alpha", alpha)

    def output_shape(self, in_shape):
        return in_shape

    def _alpha(self):
        """alpha in the layer's dtype, so float32 work never turns into float64."""
        return self.dtype.type(self.alpha)

    def forward(self, x, *, training=False):
        out = self.result("out", x.shape, training)
        self.kernels.leaky_relu_forward(x.reshape(-1), self._alpha(), out.reshape(-1))
        self._x = x if training else None
        return out

    def backward(self, dy):
        dx = self.result("dx", dy.shape)
        self.kernels.leaky_relu_backward(self._x.reshape(-1), dy.reshape(-1), self._alpha(), dx.reshape(-1))
        return dx

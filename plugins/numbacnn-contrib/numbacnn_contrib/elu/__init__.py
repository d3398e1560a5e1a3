"""elu: x where x > 0, alpha * (exp(x) - 1) elsewhere; smooth, with outputs that average near zero."""

from numbacnn.layer import Layer, check_number


class ELU(Layer):
    """Exponential linear unit (Clevert et al., 2015), elementwise, on inputs of any shape.

    Args:
        alpha: the value negative inputs saturate towards is -alpha (>= 0).
    """

    name = "elu"
    devices = ("cpu", "cuda")

    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = check_number(self.name, "alpha", alpha)

    def output_shape(self, in_shape):
        return in_shape

    def _alpha(self):
        """alpha in the layer's dtype, so float32 work never turns into float64."""
        return self.dtype.type(self.alpha)

    def forward(self, x, *, training=False):
        out = self.result("out", x.shape, training)
        self.kernels.elu_forward(x.reshape(-1), self._alpha(), out.reshape(-1))
        self._x = x if training else None
        return out

    def backward(self, dy):
        dx = self.result("dx", dy.shape)
        self.kernels.elu_backward(self._x.reshape(-1), dy.reshape(-1), self._alpha(), dx.reshape(-1))
        return dx

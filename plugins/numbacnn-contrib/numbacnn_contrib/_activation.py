"""What leaky_relu and elu share: an elementwise function of the input with one hyperparameter, alpha."""

from numbacnn.layer import Layer, check_number


class AlphaActivation(Layer):
    """An elementwise activation on inputs of any shape, with ``alpha >= 0``.

    A subclass sets ``name`` and ``onnx_op``, gives ``__init__(self, alpha=<its default>)`` that calls this
    one, and has kernels ``<name>_forward(x, alpha, out)`` and ``<name>_backward(x, dy, alpha, dx)`` on flat
    arrays.
    """

    devices = ("cpu", "cuda")
    onnx_op = ""  # the ONNX operator that computes the same function with the same alpha

    def __init__(self, alpha):
        super().__init__()
        self.alpha = check_number(self.name, "alpha", alpha)

    def output_shape(self, in_shape):
        return in_shape

    def _alpha(self):
        """alpha in the layer's dtype, so float32 work never turns into float64."""
        return self.dtype.type(self.alpha)

    def forward(self, x, *, training=False):
        out = self.result("out", x.shape, training)
        getattr(self.kernels, f"{self.name}_forward")(x.reshape(-1), self._alpha(), out.reshape(-1))
        self._x = x if training else None
        return out

    def backward(self, dy):
        dx = self.result("dx", dy.shape)
        getattr(self.kernels, f"{self.name}_backward")(self._x.reshape(-1), dy.reshape(-1), self._alpha(),
                                                       dx.reshape(-1))
        return dx

    def to_onnx(self, builder, x):
        """The ONNX export (``numbacnn export``): one operator, with the same alpha."""
        return builder.add_node(self.onnx_op, [x], alpha=float(self.alpha))

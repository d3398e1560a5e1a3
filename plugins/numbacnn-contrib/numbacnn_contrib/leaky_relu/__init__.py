"""leaky_relu: x where x > 0, alpha * x elsewhere; unlike relu it never stops the gradient completely."""

from .._activation import AlphaActivation


class LeakyReLU(AlphaActivation):
    """Leaky rectified linear unit, elementwise, on inputs of any shape.

    Args:
        alpha: the slope for negative inputs (>= 0; 0 makes it relu).
    """

    name = "leaky_relu"
    onnx_op = "LeakyRelu"

    def __init__(self, alpha=0.01):
        super().__init__(alpha)

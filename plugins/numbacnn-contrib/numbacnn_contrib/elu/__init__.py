"""elu: x where x > 0, alpha * (exp(x) - 1) elsewhere; smooth, with outputs that average near zero."""

from .._activation import AlphaActivation


class ELU(AlphaActivation):
    """Exponential linear unit (Clevert et al., 2015), elementwise, on inputs of any shape.

    Args:
        alpha: the value negative inputs saturate towards is -alpha (>= 0).
    """

    name = "elu"
    onnx_op = "Elu"

    def __init__(self, alpha=1.0):
        super().__init__(alpha)

"""dense: every input connected to every unit, y = x @ weight + bias."""

import numpy as np

from ...errors import ShapeError
from ...initializers import glorot_uniform
from ...layer import Layer, check_bool, check_int


class Dense(Layer):
    """Fully connected layer. Args: units (outputs), bias (whether each unit has a bias)."""

    name = "dense"
    devices = ("cpu", "cuda")

    def __init__(self, units, bias=True):
        super().__init__()
        self.units = check_int(self.name, "units", units)
        self.bias = check_bool(self.name, "bias", bias)

    def output_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ShapeError(
                f"dense needs flat rows but gets shape {tuple(in_shape)}; put flatten before it."
            )
        return (self.units,)

    def param_count(self, in_shape):
        return (in_shape[0] + self.bias) * self.units

    def init_params(self, in_shape, rng):
        fan_in = in_shape[0]
        params = {"weight": glorot_uniform(rng, (fan_in, self.units), fan_in, self.units)}
        if self.bias:
            params["bias"] = np.zeros(self.units)
        return params

    def describe_params(self):
        each = f"{self.in_shape[0]} weights + 1 bias" if self.bias else f"{self.in_shape[0]} weights"
        return f"{self.units} units, each {each}"

    def forward(self, x, *, training=False):
        out = self.result("out", (x.shape[0], self.units), training)
        self.kernels.dense_forward(x, self.params["weight"], self.bias_or_zeros(self.units), out)
        self._x = x if training else None
        return out

    def backward(self, dy):
        x = self._x
        db = self.grads["bias"] if self.bias else self.buffer("unused_db", (self.units,))
        self.kernels.dense_backward_params(x, dy, self.grads["weight"], db)
        if not self.needs_input_grad:
            return None
        dx = self.result("dx", x.shape)
        self.kernels.dense_backward_input(dy, self.params["weight"], dx)
        return dx

    def to_onnx(self, builder, x: str) -> str:
        weight = builder.add_constant(self.device.to_host(self.params["weight"]), "dense_weight")  # (in, units)
        if not self.bias:
            return builder.add_node("MatMul", [x, weight])
        bias = builder.add_constant(self.device.to_host(self.params["bias"]), "dense_bias")
        return builder.add_node("Gemm", [x, weight, bias])

    def to_torch(self, torch):
        return torch.nn.Linear(self.in_shape[0], self.units, bias=self.bias)

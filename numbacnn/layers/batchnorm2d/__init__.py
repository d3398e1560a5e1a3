"""batchnorm2d and batchnorm: each channel (or feature) normalised by the statistics of the batch, then scaled
and shifted by two learned numbers.

While training, a channel's values over the batch (and, for feature maps, over every position) are
normalised by their own mean and (biased) variance:

    y = (x - mean) / sqrt(var + eps) * weight + bias

and running averages of the mean and the unbiased variance are kept in ``state``. At evaluation the running
averages take the batch statistics' place, so an output depends on its own input only.

``momentum`` follows PyTorch: ``running = (1 - momentum) * running + momentum * batch_statistic``, so it is
the weight of the newest batch (PyTorch's default 0.1). Keras writes the same average with the weight of the
old value instead: its ``momentum=0.99`` is ``momentum=0.01`` here.

A batch with a single value per channel (a batch of one flat example, or of one 1x1 feature map) cannot be
told apart from its mean: it normalises to 0 (the output is ``bias``, and the input gradient is 0), the
running mean moves towards that value, and the running variance is left as it was, because one value says
nothing about the spread. (PyTorch refuses such a batch while training; here it may be the last, short batch
of an epoch, which should not end the training.)

Both layers share one implementation: the input seen as (rows, channels), channels last.
"""

from __future__ import annotations

import numpy as np

from ...errors import ShapeError, SpecError
from ...layer import Layer, check_number


class _BatchNorm(Layer):
    """The shared implementation: inputs seen as (rows, channels), normalised per channel over the rows.

    Args:
        momentum: the weight of each new batch in the running statistics, from 0 (never updated) to 1 (the
            last batch's only).
        eps: added to the variance before its square root (> 0), so a constant channel does not divide by 0.
    """

    devices = ("cpu", "cuda")
    _unit = "channels"  # what describe_params calls one normalised column

    def __init__(self, momentum=0.1, eps=1e-5):
        super().__init__()
        self.momentum = _check_momentum(self.name, momentum)
        self.eps = _check_eps(self.name, eps)

    # -- building ----------------------------------------------------------------------------------------

    def output_shape(self, in_shape):
        self._check_shape(in_shape)
        return tuple(in_shape)

    def _check_shape(self, in_shape) -> None:
        """Raises ``ShapeError`` when the layer does not take inputs of ``in_shape``."""
        raise NotImplementedError

    @property
    def channels(self) -> int:
        return self.in_shape[-1]

    def init_params(self, in_shape, rng):
        # The identity at first: a scale of 1 and a shift of 0 per channel.
        return {"weight": np.ones(in_shape[-1]), "bias": np.zeros(in_shape[-1])}

    def init_state(self, in_shape):
        # What a standard normal input would have: evaluation before any training leaves values as they are.
        return {"running_mean": np.zeros(in_shape[-1]), "running_var": np.ones(in_shape[-1])}

    # -- running -----------------------------------------------------------------------------------------

    def forward(self, x, *, training=False):
        return self._normalise(x, training, self.result("out", x.shape, training), self.kernels.batchnorm_forward)

    def forward_with_relu(self, x, relu: Layer):
        """While training, where this device's kernels can (``batchnorm_relu_forward``, the CPU's): this layer
        and the ReLU ``relu`` after it in one pass, into the ReLU's output (for ``backward_with_relu``); the same
        numbers as the two layers one after the other."""
        out = relu._y = relu.result("out", x.shape, True)
        return self._normalise(x, True, out, self.kernels.batchnorm_relu_forward)

    def _normalise(self, x, training, out, kernel):
        self._x = x if training else None  # with the batch's mean and 1 / std, what backward needs
        self._fixed_statistics = False
        rows = self._rows(x)
        if rows.shape[0] == 0:  # an empty batch has no statistics to use or to keep
            return out
        mean, inv_std = self.buffer("mean", (self.channels,)), self.buffer("inv_std", (self.channels,))
        # Read through the dict every call: a checkpoint may have put new arrays there.
        running_mean, running_var = self.state["running_mean"], self.state["running_var"]
        if training:
            self.kernels.batch_statistics(rows, self.momentum, self.eps, running_mean, running_var, mean, inv_std)
        else:
            self.kernels.running_statistics(running_mean, running_var, self.eps, mean, inv_std)
        kernel(rows, mean, inv_std, self.params["weight"], self.params["bias"], self._rows(out))
        return out

    def forward_for_gradients(self, x):
        # The evaluation pass, with the running statistics, which do not depend on the batch: see backward.
        out = self.forward(x, training=False)
        self._x, self._fixed_statistics = x, True
        return out

    def backward(self, dy):
        return self._backward(dy, relu=False)

    def backward_with_relu(self, dy):
        """The input gradient after ``forward_with_relu``, given ``dy``, the gradient of the ReLU's output."""
        return self._backward(dy, relu=True)

    def _backward(self, dy, relu: bool):
        fixed_statistics = getattr(self, "_fixed_statistics", False)
        x, dy_rows = self._rows(self._x), self._rows(dy)
        mean, inv_std = self.buffer("mean", (self.channels,)), self.buffer("inv_std", (self.channels,))
        weight, bias, kernels = self.params["weight"], self.params["bias"], self.kernels
        dweight, dbias = self.grads["weight"], self.grads["bias"]
        if relu:
            kernels.batchnorm_relu_backward_params(x, dy_rows, mean, inv_std, weight, bias, dweight, dbias)
        else:
            kernels.batchnorm_backward_params(x, dy_rows, mean, inv_std, dweight, dbias)
        if not self.needs_input_grad:
            return None
        dx = self.result("dx", dy.shape)
        # After forward_for_gradients the statistics are constants: no gradient flows through them, which is
        # the same formula with zero parameter gradients in it (dx = weight * inv_std * dy).
        through_statistics = (dweight, dbias)
        if fixed_statistics:
            through_statistics = (self.device.zeros(self.channels, self.dtype),) * 2
        if relu:
            kernels.batchnorm_relu_backward_input(x, dy_rows, mean, inv_std, weight, bias, *through_statistics,
                                                  self._rows(dx))
        else:
            kernels.batchnorm_backward_input(x, dy_rows, mean, inv_std, weight, *through_statistics, self._rows(dx))
        return dx

    def _rows(self, array):
        """``array`` as (rows, channels): a view, channels last."""
        return array.reshape((array.size // self.channels, self.channels))

    # -- describing --------------------------------------------------------------------------------------

    def describe_params(self):
        return (f"{self.channels} {self._unit}: a scale and a shift each; "
                f"running mean and variance kept (not trained)")

    # -- elsewhere ---------------------------------------------------------------------------------------

    def to_onnx(self, builder, x: str) -> str:
        """Inference batch normalisation with the running statistics (ONNX's op takes (N, C) or (N, C, H, W))."""
        host = self.device.to_host
        inputs = [x] + [builder.add_constant(host(array), f"bn_{key}") for key, array in (
            ("weight", self.params["weight"]), ("bias", self.params["bias"]),
            ("running_mean", self.state["running_mean"]), ("running_var", self.state["running_var"]))]
        return builder.add_node("BatchNormalization", inputs, epsilon=self.eps)


class BatchNorm2D(_BatchNorm):
    """Batch normalisation of feature maps (height, width, channels): each channel over the batch and every
    position. Args: momentum (the weight of each new batch in the running statistics, 0 to 1) and eps (added
    to the variance, > 0); see the module docstring."""

    name = "batchnorm2d"
    continues_stage = True

    def _check_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ShapeError(
                f"batchnorm2d needs feature maps (height, width, channels) but gets shape {tuple(in_shape)}; "
                f"put it after a conv2d and before flatten, or use batchnorm for flat features."
            )

    def to_torch(self, torch):
        return torch.nn.BatchNorm2d(self.channels, eps=self.eps, momentum=self.momentum)  # momentum as PyTorch's


class BatchNorm(_BatchNorm):
    """Batch normalisation of flat features (F,): each feature over the batch. Args: momentum (the weight of
    each new batch in the running statistics, 0 to 1) and eps (added to the variance, > 0); see the module
    docstring."""

    name = "batchnorm"
    _unit = "features"

    def _check_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ShapeError(
                f"batchnorm needs flat features (F,) but gets shape {tuple(in_shape)}; put flatten before it, "
                f"or use batchnorm2d on feature maps."
            )


def _check_momentum(layer: str, value) -> float:
    """``value`` as a float from 0 to 1, both included, or a ``SpecError``."""
    try:
        momentum = check_number(layer, "momentum", value, 0.0)
    except SpecError:
        momentum = None
    if momentum is None or momentum > 1:
        raise SpecError(f"{layer}: momentum must be a number from 0 to 1 (the weight of each new batch in the "
                        f"running statistics, e.g. 0.1), got {value!r}.")
    return momentum


def _check_eps(layer: str, value) -> float:
    """``value`` as a float > 0, or a ``SpecError``."""
    try:
        eps = check_number(layer, "eps", value, 0.0)
    except SpecError:
        eps = None
    if not eps:  # None, or 0: a constant channel would then divide by 0
        raise SpecError(f"{layer}: eps must be a number > 0 (added to the variance, e.g. 1e-5), got {value!r}.")
    return eps

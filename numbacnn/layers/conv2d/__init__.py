"""conv2d: a bank of learned filters slid over the image; each filter's output plus its bias is a feature map."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...initializers import he_normal
from ...layer import Layer, as_config_value, check_bool, check_int, check_pair, check_padding, filter_geometry
from ..avgpool2d import AvgPool2D
from ..batchnorm2d import BatchNorm2D
from ..maxpool2d import MaxPool2D
from ..relu import ReLU


class Geometry(NamedTuple):
    """How a filter goes over an input: the zero rows and columns added on each side ("same" may add one more
    at the end than at the start, as Keras does; rows the filter never reaches need none) and the output's
    height and width."""

    top: int
    left: int
    bottom: int
    right: int
    out_height: int
    out_width: int


class Conv2D(Layer):
    """2-D convolution over channels-last images.

    Args:
        filters: how many filters, i.e. output feature maps.
        kernel_size: the filter's height and width (one number for a square filter).
        stride: the step between filter positions (one number or height, width).
        padding: "valid" (no padding), "same" (output size = ceil(input / stride), as in Keras),
            or the number of zero rows/columns added on each side.
        bias: whether each filter has a bias.
    """

    name = "conv2d"
    devices = ("cpu", "cuda")

    def __init__(self, filters, kernel_size=3, stride=1, padding="valid", bias=True):
        super().__init__()
        self.filters = check_int(self.name, "filters", filters)
        self.kernel_size = as_config_value(kernel_size)
        self.stride = as_config_value(stride)
        self.padding = as_config_value(padding)
        self.bias = check_bool(self.name, "bias", bias)
        self._kernel = check_pair(self.name, "kernel_size", kernel_size)
        self._stride = check_pair(self.name, "stride", stride)
        self._padding = check_padding(self.name, padding)
        self._workspace = {}  # what a training forward pass keeps for the backward pass (the kernels decide)

    def geometry(self, in_shape) -> Geometry:
        """The padding on each side and the output size for inputs of ``in_shape`` (height, width, channels);
        ``ShapeError`` when the filter does not fit."""
        top, left, oh, ow = filter_geometry(self.name, in_shape, self._kernel, self._stride, self._padding)
        (h, w, _), (kh, kw), (sh, sw) = in_shape, self._kernel, self._stride
        return Geometry(top, left, max(0, (oh - 1) * sh + kh - h - top), max(0, (ow - 1) * sw + kw - w - left),
                        oh, ow)

    def output_shape(self, in_shape):
        geometry = self.geometry(in_shape)
        return (geometry.out_height, geometry.out_width, self.filters)

    def param_count(self, in_shape):
        (kh, kw), c = self._kernel, in_shape[2]
        return (kh * kw * c + self.bias) * self.filters

    def init_params(self, in_shape, rng):
        (kh, kw), c = self._kernel, in_shape[2]
        params = {"weight": he_normal(rng, (kh, kw, c, self.filters), fan_in=kh * kw * c)}
        if self.bias:
            params["bias"] = np.zeros(self.filters)
        return params

    def describe_params(self):
        kh, kw = self._kernel
        c = self.in_shape[2]
        per_filter = f"{kh * kw * c} weights + 1 bias" if self.bias else f"{kh * kw * c} weights"
        return f"{self.filters} filters of shape ({kh},{kw},{c}), each {per_filter}"

    def _strides_and_padding(self) -> tuple[int, int, int, int]:
        """(stride down, stride across, top padding, left padding): the kernels' arguments."""
        geometry = self.geometry(self.in_shape)
        return self._stride[0], self._stride[1], geometry.top, geometry.left

    def forward(self, x, *, training=False):
        out = self.result("out", (x.shape[0], *self.out_shape), training)
        self.kernels.conv2d_forward(x, self.params["weight"], self.bias_or_zeros(self.filters),
                                    *self._strides_and_padding(), out, workspace=self._workspace if training else None)
        self._x = x if training else None
        return out

    def backward(self, dy):
        x, geometry = self._x, self._strides_and_padding()
        db = self.grads["bias"] if self.bias else self.buffer("unused_db", (self.filters,))
        dx = self.result("dx", x.shape) if self.needs_input_grad else None
        self.kernels.conv2d_backward(x, dy, self.params["weight"], *geometry, self.grads["weight"], db, dx,
                                     workspace=self._workspace)
        return dx

    @property
    def adds_in_kernel(self) -> bool:
        """Whether ``forward_adding`` runs as one kernel here (the CPU's generated kernels)."""
        return self._kernels_fuse("fuses_residual_add", None)

    def forward_adding(self, x, addend, out, relu: bool = False):
        """Outside training, for a residual block whose last step this is: out = this layer's output for ``x``
        plus ``addend`` (the skip), max(., 0) with ``relu`` (the ReLU after the block), in one kernel where
        ``adds_in_kernel``; the same numbers as the three run apart."""
        self.kernels.conv2d_forward_add_relu(x, self.params["weight"], self.bias_or_zeros(self.filters),
                                             *self._strides_and_padding(), addend, out, relu=relu)
        self._x = None
        return out

    def fused_with(self, following):
        """Where this device's kernels can (the CPU's generated kernels), the layer written right after the
        convolution runs in the same kernel: 2x2 max pooling with stride 2 (``ConvThenMaxPool``), a ReLU
        (``ConvThenReLU``), or, outside training, batch normalisation (``ConvThenBatchNorm``) or 2x2 average
        pooling (``ConvThenAvgPool``)."""
        if self._fuses(following):
            return (ConvThenMaxPool if isinstance(following, MaxPool2D) else ConvThenReLU)(self, following)
        if type(following) is BatchNorm2D and self._kernels_fuse("fuses_batchnorm", following):
            return ConvThenBatchNorm(self, following)
        if isinstance(following, AvgPool2D) and self._kernels_fuse("fuses_avg_pool", following):
            return ConvThenAvgPool(self, following)
        return None

    def _fuses(self, following) -> bool:
        """Whether this convolution's kernel can also do ``following``: a ReLU, or 2x2 max pooling."""
        return (isinstance(following, ReLU) and self._kernels_fuse("fuses_relu", following)
                or isinstance(following, MaxPool2D) and self._kernels_fuse("fuses_max_pool", following))

    def _kernels_fuse(self, which: str, following) -> bool:
        fuses = getattr(self.kernels, which, None)
        return fuses is not None and fuses(self, following)

    def to_onnx(self, builder, x: str) -> str:
        # ONNX wants (F, C, KH, KW) weights where numbacnn keeps (KH, KW, C, F): transposed here, once.
        weight = builder.add_constant(self.device.to_host(self.params["weight"]).transpose(3, 2, 0, 1), "conv_weight")
        bias = builder.add_constant(self.device.to_host(self.params["bias"]), "conv_bias") if self.bias else ""
        top, left, bottom, right, _, _ = self.geometry(self.in_shape)
        return builder.add_node("Conv", [x, weight, bias] if bias else [x, weight], kernel_shape=list(self._kernel),
                                strides=list(self._stride), pads=[top, left, bottom, right])

    def to_torch(self, torch):
        """torch.nn.Conv2d with the same padding: where "same" pads less at the top and left than at the bottom
        and right, which Conv2d cannot, a ZeroPad2d before it does the padding."""
        top, left, bottom, right, _, _ = self.geometry(self.in_shape)
        even = (top, left) == (bottom, right)
        conv = torch.nn.Conv2d(self.in_shape[2], self.filters, self._kernel, stride=self._stride, bias=self.bias,
                               padding=(top, left) if even else 0)
        return conv if even else torch.nn.Sequential(torch.nn.ZeroPad2d((left, right, top, bottom)), conv)


class _ConvThen:
    """A convolution and the layer after it, run as one step of a model's run order (see ``block.run_order``).
    Outputs and gradients are exactly those of the layers run one after the other (but for the folded batch
    normalisation of ``ConvThenBatchNorm`` outside training); they stay in the model as they were built (the
    summary and the pictures show them apart, and a feature-map picture runs them one by one)."""

    def __init__(self, conv: Conv2D, following: Layer):
        self.conv, self.following = conv, following
        self.out_shape = following.out_shape

    @property
    def parts(self) -> tuple[Layer, Layer]:
        """The layers this step runs, in the order they run."""
        return self.conv, self.following

    @property
    def needs_input_grad(self) -> bool:
        return self.conv.needs_input_grad

    @needs_input_grad.setter
    def needs_input_grad(self, value: bool) -> None:
        self.conv.needs_input_grad = value

    def fused_with(self, following):
        return None

    def backward(self, dy):
        return self.conv.backward(self.following.backward(dy))

    def __repr__(self) -> str:
        return f"{self.conv!r} {self.following!r}"


class ConvThenReLU(_ConvThen):
    """A convolution whose kernel applies the ReLU written after it as it stores each value, which saves the
    ReLU a pass over the feature maps."""

    name = "conv2d+relu"

    def forward(self, x, *, training=False):
        conv, relu = self.conv, self.following
        out = relu.result("out", (x.shape[0], *conv.out_shape), training)
        conv.kernels.conv2d_forward_relu(x, conv.params["weight"], conv.bias_or_zeros(conv.filters),
                                         *conv._strides_and_padding(), out,
                                         workspace=conv._workspace if training else None)
        conv._x = x if training else None
        relu._y = out if training else None
        return out

    def fused_with(self, following):
        if isinstance(following, AvgPool2D) and self.conv._kernels_fuse("fuses_avg_pool", following):
            return ConvThenAvgPool(self, following)
        return None


class ConvThenAvgPool(_ConvThen):
    """A convolution (or a ``ConvThenReLU``) and the 2x2 average pooling after it, run as one step. Outside
    training one kernel computes the convolution (and the ReLU) and stores only each window's mean, the same
    numbers as the layers one after the other. While training with a ReLU (and a map of even height and width)
    the same kernel also stores the ReLU's full-size output, which its backward pass needs, and backward the
    pooling's and the ReLU's passes are one; without a ReLU, the layers run one after the other."""

    name = "conv2d+avgpool2d"

    def __init__(self, first, pool: AvgPool2D):
        super().__init__(first if isinstance(first, Conv2D) else first.conv, pool)
        self.first = first

    @property
    def parts(self) -> tuple[Layer, ...]:
        return (self.first,) + (self.following,) if isinstance(self.first, Conv2D) else (*self.first.parts,
                                                                                        self.following)

    def forward(self, x, *, training=False):
        conv, pool, relu = self.conv, self.following, self.first is not self.conv
        keeps = training and relu and conv.out_shape[0] % 2 == 0 and conv.out_shape[1] % 2 == 0
        if training and not keeps:
            return self.following.forward(self.first.forward(x, training=True), training=True)
        out = pool.result("out", (x.shape[0], *pool.out_shape), training)
        full = self.first.following.result("out", (x.shape[0], *conv.out_shape), True) if keeps else None
        conv.kernels.conv2d_forward_avg_pooled(x, conv.params["weight"], conv.bias_or_zeros(conv.filters),
                                               *conv._strides_and_padding(), conv.out_shape, out, relu=relu,
                                               full=full, workspace=conv._workspace if training else None)
        conv._x = x if training else None
        if keeps:
            self.first.following._y = full  # the ReLU's output, for the backward pass's mask
        return out

    def forward_for_gradients(self, x):
        return self.forward(x, training=True)

    def backward(self, dy):
        if self.first is self.conv:
            return self.conv.backward(self.following.backward(dy))
        relu = self.first.following
        return self.conv.backward(self.following.backward_through_relu(dy, relu._y))

    def __repr__(self) -> str:
        return " ".join(repr(layer) for layer in self.parts)


class ConvThenMaxPool(_ConvThen):
    """A convolution and the max pooling after it: one kernel computes the convolution and keeps only each
    window's largest value and where it was, so the convolution's full-size output is never written."""

    name = "conv2d+maxpool2d"

    @property
    def pool(self) -> MaxPool2D:
        return self.following

    def forward(self, x, *, training=False):
        conv, pool = self.conv, self.pool
        out = pool.result("out", (x.shape[0], *pool.out_shape), training)
        argmax = pool.buffer("argmax", out.shape, np.int32)
        conv.kernels.conv2d_forward_max_pooled(
            x, conv.params["weight"], conv.bias_or_zeros(conv.filters), *conv._strides_and_padding(),
            conv.out_shape, out, argmax, workspace=conv._workspace if training else None)
        conv._x = x if training else None
        pool._argmax, pool._relu_out = (argmax if training else None), None
        return out


class ConvThenBatchNorm(_ConvThen):
    """A convolution, the batch normalisation after it and, where the convolution's kernel can do it too, the
    ReLU or 2x2 max pooling after that. While training the layers run one after the other, exactly as written:
    the batch's statistics are known only once the convolution is done. Outside training the normalisation is
    a fixed scale and shift per channel, folded into the filters and the bias, and one kernel does it all: the
    full-size feature maps are neither written nor read again. Its outputs then agree with the layers run
    apart to float32 rounding, not to the bit (the scale multiplies the filters before the sum, not the sum).

    A first layer with small filters and max pooling after it (``normalises_by_patches``, small-resnet's) is
    folded while training too: its batch's statistics and its gradients come from small sums over its input
    patches (see ``conv2d/patch_moments.py``), and its full-size feature maps are never made. Its outputs and
    gradients agree with the layers run apart to float32 rounding. A ReLU after the normalisation runs in the
    normalisation's passes while training (``BatchNorm2D.forward_with_relu``), to the bit."""

    name = "conv2d+batchnorm2d"

    def __init__(self, conv: Conv2D, batchnorm: BatchNorm2D, after: Layer | None = None):
        super().__init__(conv, after or batchnorm)
        self.batchnorm, self.after = batchnorm, after
        self._by_patches = False  # whether the last training pass ran from the input patches
        self._with_relu = False  # whether it ran the normalisation and the ReLU in one pass

    @property
    def parts(self) -> tuple[Layer, ...]:
        return (self.conv, self.batchnorm) + ((self.after,) if self.after is not None else ())

    def fused_with(self, following):
        if self.after is None and self.conv._fuses(following):
            return ConvThenBatchNorm(self.conv, self.batchnorm, following)
        return None

    def forward(self, x, *, training=False):
        if not training:
            return self._folded_forward(x, *self._folded(*self._running_statistics()), training)
        self._by_patches = x.shape[0] > 0 and self._normalises_by_patches()
        self._with_relu = isinstance(self.after, ReLU) and hasattr(self.batchnorm.kernels, "batchnorm_relu_forward")
        if self._with_relu:
            return self.batchnorm.forward_with_relu(self.conv.forward(x, training=True), self.after)
        if not self._by_patches:
            return self._apart(x, lambda layer, y: layer.forward(y, training=True))
        conv, bn = self.conv, self.batchnorm
        mean, inv_std = self._statistics()
        conv.kernels.batch_statistics_by_patches(
            x, conv.params["weight"], conv.bias_or_zeros(conv.filters), *conv._strides_and_padding(), conv.out_shape,
            bn.momentum, bn.eps, bn.state["running_mean"], bn.state["running_var"], mean, inv_std, conv._workspace)
        return self._folded_forward(x, *self._folded(mean, inv_std), training)

    def _normalises_by_patches(self) -> bool:
        decides = getattr(self.conv.kernels, "normalises_by_patches", None)
        return isinstance(self.after, MaxPool2D) and decides is not None and decides(self.conv, self.after)

    def _folded_forward(self, x, weight, bias, training):
        """The convolution with the normalisation folded into ``weight`` and ``bias``, and what comes after it,
        as one kernel."""
        conv, after = self.conv, self.after
        args = (x, weight, bias, *conv._strides_and_padding())
        conv._x = self.batchnorm._x = None
        if isinstance(after, MaxPool2D):
            out = after.result("out", (x.shape[0], *after.out_shape), training)
            # While training its own array: the backward pass reads it after any evaluation in between.
            self._argmax = argmax = after.buffer("argmax_training" if training else "argmax", out.shape, np.int32)
            conv.kernels.conv2d_forward_max_pooled(*args, conv.out_shape, out, argmax)
            after._argmax, after._relu_out = None, None
            return out
        out = self.following.result("out", (x.shape[0], *conv.out_shape), False)
        (conv.kernels.conv2d_forward_relu if after is not None else conv.kernels.conv2d_forward)(*args, out)
        return out

    @property
    def adds_in_kernel(self) -> bool:
        """Whether ``forward_adding`` runs as one kernel here: with nothing after the normalisation, on the CPU."""
        return self.after is None and self.conv.adds_in_kernel

    def forward_adding(self, x, addend, out, relu: bool = False):
        """Outside training, for a residual block whose last step this is (see ``Conv2D.forward_adding``): the
        folded convolution plus ``addend``, max(., 0) with ``relu``, in one kernel."""
        weight, bias = self._folded(*self._running_statistics())
        self.conv.kernels.conv2d_forward_add_relu(x, weight, bias, *self.conv._strides_and_padding(), addend, out,
                                                  relu=relu)
        self.conv._x = self.batchnorm._x = None
        return out

    def forward_for_gradients(self, x):
        self._by_patches = self._with_relu = False
        return self._apart(x, lambda layer, y: layer.forward_for_gradients(y))

    def __repr__(self) -> str:
        return " ".join(repr(layer) for layer in self.parts)

    def _apart(self, x, run):
        for layer in self.parts:
            x = run(layer, x)
        return x

    def backward(self, dy):
        if self._by_patches:
            return self._backward_by_patches(dy)
        if self._with_relu:
            return self.conv.backward(self.batchnorm.backward_with_relu(dy))
        if self.after is not None:
            dy = self.after.backward(dy)
        return self.conv.backward(self.batchnorm.backward(dy))

    def _backward_by_patches(self, dy):
        conv, bn = self.conv, self.batchnorm
        db = conv.grads["bias"] if conv.bias else conv.buffer("unused_db", (conv.filters,))
        stride_h, stride_w, _, _ = conv._strides_and_padding()
        conv.kernels.batchnorm_max_pooled_backward_by_patches(
            dy, self._argmax, conv.params["weight"], conv.bias_or_zeros(conv.filters), stride_h, stride_w,
            conv.out_shape, bn.params["weight"], *self._statistics(), conv.grads["weight"], db, bn.grads["weight"],
            bn.grads["bias"], conv._workspace)
        return None  # a first layer: no input gradient (``normalises_by_patches``)

    def _statistics(self):
        """The batch normalisation's arrays for the mean and 1 / std it normalises by."""
        bn = self.batchnorm
        return bn.buffer("mean", (bn.channels,)), bn.buffer("inv_std", (bn.channels,))

    def _running_statistics(self):
        bn = self.batchnorm
        mean, inv_std = self._statistics()
        bn.kernels.running_statistics(bn.state["running_mean"], bn.state["running_var"], bn.eps, mean, inv_std)
        return mean, inv_std

    def _folded(self, mean, inv_std):
        """The filters and bias of the convolution with the normalisation by ``mean`` and ``inv_std`` (the
        running statistics outside training) in them: each filter times its channel's scale, weight * inv_std,
        and each bias (bias - mean) * scale + shift."""
        conv, bn = self.conv, self.batchnorm
        filters = conv.params["weight"]
        weight, bias = conv.buffer("folded_weight", filters.shape), conv.buffer("folded_bias", (conv.filters,))
        conv.kernels.fold_batchnorm(filters, conv.bias_or_zeros(conv.filters), mean, inv_std, bn.params["weight"],
                                    bn.params["bias"], weight, bias)
        return weight, bias

"""residual: a branch of layers whose output is added to the block's input, y = branch(x) + skip(x)."""

from __future__ import annotations

from ...block import Block, forward_chain, forward_for_gradients
from ...errors import NumbacnnError, ShapeError
from ...layer import Layer
from ..conv2d import Conv2D
from ..dense import Dense
from ..relu import ReLU


_PROBE = 720720  # the least common multiple of 1..16


def _chain_shape(layers, shape):
    """The shape ``layers`` turn ``shape`` into, from their shape rules alone (nothing is built); a block
    counts as its chain of children, as a residual block's output is its branch's."""
    for layer in layers:
        shape = _chain_shape(layer.children, shape) if isinstance(layer, Block) else layer.output_shape(shape)
    return tuple(shape)


class Residual(Block):
    """A residual block (He et al., 2015): the branch learns what to add to its input.

    Args:
        layers: the branch, written inside the parentheses:
            ``residual(conv2d(32,3,padding=same) batchnorm2d relu conv2d(32,3,padding=same) batchnorm2d)``.

    The skip is the input itself when the branch keeps its shape. When the branch changes the number of
    channels, or shrinks the image by a whole stride, the skip is a projection that makes the shapes agree: a
    1x1 convolution with that stride and no bias (a dense layer for flat inputs), trained with the branch.
    Put the activation after the block (``residual(...) relu``), as in the original ResNet.
    """

    name = "residual"
    devices = ("cpu", "cuda")

    def __init__(self, layers=""):
        super().__init__(layers)
        self.projection = None

    def named_children(self):
        skip = [("skip", self.projection)] if self.projection is not None else []
        return super().named_children() + skip

    def combine(self, in_shape, children_shape, rng):
        self.projection = None
        if children_shape != in_shape:
            self.projection = self._projection_for(in_shape, children_shape)
            self.projection.build(in_shape, rng=rng, dtype=self.dtype, device=self.device)
        return children_shape

    def _projection_for(self, in_shape, out_shape):
        """The layer that maps the input to the branch's output shape; ``ShapeError`` when none can."""
        if len(in_shape) == 1 and len(out_shape) == 1:
            return Dense(out_shape[0], bias=False)
        if len(in_shape) == 3 and len(out_shape) == 3:
            (h, w, _), (oh, ow, channels) = in_shape, out_shape
            strides = self._branch_strides(in_shape)
            if strides and all((size - 1) // s + 1 == out for size, out, s in zip((h, w), (oh, ow), strides)):
                return Conv2D(channels, 1, stride=strides, bias=False)
        raise ShapeError(
            f"the branch turns {tuple(in_shape)} into {tuple(out_shape)}, which no skip connection can match; "
            f"a residual branch must keep the image size or shrink it by a whole stride (use padding='same')."
        )

    def _branch_strides(self, in_shape):
        """The branch's stride along each image axis (how many input pixels one output pixel moves by), or
        None when the branch's shapes do not tell. Found from the branch's output sizes for two large inputs
        that differ by ``_PROBE`` pixels, a multiple of every stride up to 16: the image size alone cannot
        tell a stride of 3 from one of 2 (a 4-pixel axis becomes 2 pixels under both)."""
        try:
            base = [size + _PROBE * 4 for size in in_shape[:2]]
            small = _chain_shape(self.children, (*base, in_shape[2]))
            large = _chain_shape(self.children, (base[0] + _PROBE, base[1] + _PROBE, in_shape[2]))
        except (NumbacnnError, NotImplementedError, TypeError, ValueError):
            return None
        steps = [b - a for a, b in zip(small[:2], large[:2])]
        if len(small) != 3 or any(step <= 0 or _PROBE % step for step in steps):
            return None
        return [_PROBE // step for step in steps]

    def describe_params(self):
        if self.projection is None:
            return "adds its input to the branch's output"
        kind = "dense layer" if isinstance(self.projection, Dense) else "1x1 convolution"
        return f"adds its input, through a {kind} (the skip row), to the branch's output"

    def forward(self, x, *, training=False):
        if not training and self.adds_in_kernel:
            return self.forward_adding(x)
        y, skip = self._branch_and_skip(x, training)
        out = self.result("out", y.shape, training)
        self.kernels.add(y.reshape(-1), skip.reshape(-1), out.reshape(-1))
        return out

    def forward_with_relu(self, x, relu: Layer):
        """While training, where this device's kernels can (``add_relu``, the CPU's): the block's output with
        the ReLU ``relu`` after it, the addition and the ReLU in one pass into the ReLU's output; the same
        numbers as the two layers one after the other."""
        y, skip = self._branch_and_skip(x, True)
        out = relu._y = relu.result("out", y.shape, True)
        self.kernels.add_relu(y.reshape(-1), skip.reshape(-1), out.reshape(-1))
        return out

    def _branch_and_skip(self, x, training):
        y = self.forward_children(x, training)
        return y, x if self.projection is None else self.projection.forward(x, training=training)

    @property
    def adds_in_kernel(self) -> bool:
        """Whether, outside training, the branch's last step adds the skip as its kernel stores its values (a
        convolution on the CPU: ``Conv2D.forward_adding``), saving the addition its own pass."""
        return bool(self.execution_order) and getattr(self.execution_order[-1], "adds_in_kernel", False)

    def forward_adding(self, x, relu: bool = False):
        """The evaluation-time output (max(., 0) with ``relu``: the ReLU after the block) with the skip added by
        the branch's last step; only where ``adds_in_kernel``."""
        *first, last = self.execution_order
        y = forward_chain(first, x, training=False)
        skip = x if self.projection is None else self.projection.forward(x, training=False)
        return last.forward_adding(y, skip, self.result("out", (x.shape[0], *self.out_shape), False), relu)

    def fused_with(self, following):
        """Outside training, where the branch's last step adds the skip in its kernel, the ReLU written after
        the block runs there too (``ResidualThenReLU``)."""
        return ResidualThenReLU(self, following) if type(following) is ReLU and self.adds_in_kernel else None

    def backward(self, dy):
        through_branch = self.backward_children(dy)
        if self.projection is None:
            through_skip = dy
        else:
            self.projection.needs_input_grad = self.needs_input_grad
            through_skip = self.projection.backward(dy)
        if not self.needs_input_grad:
            return None
        dx = self.result("dx", through_branch.shape)
        self.kernels.add(through_branch.reshape(-1), through_skip.reshape(-1), dx.reshape(-1))
        return dx

    def to_onnx(self, builder, x: str) -> str:
        branch = builder.add_layers(self.children, x)
        skip = x if self.projection is None else builder.add_layer(self.projection, x)
        return builder.add_node("Add", [branch, skip])

    def to_torch(self, torch):
        """Over feature maps: the branch, plus the input or its 1x1 projection."""
        if len(self.in_shape) != 3:
            raise NotImplementedError("no PyTorch twin for a residual block over flat features")
        branch = torch.nn.Sequential(*(child.to_torch(torch) for child in self.children))
        skip = torch.nn.Identity() if self.projection is None else self.projection.to_torch(torch)

        class Residual(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.branch, self.skip = branch, skip

            def forward(self, x):
                return self.branch(x) + self.skip(x)

        return Residual()


class ResidualThenReLU:
    """A residual block and the ReLU written after it, run as one step of a model's run order (see
    ``block.run_order``). Outside training the branch's last convolution adds the skip and applies the ReLU as
    it stores its values (the same numbers as the three run apart); while training the block runs as itself
    and its addition applies the ReLU where its kernels can (``Residual.forward_with_relu``). Both layers stay in
    the model as they were built."""

    name = "residual+relu"

    def __init__(self, block: Residual, relu: Layer):
        self.block, self.relu = block, relu
        self.out_shape = relu.out_shape

    @property
    def parts(self) -> tuple[Layer, Layer]:
        """The layers this step runs, in the order they run; the first one does the work."""
        return self.block, self.relu

    @property
    def needs_input_grad(self) -> bool:
        return self.block.needs_input_grad

    @needs_input_grad.setter
    def needs_input_grad(self, value: bool) -> None:
        self.block.needs_input_grad = value

    def fused_with(self, following):
        return None

    def forward(self, x, *, training=False):
        if not training:
            return self.block.forward_adding(x, relu=True)
        if hasattr(self.block.kernels, "add_relu"):
            return self.block.forward_with_relu(x, self.relu)
        return self.relu.forward(self.block.forward(x, training=True), training=True)

    def forward_for_gradients(self, x):
        return forward_for_gradients(self.relu, forward_for_gradients(self.block, x))

    def backward(self, dy):
        return self.block.backward(self.relu.backward(dy))

    def __repr__(self) -> str:
        return f"{self.block!r} {self.relu!r}"

"""dense_block: the block's input with its branch's output appended along the channels,
y = concat([x, branch(x)], axis=-1), as in DenseNet (Huang et al., 2017).

Every later layer sees the features made before it unchanged, next to the new ones, so a stack of dense blocks
reuses features instead of learning them again, and the gradient reaches early layers through the copies.
"""

from numbacnn.block import Block
from numbacnn.errors import ShapeError


class DenseBlock(Block):
    """A branch of layers whose output channels are appended to the block's input.

    Args:
        layers: the branch, written inside the parentheses: ``dense_block(conv2d(12,3,padding=same) relu)``.

    The branch must keep every axis but the last: an image's height and width (``padding='same'``, no
    pooling), or, for the rows that dense layers pass on, nothing at all. The block's output has the input's
    channels followed by the branch's: ``(H, W, C)`` in, ``(H, W, C + K)`` out for a branch that makes ``K``.
    """

    name = "dense_block"
    devices = ("cpu", "cuda")

    def __init__(self, layers=""):
        super().__init__(layers)

    def combine(self, in_shape, children_shape, rng):
        in_shape, children_shape = tuple(in_shape), tuple(children_shape)
        if children_shape[:-1] != in_shape[:-1]:
            raise ShapeError(_mismatch(in_shape, children_shape))
        self.branch_shape = children_shape
        return (*in_shape[:-1], in_shape[-1] + children_shape[-1])

    def describe_params(self):
        what = "channels" if len(self.in_shape) == 3 else "features"
        return f"appends the branch's {self.branch_shape[-1]} {what} to its input's {self.in_shape[-1]}"

    @staticmethod
    def _rows(array):
        """``array`` as (positions, channels): one row per pixel of every image, or per example of rows."""
        *_, channels = array.shape  # not shape[-1]: the CUDA simulator's shapes refuse negative indices
        return array.reshape((array.size // channels, channels))

    def forward(self, x, *, training=False):
        branch = self.forward_children(x, training)
        out = self.result("out", (x.shape[0], *self.out_shape), training)
        self.kernels.concat_channels(self._rows(x), self._rows(branch), self._rows(out))
        return out

    def backward(self, dy):
        # The branch gets the gradient of the channels it made, as an array of its own: layers read their
        # output gradient as a whole, contiguous array.
        dbranch = self.result("dbranch", (dy.shape[0], *self.branch_shape))
        self.kernels.last_channels(self._rows(dy), self._rows(dbranch))
        # Run even when no input gradient is wanted: the branch's parameter gradients come from here.
        through_branch = self.backward_children(dbranch)
        if not self.needs_input_grad:
            return None
        # The input reaches the output twice, as the first channels and through the branch: the sum of both.
        dx = self.result("dx", (dy.shape[0], *self.in_shape))
        self.kernels.add_first_channels(self._rows(dy), self._rows(through_branch), self._rows(dx))
        return dx


def _mismatch(in_shape, branch_shape) -> str:
    """The one-sentence ``ShapeError`` for a branch whose output cannot be appended to the input."""
    if len(in_shape) == 3:
        keep = (f"the image size {in_shape[0]}x{in_shape[1]}; use padding='same' in its convolutions and no "
                f"pooling or flatten inside it")
    else:
        keep = "every axis but the last; leave out layers that reshape it"
    return (f"dense_block: the branch turns {in_shape} into {branch_shape}, but its output is appended to the "
            f"input along the last axis, so it must keep {keep}.")

"""flatten: an image batch (N, H, W, C) becomes rows (N, H*W*C), channels fastest, as in Keras."""

from ...layer import Layer


class Flatten(Layer):
    """Reshape to one row per example; a view, so it needs no kernels on any device."""

    name = "flatten"
    devices = ("cpu", "cuda")

    def __init__(self):
        super().__init__()

    def load_kernels(self, device):
        return None

    def output_shape(self, in_shape):
        size = 1
        for d in in_shape:
            size *= d
        return (size,)

    def forward(self, x, *, training=False):
        return x.reshape((x.shape[0], *self.out_shape))

    def backward(self, dy):
        return dy.reshape((dy.shape[0], *self.in_shape))

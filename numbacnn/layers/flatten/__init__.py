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

    def to_onnx(self, builder, x: str) -> str:
        if len(self.in_shape) == 3:
            # numbacnn flattens (H, W, C) with channels fastest: back to channels-last before the reshape.
            x = builder.add_node("Transpose", [x], perm=[0, 2, 3, 1])
        return builder.add_node("Flatten", [x], axis=1)

    def to_torch(self, torch):
        return torch.nn.Flatten()

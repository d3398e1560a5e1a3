"""global_avgpool2d: the mean of each channel over the whole image, (H, W, C) -> (C,).

It replaces flatten before the classifier: the dense layer after it sees one number per feature map,
whatever the image size, so it needs far fewer weights.
"""

from numbacnn.layer import Layer, check_image_shape


class GlobalAvgPool2D(Layer):
    """Global average pooling over height and width; no arguments."""

    name = "global_avgpool2d"
    devices = ("cpu", "cuda")

    def __init__(self):
        super().__init__()

    def output_shape(self, in_shape):
        _, _, channels = check_image_shape(self.name, in_shape)
        return (channels,)

    def _scale(self):
        """1 / (height * width) in the layer's dtype."""
        height, width, _ = self.in_shape
        return self.dtype.type(1.0 / (height * width))

    def forward(self, x, *, training=False):
        out = self.result("out", (x.shape[0], *self.out_shape), training)
        self.kernels.global_avgpool2d_forward(x, self._scale(), out)
        return out

    def backward(self, dy):
        dx = self.result("dx", (dy.shape[0], *self.in_shape))
        self.kernels.global_avgpool2d_backward(dy, self._scale(), dx)
        return dx

"""What the pooling layers share: the window, the stride and the output-shape rule."""

from ..errors import ShapeError
from ..layer import Layer, as_config_value, check_image_shape, check_pair


class Pool2D(Layer):
    """A window of ``size`` moved by ``stride`` (default: ``size``) over each channel, without padding.

    The output is floor((input - size) / stride) + 1 along each axis, as Keras' "valid" pooling.
    """

    devices = ("cpu", "cuda")

    def __init__(self, size=2, stride=None):
        super().__init__()
        self.size = as_config_value(size)
        self.stride = as_config_value(stride)
        self._size = check_pair(self.name, "size", size)
        self._stride = self._size if stride is None else check_pair(self.name, "stride", stride)

    def output_shape(self, in_shape):
        h, w, c = check_image_shape(self.name, in_shape)
        (ph, pw), (sh, sw) = self._size, self._stride
        if ph > h or pw > w:
            raise ShapeError(
                f"{self.name}: a {ph}x{pw} window does not fit a {h}x{w} input; "
                f"use a smaller size or fewer pooling layers before it."
            )
        return ((h - ph) // sh + 1, (w - pw) // sw + 1, c)

    @property
    def window(self) -> tuple[int, int]:
        """The window's (height, width)."""
        return self._size

    @property
    def strides(self) -> tuple[int, int]:
        """How far the window moves between outputs, (down, across)."""
        return self._stride

    def onnx_window(self) -> dict:
        """The attributes of an ONNX pooling node for this window (no padding), for ``to_onnx``."""
        return {"kernel_shape": list(self._size), "strides": list(self._stride)}

    def _window(self):
        return (*self._size, *self._stride)

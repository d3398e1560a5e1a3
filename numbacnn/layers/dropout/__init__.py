"""dropout: while training, zeroes a random fraction of the inputs and scales the rest up to keep the mean."""

import numpy as np

from ...layer import Layer, check_number


class Dropout(Layer):
    """Inverted dropout. Args: rate, the fraction of inputs zeroed while training (0 <= rate < 1).

    At evaluation time it passes its input through unchanged.
    """

    name = "dropout"
    devices = ("cpu", "cuda")
    continues_stage = True

    def __init__(self, rate=0.5):
        super().__init__()
        self.rate = check_number(self.name, "rate", rate, 0.0, below=1.0)

    def build(self, in_shape, *, rng, dtype=np.float32, device="cpu"):
        # Its own stream of random numbers, drawn from the model's: the same seed drops the same inputs.
        self._rng = rng.spawn(1)[0]
        return super().build(in_shape, rng=rng, dtype=dtype, device=device)

    def output_shape(self, in_shape):
        return in_shape

    def forward(self, x, *, training=False):
        if not training or self.rate == 0:
            self._mask = None
            return x
        # In a data-parallel run the mask is drawn for the whole batch and each process keeps its rows, so
        # every example gets the mask it gets in a one-process run. What is kept is the seeds the mask is made
        # from, inside the kernel that applies it (the same masks on the CPU and the GPU).
        self._first, total = self.batch_part or (0, x.shape[0])
        self._mask = self.kernels.draw_mask(self._rng, (total, *x.shape[1:]), self.rate, self.dtype, self.device)
        out = self.result("out", x.shape)
        self.kernels.apply_mask(x, self._mask, self._first, self.rate, out)
        return out

    def forward_for_gradients(self, x):
        # The evaluation pass, the identity: backward then hands the gradient back unchanged.
        self._mask = None
        return x

    def backward(self, dy):
        if self._mask is None:
            return dy
        dx = self.result("dx", dy.shape)
        self.kernels.apply_mask(dy, self._mask, self._first, self.rate, dx)
        return dx

    def to_onnx(self, builder, x: str) -> str:
        return x  # at inference dropout passes its input on unchanged

    def to_torch(self, torch):
        return torch.nn.Dropout(self.rate)

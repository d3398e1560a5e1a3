"""dropout: while training, zeroes a random fraction of the inputs and scales the rest up to keep the mean."""

import numpy as np

from ...layer import Layer, check_number


def mask_seeds(rng: np.random.Generator) -> tuple[int, int]:
    """What a step's mask is made from: two 32-bit seeds from the layer's generator. The mask itself is never
    drawn or stored: the kernel that applies it keeps element i of the batch (times 1 / (1 - rate)) when
    mix32(mix32(i ^ seed_a) ^ seed_b) reaches rate * 2 ** 32 (see cpu.py), forward and backward alike, the
    same on the CPU and the GPU."""
    return tuple(int(s) for s in rng.integers(0, 2**32, size=2))


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
        # In a data-parallel run the mask is made for the whole batch and each process applies its rows of
        # it, so every example gets the mask it gets in a one-process run.
        self._first = (self.batch_part or (0, x.shape[0]))[0]
        self._mask = mask_seeds(self._rng)
        return self._masked(x, self.result("out", x.shape))

    def forward_for_gradients(self, x):
        # The evaluation pass, the identity: backward then hands the gradient back unchanged.
        self._mask = None
        return x

    def backward(self, dy):
        if self._mask is None:
            return dy
        return self._masked(dy, self.result("dx", dy.shape))

    def _masked(self, a, out):
        """out = a * this step's mask (``a`` holding rows ``_first``... of the batch); returns out."""
        if a.size:
            threshold = int(self.rate * 2**32)  # a hash is uniform on [0, 2 ** 32): P(h >= threshold) = 1 - rate
            offset = self._first * (a.size // a.shape[0])
            self.kernels.apply_mask(a, self._mask, offset, threshold, out.dtype.type(1.0 / (1.0 - self.rate)), out)
        return out

    def to_onnx(self, builder, x: str) -> str:
        return x  # at inference dropout passes its input on unchanged

    def to_torch(self, torch):
        return torch.nn.Dropout(self.rate)

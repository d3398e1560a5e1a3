"""Weight initialisation: He for layers followed by ReLU, Glorot for the rest (both as in Keras).

Both check the size first: a layer whose weights could never fit (``dense(1000000000)``) ends in a
``ShapeError`` before anything is allocated, instead of swapping the machine to a halt.
"""

import numpy as np

from .errors import ShapeError

# Bytes a training run keeps per weight: the float64 draw here, then the weight, its gradient and two
# optimiser moments in float32.
BYTES_PER_WEIGHT = 8 + 4 * 4


def he_normal(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """Truncated-free He normal: std = sqrt(2 / fan_in); keeps ReLU activations' variance steady."""
    check_fits(shape)
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)


def glorot_uniform(rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot (Xavier) uniform: limit = sqrt(6 / (fan_in + fan_out)); Keras' default for dense layers."""
    check_fits(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def check_fits(shape) -> None:
    """A ``ShapeError`` when weights of ``shape`` would need more memory than the machine has free."""
    from .device import get_device
    from .device import format_bytes

    count = int(np.prod(shape, dtype=object))  # Python ints: no overflow for absurd shapes
    free = get_device("cpu").free_memory()
    if free is not None and count * BYTES_PER_WEIGHT > free:
        raise ShapeError(f"its {count:,} weights {tuple(shape)} need about {format_bytes(count * BYTES_PER_WEIGHT)} "
                         f"of memory to train, more than the {format_bytes(free)} free; make the layer smaller.")

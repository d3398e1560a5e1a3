"""Weight initialisation: He for layers followed by ReLU, Glorot for the rest (both as in Keras)."""

import numpy as np


def he_normal(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """Truncated-free He normal: std = sqrt(2 / fan_in); keeps ReLU activations' variance steady."""
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)


def glorot_uniform(rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot (Xavier) uniform: limit = sqrt(6 / (fan_in + fan_out)); Keras' default for dense layers."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)

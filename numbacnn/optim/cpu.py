"""Parameter updates on the CPU, on flat views of each parameter."""

import math

from numba import njit, prange


@njit(parallel=True, cache=True)
def sgd_update(param, grad, velocity, lr, momentum):
    for i in prange(param.size):
        velocity[i] = momentum * velocity[i] + grad[i]
        param[i] -= lr * velocity[i]


@njit(parallel=True, cache=True)
def adam_update(param, grad, m, v, step_size, beta1, beta2, inv_root_correction, eps):
    """p -= step_size * m / (sqrt(v) * inv_root_correction + eps), after the moving averages are updated."""
    for i in prange(param.size):
        g = grad[i]
        m[i] = beta1 * m[i] + (1 - beta1) * g
        v[i] = beta2 * v[i] + (1 - beta2) * g * g
        param[i] -= step_size * m[i] / (math.sqrt(v[i]) * inv_root_correction + eps)

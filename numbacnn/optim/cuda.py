"""Parameter updates on the GPU, one thread per element of flat views of each parameter.

The hyperparameters are cast to the parameter's dtype on the host, so float32 parameters are updated in
float32 arithmetic throughout.
"""

import math

from numba import cuda

from ..cuda_kernels import THREADS, blocks_for, kernel


@kernel
def _sgd_update(param, grad, velocity, lr, momentum):
    i = cuda.grid(1)
    if i < param.size:
        velocity[i] = momentum * velocity[i] + grad[i]
        param[i] -= lr * velocity[i]


@kernel
def _adam_update(param, grad, m, v, step_size, beta1, one_minus_beta1, beta2, one_minus_beta2,
                 inv_root_correction, eps):
    i = cuda.grid(1)
    if i < param.size:
        g = grad[i]
        m[i] = beta1 * m[i] + one_minus_beta1 * g
        v[i] = beta2 * v[i] + one_minus_beta2 * g * g
        param[i] -= step_size * m[i] / (math.sqrt(v[i]) * inv_root_correction + eps)


def sgd_update(param, grad, velocity, lr, momentum):
    """v = momentum v + g; p -= lr v."""
    if param.size:
        cast = param.dtype.type
        _sgd_update[blocks_for(param.size), THREADS](param, grad, velocity, cast(lr), cast(momentum))


def adam_update(param, grad, m, v, step_size, beta1, beta2, inv_root_correction, eps):
    """p -= step_size * m / (sqrt(v) * inv_root_correction + eps), after the moving averages are updated."""
    if param.size:
        cast = param.dtype.type
        _adam_update[blocks_for(param.size), THREADS](
            param, grad, m, v, cast(step_size), cast(beta1), cast(1 - beta1), cast(beta2), cast(1 - beta2),
            cast(inv_root_correction), cast(eps))

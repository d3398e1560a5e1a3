"""Dense on the CPU: three matrix products, handed to BLAS (NumPy's matmul writing into given arrays).

A dense layer is exactly a matrix product, and BLAS runs those near the machine's peak; a hand-written
loop would only be slower.
"""

import numpy as np

from ...cpu_kernels import matmul, matmul_t


def dense_forward(x, w, b, out):
    """out = x @ w + b."""
    matmul(x, w, out=out)
    out += b


def dense_backward_input(dy, w, dx):
    """dx = dy @ w.T."""
    matmul(dy, w.T, out=dx)


def dense_backward_params(x, dy, dw, db):
    """dw = x.T @ dy and db = dy summed over rows."""
    matmul_t(x, dy, out=dw)
    np.sum(dy, axis=0, out=db)

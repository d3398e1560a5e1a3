"""Launch grids for the CUDA kernels of this package (imported only by the ``cuda`` kernel modules)."""

from numba import config

# The CUDA simulator runs each GPU thread as a Python thread: small blocks keep it quick, and make tiny test
# shapes span several blocks so the edges between blocks are exercised too.
THREADS = 64 if config.ENABLE_CUDASIM else 256


def blocks_for(count: int, threads: int = THREADS) -> int:
    """How many blocks of ``threads`` cover ``count`` items (at least one, so a launch is always valid)."""
    return max(1, -(-count // threads))

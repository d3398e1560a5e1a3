"""dense_block's own work on the GPU, on (positions, channels) views, one thread per element written."""

from numba import cuda

from .._launch import THREADS, blocks_for


@cuda.jit(cache=True)
def _concat_channels(x, branch, out):
    i = cuda.grid(1)
    if i < out.size:
        p, c = i // out.shape[1], i % out.shape[1]
        C = x.shape[1]
        out[p, c] = x[p, c] if c < C else branch[p, c - C]


@cuda.jit(cache=True)
def _last_channels(dy, dbranch):
    i = cuda.grid(1)
    if i < dbranch.size:
        p, k = i // dbranch.shape[1], i % dbranch.shape[1]
        dbranch[p, k] = dy[p, dy.shape[1] - dbranch.shape[1] + k]


@cuda.jit(cache=True)
def _add_first_channels(dy, through_branch, dx):
    i = cuda.grid(1)
    if i < dx.size:
        p, c = i // dx.shape[1], i % dx.shape[1]
        dx[p, c] = dy[p, c] + through_branch[p, c]


def concat_channels(x, branch, out):
    """out[p] = x[p] followed by branch[p]."""
    if out.size:
        _concat_channels[blocks_for(out.size), THREADS](x, branch, out)


def last_channels(dy, dbranch):
    """dbranch[p] = the last dbranch.shape[1] channels of dy[p]: the gradient of the branch's output."""
    if dbranch.size:
        _last_channels[blocks_for(dbranch.size), THREADS](dy, dbranch)


def add_first_channels(dy, through_branch, dx):
    """dx[p] = the first dx.shape[1] channels of dy[p] (the copied input's) + the branch's input gradient."""
    if dx.size:
        _add_first_channels[blocks_for(dx.size), THREADS](dy, through_branch, dx)

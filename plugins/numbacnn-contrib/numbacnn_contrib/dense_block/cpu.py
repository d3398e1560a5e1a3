"""dense_block's own work on the CPU, on (positions, channels) views: appending the branch's channels to the
input's, and splitting the output gradient between the two."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def concat_channels(x, branch, out):
    """out[p] = x[p] followed by branch[p]."""
    C = x.shape[1]
    for p in prange(x.shape[0]):
        out[p, :C] = x[p]
        out[p, C:] = branch[p]


@njit(parallel=True, cache=True)
def last_channels(dy, dbranch):
    """dbranch[p] = the last dbranch.shape[1] channels of dy[p]: the gradient of the branch's output."""
    C = dy.shape[1] - dbranch.shape[1]
    for p in prange(dy.shape[0]):
        dbranch[p] = dy[p, C:]


@njit(parallel=True, cache=True)
def add_first_channels(dy, through_branch, dx):
    """dx[p] = the first dx.shape[1] channels of dy[p] (the copied input's) + the branch's input gradient."""
    for p in prange(dx.shape[0]):
        for c in range(dx.shape[1]):
            dx[p, c] = dy[p, c] + through_branch[p, c]

"""Data-parallel training over MPI: every process holds the model and trains on its part of every batch.

``mpiexec -n P numbacnn train ...`` (or ``srun``) after ``pip install "numbacnn[mpi]"``: nothing else to set.
The trainer asks this module which rows of a batch are this process's, and to sum the step's gradients (with
the step's loss, right answers and a stop flag riding along) over all processes: one in-place Allreduce per
step over one contiguous buffer, never pickled objects. Every process then applies the same update, so all
hold the same weights; only the first process (rank 0) prints and writes files. Ctrl-C or SIGTERM to the
launcher reaches every process; the stop flag rides along with the step's sums, so all stop after the same
step, the first saves the run, and the job ends with 130 or 143 (``cli.main`` aborts on any other code).

With the same global batch and seed, a run on P processes equals the one-process run within float32
rounding: the batch order depends on the seed and the epoch, augmentation and dropout on the seed, the step
and each example's number in the whole batch, never on the process. Batch normalisation normalises each
process's part of the batch (as PyTorch's DistributedDataParallel does without SyncBatchNorm), so networks
with it train alike but not to the bit; their running statistics are averaged over the processes after
every epoch, so that all processes keep the same ones.

On GPUs each process uses the GPU of its rank on its machine, and gradients go through host memory (an MPI
built with CUDA support could take device memory directly; that is not assumed).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from .errors import NumbacnnError

# Set by the launchers: MPICH and Intel MPI's Hydra (PMI_SIZE), Open MPI, and Slurm's PMIx.
LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


class DistributedError(NumbacnnError):
    """MPI is asked for but cannot be used."""


class Group:
    """The processes training together; this base class is the single process of an ordinary run."""

    rank, size, local_rank = 0, 1, 0

    @property
    def is_root(self) -> bool:
        """Whether this process prints and writes (the first one)."""
        return self.rank == 0

    def part(self, count: int) -> tuple[int, int]:
        """(first, stop): this process's rows of a batch of ``count`` rows."""
        return 0, count

    def sum_step(self, model, share: float, numbers: list[float]) -> list[float]:
        """Sums the model's gradients, each process's scaled by ``share`` (its part of the batch), and
        ``numbers`` over all processes, in place; returns the summed numbers."""
        return numbers

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true in any process."""
        return bool(flag)

    def average_state(self, model) -> None:
        """Gives every process the mean over the processes of the model's non-trainable state."""

    def abort(self, code: int) -> None:
        """Ends every process of the job at once."""
        sys.exit(code)


class MPIGroup(Group):
    """The processes of an MPI job, through mpi4py's buffer interface."""

    ABORT_PAUSE_SECONDS = 1.0

    def __init__(self, comm):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        self._buffer = None

    def part(self, count: int) -> tuple[int, int]:
        # Contiguous rows, sizes differing by at most one: process r takes [count*r/P, count*(r+1)/P).
        return count * self.rank // self.size, count * (self.rank + 1) // self.size

    def sum_step(self, model, share: float, numbers: list[float]) -> list[float]:
        n = model.flat_grads.size
        if self._buffer is None or self._buffer.size != n + len(numbers) or self._buffer.dtype != model.dtype:
            self._buffer = np.empty(n + len(numbers), model.dtype)
        buffer = self._buffer
        # The loss gradient is a mean over this process's rows: scaled by its share, the sum over the
        # processes is the mean over the whole batch, as one process computes it.
        np.multiply(model.device.to_host(model.flat_grads), model.dtype.type(share), out=buffer[:n])
        buffer[n:] = numbers
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        model.device.copy_into(model.flat_grads, buffer[:n])
        return [float(v) for v in buffer[n:]]

    def any(self, flag: bool) -> bool:
        flags = np.array([int(bool(flag))], np.int32)
        self.comm.Allreduce(self.MPI.IN_PLACE, flags, op=self.MPI.SUM)
        return bool(flags[0])

    def average_state(self, model) -> None:
        states = model.get_state()
        for layer_state in states:
            for v in layer_state.values():  # once an epoch, so one Allreduce per array is fine
                self.comm.Allreduce(self.MPI.IN_PLACE, v, op=self.MPI.SUM)
                v /= self.size
        model.set_state(states)

    def abort(self, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # The launcher forwards a process's output on its own time, and Abort ends every process at once: without
        # a pause the error message that says why can be lost on a busy machine.
        time.sleep(self.ABORT_PAUSE_SECONDS)
        self.comm.Abort(code)


_current: Group | None = None


def current() -> Group:
    """The processes this one trains with: an MPI job when an MPI launcher started it, else just itself."""
    global _current
    if _current is None:
        _current = _connect()
    return _current


def _connect() -> Group:
    if not any(name in os.environ for name in LAUNCHER_VARIABLES):
        return Group()
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError('This process was started by an MPI launcher, but mpi4py is missing; install it '
                               'with: pip install "numbacnn[mpi]".') from None
    if MPI.COMM_WORLD.Get_size() == 1:
        return Group()
    return MPIGroup(MPI.COMM_WORLD)


def pick_gpu(group: Group) -> None:
    """Makes this process use the GPU of its rank on its machine (round robin when there are fewer GPUs)."""
    from numba import cuda

    count = len(cuda.gpus)
    if count:
        cuda.select_device(group.local_rank % count)

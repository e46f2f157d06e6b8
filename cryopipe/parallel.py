"""MPI made optional: one code path for 1 or N ranks.

:func:`get_comm` returns mpi4py's ``COMM_WORLD`` when mpi4py is installed, or a
single-rank stand-in with the same few methods the stages use. Stages split
work with :func:`split_range` and combine sums with ``comm.Allreduce``.
"""

from __future__ import annotations

import functools
import os

import numpy as np


class SerialComm:
    """The subset of mpi4py's Comm API used by cryopipe, for one rank."""

    def Get_rank(self) -> int:  # noqa: N802 (mpi4py naming)
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def Barrier(self) -> None:  # noqa: N802
        return None

    def bcast(self, obj, root: int = 0):
        return obj

    def gather(self, obj, root: int = 0):
        return [obj]

    def allgather(self, obj):
        return [obj]

    def allreduce(self, obj, op=None):
        return obj

    def Allreduce(self, sendbuf, recvbuf, op=None) -> None:  # noqa: N802
        if sendbuf is not recvbuf and not isinstance(sendbuf, type(None)):
            np.copyto(recvbuf, sendbuf)


def _launched_under_mpi() -> bool:
    """True under a launcher that started more than one rank.

    A one-rank launch runs serially (the same code path): SLURM's ``srun -n1``
    jobsteps set PMI_SIZE=1 without the PMI descriptor, and MPI_Init would abort there.
    """
    keys = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")
    return any(int(os.environ.get(k, "1") or "1") > 1 for k in keys)


@functools.lru_cache(maxsize=1)
def get_comm():
    """COMM_WORLD under an MPI launcher (mpiexec/srun), else a :class:`SerialComm`.

    mpi4py is only imported when a launcher's variables are present, so plain
    runs need no MPI library at all.
    """
    if not _launched_under_mpi():
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError:
        return SerialComm()
    return MPI.COMM_WORLD


def split_range(n: int, rank: int, size: int) -> slice:
    """The contiguous share of ``range(n)`` that ``rank`` of ``size`` handles (sizes differ by <= 1)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def allreduce_sum(comm, array: np.ndarray) -> np.ndarray:
    """Element-wise sum of a host array over all ranks (in place, returned)."""
    if comm.Get_size() > 1:
        from mpi4py import MPI

        comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)
    return array


class _Buffer:
    """Placeholder for an array that follows as a raw MPI buffer (:func:`share_round_robin`)."""

    def __init__(self, a: np.ndarray):
        self.shape, self.dtype = a.shape, a.dtype


def share_round_robin(comm, local: dict, count: int) -> dict:
    """Results of ``count`` jobs dealt round-robin (job j computed on rank j % size, ``local`` = this rank's
    {j: tuple}) on every rank. NumPy arrays in the tuples travel as raw buffers (``Bcast``, no pickling: maps of
    hundreds of MB), anything else pickled."""
    if comm.Get_size() == 1:
        return dict(local)
    rank, size, out = comm.Get_rank(), comm.Get_size(), {}
    for j in range(count):
        owner = j % size
        value = local[j] if rank == owner else None
        spec = comm.bcast(None if value is None else [_Buffer(v) if isinstance(v, np.ndarray) else v for v in value],
                          root=owner)
        items = []
        for k, item in enumerate(spec):
            if isinstance(item, _Buffer):
                buf = np.ascontiguousarray(value[k]) if rank == owner else np.empty(item.shape, item.dtype)
                comm.Bcast(buf, root=owner)
                item = buf
            items.append(item)
        out[j] = tuple(items)
    return out

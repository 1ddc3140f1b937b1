"""Data-parallel training over MPI (mpi4py): `mpirun -n N python -m simcore.train`.

Every rank holds the whole model. The global batch is split: rank r takes its
own slice of each batch of the shared, seeded epoch order. After the backward
pass one in-place Allreduce sums the flat gradient arena (every tensor at
once); dividing by the number of ranks gives the mean-loss gradient of the
global batch, so every rank applies the same optimizer step (AdamW, or Muon and
AdamW) and the weights stay identical. Rank 0 alone prints, writes metrics, samples and checkpoints.

Without MPI (no launcher detected, mpi4py absent) `World` is a single rank
and every collective is a no-op, so the trainer has one code path.
"""
from __future__ import annotations

import os
import sys

import numpy as np

# Environment variables that MPI launchers set in every rank they start.
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "SLURM_NTASKS_MPI")


def launched_by_mpi() -> bool:
    return any(v in os.environ for v in _LAUNCHER_VARS)


class World:
    """The ranks of this job (a single process when not under MPI)."""

    def __init__(self, use_mpi: bool | None = None):
        if use_mpi is None:
            use_mpi = launched_by_mpi()
        self.comm = None
        self.rank, self.size = 0, 1
        if use_mpi:
            try:
                from mpi4py import MPI  # an optional extra; importing it starts MPI, so only here
            except ImportError as e:
                raise ImportError(f"distributed training needs mpi4py: pip install 'simcore[mpi]' ({e})") from None
            self.MPI = MPI
            self.comm = MPI.COMM_WORLD
            self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_sum_(self, arr: np.ndarray) -> np.ndarray:
        """Sum `arr` over all ranks, in place (one Allreduce)."""
        if self.comm is not None and self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM)
        return arr

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def abort(self, message: str, code: int = 1) -> None:
        """Stop every rank at once, naming this rank and the cause."""
        print(f"error: rank {self.rank} of {self.size}: {message}", file=sys.stderr, flush=True)
        if self.comm is not None and self.size > 1:
            self.comm.Abort(code)
        sys.exit(code)

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of n items (sizes differ by at most one)."""
        lo, hi = n * self.rank // self.size, n * (self.rank + 1) // self.size
        return slice(lo, hi)

"""Data-parallel training over MPI: which rank this process is, and the few collectives the
training loop needs.

    mpiexec -n 2 nanollm train ...          # or: mpiexec -n 2 python my_script.py
    comm = world()                          # MPI's COMM_WORLD, or SingleProcess() when alone
    comm.allreduce_sum(flat_grads)          # (n,) in place: every rank ends with the sum

Every rank runs the same program on its own batches. After backward, each rank's gradients go
into one flat buffer (nanollm.step.GradientBuffer, the same one a single process fills) and a
single in-place Allreduce sums them, so every rank applies the same update to the same
parameters. check_identical() verifies that now and then (hashes of every parameter): ranks
that drifted apart are an error, not a silent fork.

A process started without a launcher gets SingleProcess, whose collectives do nothing: a
single-process run needs no mpi4py (the [mpi] extra).
"""

import hashlib
import os
import sys
import time
import traceback
from contextlib import contextmanager

import numpy as np

from nanollm import backends, mpi_launch

ABORT_GRACE_SECONDS = 0.5  # between printing why and MPI Abort (see MPICommunicator.abort)
INSTALL_HINT = "pip install \".[mpi]\" in the nanollm checkout (mpi4py and MPICH from PyPI)"


class SingleProcess:
    """The communicator of a process training alone: rank 0 of 1, collectives are identities."""

    rank, size = 0, 1
    is_root = True
    description = "1 process"

    def allreduce_sum(self, buffer):
        return buffer

    def allgather(self, value):
        return [value]

    def broadcast(self, value):
        return value

    def barrier(self):
        pass

    def abort(self, message, status=1):  # nothing else to stop: the exception goes on as usual
        pass


class MPICommunicator:
    """mpi4py's communicator behind the same four collectives, plus abort."""

    def __init__(self, comm, mpi):
        self.comm, self.mpi = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0
        library = mpi.Get_library_version().strip().splitlines()[0]
        self.description = f"{self.size} ranks over MPI ({' '.join(library.split())})"

    def allreduce_sum(self, buffer):
        """Sum ``buffer`` (a contiguous NumPy array) over the ranks, in place: one Allreduce."""
        self.comm.Allreduce(self.mpi.IN_PLACE, buffer, op=self.mpi.SUM)
        return buffer

    def allgather(self, value):
        """[every rank's value], in rank order (small picklable values: digests, configs, RNG states)."""
        return self.comm.allgather(value)

    def broadcast(self, value):
        """Rank 0's value, on every rank."""
        return self.comm.bcast(value, root=0)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, message, status=1):
        """Print ``message`` (if any) and end every rank of the job with ``status``: the others
        may be waiting in a collective this rank will never reach, and would wait forever."""
        if message:
            print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # mpiexec forwards each rank's output asynchronously, and Abort kills the job at once: give
        # it a moment to pass the message on (without it the crash test lost it in 2 of 25 runs)
        time.sleep(ABORT_GRACE_SECONDS)
        self.comm.Abort(status)
        os._exit(status)  # Abort ends the process; should it ever come back, this rank stops all the same


_WORLD = None


def world():
    """The communicator of this process: MPI's COMM_WORLD when an MPI launcher started it with
    more than one rank (or NANOLLM_MPI=1), else SingleProcess(). Joins MPI on first call."""
    global _WORLD
    if _WORLD is None:
        if not mpi_launch.wants_mpi():
            _WORLD = SingleProcess()
        else:
            _, size, _ = mpi_launch.launched_ranks()
            try:
                from mpi4py import MPI
            except ImportError:
                raise ImportError(f"this process was started by an MPI launcher with {size} ranks but mpi4py is not "
                                  f"installed: {INSTALL_HINT}, or set {mpi_launch.SWITCH}=0 to train each rank "
                                  "alone") from None
            _WORLD = MPICommunicator(MPI.COMM_WORLD, MPI) if MPI.COMM_WORLD.Get_size() > 1 else SingleProcess()
    return _WORLD


def rank_seed(seed, rank):
    """The seed of rank ``rank``'s random stream: rank 0 draws exactly what a single process
    draws (so one rank changes nothing), rank r > 0 the independent stream SeedSequence([seed, r])."""
    return seed if rank == 0 else [seed, rank]


def root_only(comm, action):
    """Run ``action()`` on rank 0 alone (checking and creating folders, writing files): its result
    there, None on the other ranks, which wait for it; its error is raised on every rank."""
    result, error = None, None
    if comm.is_root:
        try:
            result = action()
        except (ValueError, OSError) as exc:
            if comm.size == 1:
                raise
            error = f"{exc}"
    error = comm.broadcast(error)
    if error is not None:
        raise ValueError(error)
    return result


def check_same_config(comm, cfg):
    """A ValueError on every rank when the ranks were started with different configs."""
    if comm.size == 1:
        return
    configs = comm.allgather(cfg)
    for rank, other in enumerate(configs):
        differing = sorted(key for key in set(cfg) | set(other) if configs[0].get(key) != other.get(key))
        if differing:
            raise ValueError(f"rank {rank}'s config differs from rank 0's in {', '.join(differing)}; start every "
                             "rank with the same command, config file and keys")


def parameter_digests(params):
    """{name: hash of the array's bytes}: equal digests mean bit-identical parameters."""
    return {name: hashlib.blake2b(np.ascontiguousarray(backends.to_numpy(p)).data, digest_size=16).hexdigest()
            for name, p in params.items()}


def check_identical(comm, params, step):
    """A RuntimeError on every rank when any rank's parameters differ from rank 0's by a single
    bit: data-parallel ranks must apply the same update to the same weights."""
    if comm.size == 1:
        return
    everyone = comm.allgather(parameter_digests(params))
    for rank, digests in enumerate(everyone):
        differing = [name for name in everyone[0] if digests.get(name) != everyone[0][name]]
        if differing:
            more = f" and {len(differing) - 1} more" if len(differing) > 1 else ""
            when = "before training" if step == 0 else f"after step {step}"
            raise RuntimeError(f"ranks disagree {when}: rank {rank}'s {differing[0]}{more} differ from rank 0's. "
                               "Every rank must build the model with the same seed and resume from the same "
                               "checkpoint; a drift during training is a bug: please report it")


@contextmanager
def failing_together(comm):
    """Around work with collectives: with more than one rank, an error on this rank (a bad
    argument, a full disk, Ctrl-C) is printed and ends every rank (MPI Abort) instead of leaving
    the others waiting forever in their next collective. Alone, errors go on as usual."""
    if comm.size == 1:
        yield
        return
    try:
        yield
    except BaseException as exc:  # whatever it was, the other ranks must stop too
        comm.abort(failure_message(comm, exc))
        raise


def failure_message(comm, exc):
    """'nanollm: rank 1 of 2 failed: <error>; ending all 2 ranks' (with the traceback when NANOLLM_DEBUG is set)."""
    if os.environ.get("NANOLLM_DEBUG"):
        traceback.print_exception(exc)
    what = f"{exc}" if isinstance(exc, (ValueError, OSError, ImportError)) else f"{type(exc).__name__}: {exc}"
    what = " ".join(what.split()) or type(exc).__name__
    return f"nanollm: rank {comm.rank} of {comm.size} failed: {what}; ending all {comm.size} ranks (MPI Abort)"

"""What an MPI launcher tells a process through its environment, read without importing MPI.

    mpiexec -n 2 nanollm train ...     # MPICH: PMI_RANK=0/1, PMI_SIZE=2, MPI_LOCALNRANKS=2

Standard library only: ``nanollm/__init__.py`` calls share_cores_between_ranks() before NumPy
loads, because OpenBLAS fixes its thread count when it starts. Two ranks on a 2-core machine
each starting 2 BLAS threads would fight over the cores; one each is faster (TRAINING.md has the
figures).
"""

import os
import shutil
import sys

# (variable holding the number of ranks, the rank, the ranks on this machine) for each launcher
LAUNCHERS = (
    ("PMI_SIZE", "PMI_RANK", "MPI_LOCALNRANKS"),                                            # MPICH, Intel MPI
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),         # Open MPI
    ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_SIZE"),            # MVAPICH
)
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
SWITCH = "NANOLLM_MPI"  # "0": never use MPI (each rank trains alone); "1": use it even if no launcher is recognised


def _integer(name):
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def launched_ranks():
    """(rank, number of ranks, ranks on this machine) as the launcher set them; (0, 1, 1) when no
    launcher started this process (or NANOLLM_MPI=0)."""
    if os.environ.get(SWITCH) == "0":
        return 0, 1, 1
    for size_name, rank_name, local_name in LAUNCHERS:
        size = _integer(size_name)
        if size is not None:
            return _integer(rank_name) or 0, size, _integer(local_name) or size
    return 0, 1, 1


def wants_mpi():
    """Whether training should join MPI: started by a launcher with more than one rank, or
    NANOLLM_MPI=1."""
    return os.environ.get(SWITCH) == "1" or launched_ranks()[1] > 1


def find_mpiexec():
    """The path of mpiexec: the one beside this Python (MPICH's wheel puts it in the environment's
    bin/), else the first on PATH; None when there is none."""
    beside_python = os.path.dirname(sys.executable)
    return shutil.which("mpiexec", path=os.pathsep.join([beside_python, os.environ.get("PATH", "")]))


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def share_cores_between_ranks():
    """With k ranks on this machine, give each rank's thread pools (OpenBLAS, OpenMP, MKL,
    Numba) cores // k threads, unless the user set any of those variables (OpenBLAS also reads
    OMP_NUM_THREADS, so one set by hand is the user's choice for all). Returns what it set."""
    _, _, local = launched_ranks()
    if local <= 1 or any(name in os.environ for name in THREAD_VARIABLES):
        return {}
    threads = str(max(1, cores() // local))
    chosen = {name: threads for name in THREAD_VARIABLES}
    os.environ.update(chosen)
    return chosen

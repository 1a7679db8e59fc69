"""Keep freed activation memory in the process instead of handing it back to the kernel each step.

A training step allocates the same activation arrays every step and frees them after the
backward. glibc's malloc serves blocks over its mmap threshold (128 KiB at first, raised
only as such blocks are freed) with fresh mmap()s and returns them with munmap(), and trims the
heap's top once more than 128 KiB is free there; either way the next step's arrays are new pages
that the kernel must fault in and zero. At nanoGPT's CPU config that was a third of a fresh
process's train step (48 ms -> 30 ms with this; PyTorch's step did not change), and page
faults cost more still on a virtual machine whose CPU time is being stolen.

keep_freed_memory() tells malloc (through mallopt) to serve blocks up to 32 MiB, its ceiling,
from the heap and to keep up to 1 GiB of free heap for reuse. Peak resident memory is the same:
what is kept is what the next step needs again. Blocks over 32 MiB (GPT-2's logits) still come
and go through mmap. ``import nanollm`` calls it; NANOLLM_MALLOC=default leaves malloc alone.
Elsewhere than glibc (macOS, musl, Windows) it does nothing.
"""

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # free heap top kept before trimming (bytes)
M_MMAP_THRESHOLD = -3  # blocks at least this large are served by mmap
MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 2**30
SWITCH = "NANOLLM_MALLOC"  # "default": leave malloc's settings as they are


def keep_freed_memory():
    """Set glibc malloc's mmap and trim thresholds (see the module docstring). Returns True when
    they were set, False where there is no glibc or NANOLLM_MALLOC=default."""
    if os.environ.get(SWITCH) == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc's own symbol: musl has mallopt as a stub that does nothing
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1

r"""Host memory: keep what the C allocator frees, so that XLA's per-call temporaries on the CPU reuse the pages
of the previous call instead of page-faulting on fresh ones.

XLA's CPU backend allocates a compiled call's temporaries at every call, as one block of the program's peak
temporary size, and frees it at the end. glibc's `malloc` serves a block above its mmap threshold (which adapts
up to 32 MiB, no further) with a fresh mapping and unmaps it when it is freed, so a call whose temporaries pass
32 MiB touches every page of them for the first time, at every call: a page fault per 4 KiB page. The default
`astroformer train` step with the simulated read ("na-ode") needs 45-59 MB of temporaries (softmax's 21 MB,
the closed form's 27 MB stay under the threshold), and those faults cost it about a quarter of its time:
62 against 46 ms per step, side by side (2026-12-05, docs/performance.md).
"""

import ctypes
import os

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (<malloc.h>)
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 1 << 30

_kept = False


def keep_freed_host_memory() -> bool:
    r"""Ask the C allocator to serve large blocks from its heap and to keep what is freed (up to 1 GiB at the
    top of the heap), so that every call of a compiled function reuses the memory of the previous call's
    temporaries (see the module's docstring for why this matters on the CPU).

    Process-wide and for the rest of the process: the process then keeps memory it has freed instead of
    returning it to the system, so its resident size does not shrink after a large computation (memory freed
    inside the heap is reused by later allocations). Call it at the start of a training or benchmark program;
    `astroformer train` and the speed benchmarks do. It changes no result, only where memory comes from.
    `ASTROFORMER_KEEP_HOST_MEMORY=0` in the environment turns it off (then it does nothing and returns False).

    Returns whether the allocator took the settings: False where the C library is not glibc (macOS, Windows,
    musl), which do not offer them. (With another allocator preloaded, e.g. jemalloc, glibc takes the settings
    but the allocations are not its own: the call then has no effect.)
    """
    global _kept
    if _kept:
        return True
    if os.name != "posix" or os.environ.get("ASTROFORMER_KEEP_HOST_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
        libc.gnu_get_libc_version  # glibc only: mallopt's parameters are glibc's
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _kept


def freed_host_memory_kept() -> bool:
    """Whether `keep_freed_host_memory` has taken effect in this process."""
    return _kept

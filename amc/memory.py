"""Process memory settings that make repeated large forward passes cheaper on Linux (glibc).

Every scoring or recalibration pass allocates activation tensors of the same large sizes again. glibc's
``malloc`` serves blocks above its mmap threshold (at most 32 MiB) with fresh ``mmap`` calls and returns
them to the kernel when they are freed, so each pass page-faults its activations in anew: kernel time
that on MobileNet-V1 at 224 px was as large as the user time. :func:`keep_freed_memory` tells glibc to
serve every block from its heap and to keep freed memory for reuse (``mallopt``): the process keeps the
peak of its heap instead of returning it between passes. It changes the whole process, so the library
never calls it; ``amc search`` does (``AMC_KEEP_FREED_MEMORY=0`` turns it off).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
M_MMAP_MAX = -4


def libc() -> ctypes.CDLL | None:
    """The process's C library (None where it cannot be loaded)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Make glibc serve large blocks from its heap and keep freed memory for reuse; True if applied
    (False where the C library is not glibc, e.g. macOS, Windows or musl)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    c = libc()
    return c is not None and bool(c.mallopt(M_MMAP_MAX, 0)) and bool(c.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))

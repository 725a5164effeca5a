"""Keep the process small: hand freed large buffers back to the OS (private)."""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["return_large_buffers_to_os"]

#: glibc's mallopt parameter number for M_MMAP_THRESHOLD.
_M_MMAP_THRESHOLD = -3


def return_large_buffers_to_os(threshold_bytes: int = 4 * 2**20) -> bool:
    """Serve allocations of ``threshold_bytes`` or more by mmap, so that freeing returns them.

    glibc raises its mmap threshold after the first large free (up to 32 MB),
    after which onnxruntime's activation buffers (about 26 MB each on a
    512 x 512 x 60 scan) stay in the heap when freed: the five models then
    kept about 600 MB resident. A fixed threshold stops that (peak RSS of
    ``cac score`` about 1.05 GB -> 0.46 GB). Linux with glibc only; does
    nothing where ``MALLOC_MMAP_THRESHOLD_`` is set already. Returns whether
    the setting was applied.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):  # musl or another libc
        return False

"""Process-wide memory behaviour of a long-running worker.

Decoded frames and model inputs are large, short-lived buffers allocated on decode threads
and freed on the inference thread. glibc keeps such freed memory in its per-thread heaps
instead of returning it, so RSS crept up video after video (measured: 690 MB -> 1 GB over
36 benchmark videos). Trimming the heaps after each batch keeps it flat (~250-450 MB) for
about 0.01 CPU-s per video. Pinning glibc's mmap threshold instead also kept RSS flat, but
made every large buffer a fresh mmap whose page faults tripled system time per video.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the OS; False where that is not possible."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False

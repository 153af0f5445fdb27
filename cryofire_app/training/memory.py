"""Giving freed memory back to the system between a run's phases.

torch's CPU tensors of up to a few tens of MB are allocated on the C heap, and glibc keeps the pages of freed heap
blocks for reuse. After a phase that made many such temporaries (the seed's searches, a pass over every particle)
hundreds of MB can be resident without holding any array; the next phase's peak then adds to them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release_freed_memory"]


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):   # not glibc (macOS, Windows, musl): nothing to do
        return None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the system (glibc ``malloc_trim(0)``; milliseconds). True when it ran."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True

"""Heap tuning for the CPU: keep freed activation buffers instead of returning them to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_cpu_allocator"]

_ALLOCATOR_TUNED: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep freed activation buffers in the process heap instead of returning them to the OS.

    PyTorch's CPU tensors come from glibc ``malloc``; blocks above the mmap threshold are
    ``munmap``-ed on free, so every new ``(B*N, W)`` activation page-faults all its pages again
    (measured: a 12.8 MB elementwise op takes 4 ms instead of 1 ms while the meta-learning graph is
    alive). Raising the mmap threshold to its maximum (32 MiB) and the trim threshold lets the heap
    recycle them. Results are unchanged; only the peak resident memory is kept rather than returned.
    Idempotent; a no-op (returns False) outside glibc or with ``FUNCTA_NO_MALLOC_TUNING=1``.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is not None:
        return _ALLOCATOR_TUNED
    _ALLOCATOR_TUNED = False
    if not sys.platform.startswith("linux") or os.environ.get("FUNCTA_NO_MALLOC_TUNING") == "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 2**20) == 1 and libc.mallopt(m_trim_threshold, 2**30) == 1
    except (OSError, AttributeError):
        ok = False
    _ALLOCATOR_TUNED = bool(ok)
    return _ALLOCATOR_TUNED

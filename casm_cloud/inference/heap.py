"""Let a process reuse the buffers of its forward passes instead of faulting them in anew.

glibc serves a ``malloc`` above its mmap threshold with a fresh mapping,
whose pages the kernel faults in and zeroes one by one, and unmaps it on
``free``.  The threshold normally grows to the largest block freed (up to
32 MiB), but dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_``
set, which fixes it at 128 kB: every activation buffer of every forward is
then a new mapping.  Measured on one core (``docs/architecture.md``, "Known
traps"): the windowed EA-LSTM took 1.21 s instead of 0.71 s and 118,000
page faults for 2,560 windows.

The windowed EA-LSTM (:mod:`casm_cloud.somo.windowed`) calls
:func:`keep_freed_buffers` once per process on CPU and :func:`trim` after
each block, so a worker holds little between tasks, as dask's setting
intends.  Off glibc (macOS, musl) both do nothing.  CASM's dense kernel does
not: its fp32 activations in batches of 8,192 rows (34 MB) are above the
32 MiB ceiling anyway, and ``benchmarks/bench_predict.py --quick`` run with
and without it side by side found its end-to-end rate no better (fp32 and
bf16 both within 3-7 %, slower if anything); smaller batches gained fp32 3 %
and cost bf16 on AMX a third.
"""

from __future__ import annotations

import ctypes
import functools

__all__ = ["keep_freed_buffers", "trim"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3                 # glibc's malloc.h
#: Blocks below this come from the heap (glibc's largest dynamic threshold).
MMAP_THRESHOLD = 32 << 20
#: Free heap kept for reuse before glibc returns it to the system.
TRIM_THRESHOLD = 64 << 20


@functools.cache
def _glibc():
    """The process's C library if it is glibc, else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


@functools.cache
def keep_freed_buffers() -> None:
    """Once per process: blocks below 32 MiB come from the heap and stay there when freed."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def trim() -> None:
    """Return the free heap to the system (after a block, between tasks)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)

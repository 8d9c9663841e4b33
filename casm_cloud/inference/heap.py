"""Let a process reuse the buffers of its forward passes instead of faulting them in anew.

glibc serves a ``malloc`` above its mmap threshold with a fresh mapping,
whose pages the kernel faults in and zeroes one by one, and unmaps it on
``free``.  The threshold normally grows to the largest block freed (up to
32 MiB), but dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_``
set, which fixes it at 128 kB: every activation buffer of every forward is
then a new mapping.  In the SoMo.ml predict stage's worker this setting and
shorter LSTM calls took minor page faults per 1,000 cell-days from 106,500 to
164 (``benchmarks/bench_somo.py`` section 2, run against the code before them;
``docs/architecture.md``, "Known traps").

The windowed EA-LSTM (:mod:`casm_cloud.somo.windowed`) calls
:func:`keep_freed_buffers` once per process on CPU and :func:`trim` after
each block, so a worker holds little between tasks, as dask's setting
intends.  Off glibc (macOS, musl) both do nothing.  CASM's dense kernel does
not: its fp32 activations in batches of 8,192 rows (34 MB) are above the
32 MiB ceiling anyway, and ``benchmarks/bench_predict.py --quick`` found it no
faster end to end with this setting, nor with 2,048-row batches (which cost
bf16 on AMX a third).
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

"""Seasonal-cycle kernels: the closed-form fit of ``a·sin θ + c·cos θ + b``.

All arrays are 2-D ``(time, pixel)`` (C order, time slowest) or per-pixel
``(k, pixel)``; the labelled wrapper flattens every non-time dimension into
``pixel``.  ``θ`` is the phase of each time step within its calendar year
(computed by the wrapper), passed as precomputed ``sin θ`` / ``cos θ``.

A fit is built from nine per-pixel sums over the valid (non-NaN) values::

    0 n    1 Σs   2 Σc   3 Σs²   4 Σsc   5 Σy   6 Σys   7 Σyc   8 Σy²

(``Σc² = n − Σs²`` since sin² + cos² = 1).  Sums add, so partial sums of
time chunks reduce in a tree.  A *packed partial* is one float64 array
``(9 + k, pixel)``: the nine sums, then a buffer of up to ``k`` valid values
per pixel (NaN padded) that keeps the exact values of pixels with at most
``kbuf`` valid values (the ones that may need the median fallback).  Pixels
with more than ``kbuf`` values in a partial keep no buffer: they can never
fall back for lack of data.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

NSUMS = 9
#: Rows of the parameter array returned by :func:`solve`.
PARAMS = ("amplitude", "phase", "offset", "n_obs", "method", "residual_std")
#: Method codes (``method`` row).
EMPTY, SINE, MEDIAN, MEAN = 0, 1, 2, 3
# det(G)/n³ below this is a singular system.  For phases spread over the year
# det/n³ ≈ 0.25; for observations clustered within one day of the year it is
# ~1e-11; it reaches ~1e-16 (round-off) only with <= 2 distinct phases.
_SINGULAR = 1e-13
# Pixels per block: 9 float64 accumulators x 256 = 18 KiB stay in L1 while
# each row segment (1 KiB of float32) streams in from memory.
_BLOCK = 256


# ``contract`` lets LLVM fuse multiply-adds; NaN semantics stay IEEE (the
# NaN test ``v == v`` must survive, so no full fastmath).
_FM = {"contract"}


@njit(cache=True, nogil=True, fastmath=_FM)
def _sums_block(y, s, c, out, p0, p1):
    """Nine sums for pixels ``p0:p1`` of ``y`` into ``out[:9, p0:p1]``.

    The inner loop runs over contiguous pixels (vectorised, branch-free:
    the NaN test is a select) and takes four time rows per pass so each
    accumulator is loaded and stored once per four values.
    """
    nt = y.shape[0]
    nb = p1 - p0
    acc = np.zeros((NSUMS, nb))
    t = 0
    while t + 4 <= nt:
        s0, s1, s2, s3 = s[t], s[t + 1], s[t + 2], s[t + 3]
        c0, c1, c2, c3 = c[t], c[t + 1], c[t + 2], c[t + 3]
        q0, q1, q2, q3 = s0 * s0, s1 * s1, s2 * s2, s3 * s3
        x0, x1, x2, x3 = s0 * c0, s1 * c1, s2 * c2, s3 * c3
        r0 = y[t, p0:p1]
        r1 = y[t + 1, p0:p1]
        r2 = y[t + 2, p0:p1]
        r3 = y[t + 3, p0:p1]
        for j in range(nb):
            v0 = np.float64(r0[j])
            v1 = np.float64(r1[j])
            v2 = np.float64(r2[j])
            v3 = np.float64(r3[j])
            w0 = 1.0 if v0 == v0 else 0.0
            w1 = 1.0 if v1 == v1 else 0.0
            w2 = 1.0 if v2 == v2 else 0.0
            w3 = 1.0 if v3 == v3 else 0.0
            y0 = v0 if v0 == v0 else 0.0
            y1 = v1 if v1 == v1 else 0.0
            y2 = v2 if v2 == v2 else 0.0
            y3 = v3 if v3 == v3 else 0.0
            acc[0, j] += (w0 + w1) + (w2 + w3)
            acc[1, j] += (w0 * s0 + w1 * s1) + (w2 * s2 + w3 * s3)
            acc[2, j] += (w0 * c0 + w1 * c1) + (w2 * c2 + w3 * c3)
            acc[3, j] += (w0 * q0 + w1 * q1) + (w2 * q2 + w3 * q3)
            acc[4, j] += (w0 * x0 + w1 * x1) + (w2 * x2 + w3 * x3)
            acc[5, j] += (y0 + y1) + (y2 + y3)
            acc[6, j] += (y0 * s0 + y1 * s1) + (y2 * s2 + y3 * s3)
            acc[7, j] += (y0 * c0 + y1 * c1) + (y2 * c2 + y3 * c3)
            acc[8, j] += (y0 * y0 + y1 * y1) + (y2 * y2 + y3 * y3)
        t += 4
    while t < nt:
        st = s[t]
        ct = c[t]
        q = st * st
        x = st * ct
        r = y[t, p0:p1]
        for j in range(nb):
            v = np.float64(r[j])
            w = 1.0 if v == v else 0.0
            yv = v if v == v else 0.0
            acc[0, j] += w
            acc[1, j] += w * st
            acc[2, j] += w * ct
            acc[3, j] += w * q
            acc[4, j] += w * x
            acc[5, j] += yv
            acc[6, j] += yv * st
            acc[7, j] += yv * ct
            acc[8, j] += yv * yv
        t += 1
    out[:NSUMS, p0:p1] = acc


@njit(cache=True, nogil=True)
def _buffer_block(y, out, kb, p0, p1):
    """Copy the valid values of pixels with 1..kb values into ``out[9:]``.

    Only pixels whose count (``out[0]``) is between 1 and ``kb`` are scanned,
    row by row, each dropped from the open list once all its values are
    found; dense and empty pixels cost nothing here.
    """
    nt = y.shape[0]
    open_ = np.empty(p1 - p0, np.int64)
    need = np.zeros(p1 - p0, np.int64)
    got = np.zeros(p1 - p0, np.int64)
    nopen = 0
    for p in range(p0, p1):
        n = int(out[0, p])
        if 0 < n <= kb:
            open_[nopen] = p
            need[p - p0] = n
            nopen += 1
    t = 0
    while nopen > 0 and t < nt:
        i = 0
        while i < nopen:
            p = open_[i]
            v = y[t, p]
            if v == v:
                j = p - p0
                out[NSUMS + got[j], p] = v
                got[j] += 1
                if got[j] == need[j]:
                    nopen -= 1
                    open_[i] = open_[nopen]
                    continue
            i += 1
        t += 1


@njit(cache=True, nogil=True)
def partial_sums(y, s, c, kbuf):
    """Packed partial of one ``(time, pixel)`` chunk (serial; run by dask).

    Parameters
    ----------
    y : (nt, npix) float32 or float64, NaN for gaps
    s, c : (nt,) float64, ``sin θ`` and ``cos θ`` of each time step
    kbuf : int, depth of the median buffer (``min_obs - 1``)

    Returns
    -------
    (9 + min(kbuf, nt), npix) float64
    """
    nt, npix = y.shape
    kb = min(kbuf, nt)
    out = np.full((NSUMS + kb, npix), np.nan)
    for p0 in range(0, npix, _BLOCK):
        p1 = min(p0 + _BLOCK, npix)
        _sums_block(y, s, c, out, p0, p1)
        _buffer_block(y, out, kb, p0, p1)
    return out


@njit(cache=True, nogil=True, parallel=True)
def partial_sums_parallel(y, s, c, kbuf):
    """:func:`partial_sums` with pixel blocks spread over numba's threads.

    For one large in-memory array (the benchmark, NumPy users); inside dask
    use the serial kernel, dask already runs one task per thread.
    """
    nt, npix = y.shape
    kb = min(kbuf, nt)
    out = np.full((NSUMS + kb, npix), np.nan)
    nblocks = (npix + _BLOCK - 1) // _BLOCK
    for b in prange(nblocks):
        p0 = b * _BLOCK
        p1 = min(p0 + _BLOCK, npix)
        _sums_block(y, s, c, out, p0, p1)
        _buffer_block(y, out, kb, p0, p1)
    return out


@njit(cache=True, nogil=True)
def merge(left, right, kbuf):
    """Merge two packed partials into a new one (sums add, buffers concatenate).

    A pixel's merged buffer is only kept while its total count is at most
    ``kbuf``; then every partial held all of its values.  The merged buffer
    has as many rows as the largest count it keeps (none once every pixel
    has more than ``kbuf`` values), so partials shrink to the nine sums as
    the reduction goes up the tree (unless some pixel stays sparse).
    """
    npix = left.shape[1]
    kl = left.shape[0] - NSUMS
    kr = right.shape[0] - NSUMS
    kmax = min(kbuf, kl + kr)
    kb = 0
    for p in range(npix):
        n = int(left[0, p]) + int(right[0, p])
        if kb < n <= kmax:
            kb = n
    out = np.full((NSUMS + kb, npix), np.nan)
    for p in range(npix):
        for k in range(NSUMS):
            out[k, p] = left[k, p] + right[k, p]
        nl = int(left[0, p])
        nr = int(right[0, p])
        if 0 < nl + nr <= kb:
            for i in range(nl):
                out[NSUMS + i, p] = left[NSUMS + i, p]
            for i in range(nr):
                out[NSUMS + nl + i, p] = right[NSUMS + i, p]
    return out


@njit(cache=True, nogil=True)
def solve(packed, min_obs):
    """Parameters per pixel from a fully reduced packed partial.

    Parameters
    ----------
    packed : (9 + k, npix) float64
    min_obs : int, fewest valid values for a sine fit

    Returns
    -------
    (6, npix) float64, rows as in :data:`PARAMS`.  Sine fit: amplitude
    ``hypot(a, c)``, phase ``atan2(c, a)``, offset ``b``.  Median / mean
    fallback: amplitude 0, phase 0, offset the median (mean).  Empty: NaN.
    ``residual_std`` is the population standard deviation (ddof 0) of
    ``y − cycle``; for the sine fit from the sums (SSR = Σy² − β·Xᵀy), for
    the median from the buffered values.
    """
    npix = packed.shape[1]
    kb = packed.shape[0] - NSUMS
    out = np.full((6, npix), np.nan)
    vals = np.empty(max(kb, 1))
    for p in range(npix):
        n = packed[0, p]
        out[3, p] = n
        if n == 0:
            out[4, p] = EMPTY
            continue
        ss = packed[1, p]
        sc = packed[2, p]
        sss = packed[3, p]
        ssc = packed[4, p]
        scc = n - sss
        sy = packed[5, p]
        sys_ = packed[6, p]
        syc = packed[7, p]
        syy = packed[8, p]
        # G = [[sss, ssc, ss], [ssc, scc, sc], [ss, sc, n]]: adjugate solve.
        c00 = scc * n - sc * sc
        c01 = ss * sc - ssc * n
        c02 = ssc * sc - scc * ss
        c11 = sss * n - ss * ss
        c12 = ssc * ss - sss * sc
        c22 = sss * scc - ssc * ssc
        det = sss * c00 + ssc * c01 + ss * c02
        if n >= min_obs and det > _SINGULAR * n * n * n:
            a = (c00 * sys_ + c01 * syc + c02 * sy) / det
            c = (c01 * sys_ + c11 * syc + c12 * sy) / det
            b = (c02 * sys_ + c12 * syc + c22 * sy) / det
            ssr = syy - (a * sys_ + c * syc + b * sy)
            out[0, p] = np.hypot(a, c)
            out[1, p] = np.arctan2(c, a)
            out[2, p] = b
            out[4, p] = SINE
            out[5, p] = np.sqrt(max(ssr, 0.0) / n)
        elif n <= kb:
            m = int(n)
            for i in range(m):
                vals[i] = packed[NSUMS + i, p]
            v = np.sort(vals[:m])
            h = m // 2
            med = v[h] if m % 2 == 1 else 0.5 * (v[h - 1] + v[h])
            mean = v.sum() / m
            out[0, p] = 0.0
            out[1, p] = 0.0
            out[2, p] = med
            out[4, p] = MEDIAN
            out[5, p] = np.sqrt(((v - mean) ** 2).sum() / m)
        else:
            mean = sy / n
            out[0, p] = 0.0
            out[1, p] = 0.0
            out[2, p] = mean
            out[4, p] = MEAN
            out[5, p] = np.sqrt(max(syy / n - mean * mean, 0.0))
    return out


@njit(cache=True, nogil=True)
def residuals(y, s, c, params):
    """``y − cycle`` for a ``(time, pixel)`` chunk, in ``y``'s dtype.

    ``params`` is ``(3, npix)`` amplitude, phase, offset; one formula
    ``A·sin(θ + φ) + b = (A cos φ)·sin θ + (A sin φ)·cos θ + b`` serves every
    method (amplitude 0 for the fallbacks, NaN for empty pixels).
    """
    nt, npix = y.shape
    out = np.empty_like(y)
    a = params[0] * np.cos(params[1])
    cc = params[0] * np.sin(params[1])
    b = params[2]
    for t in range(nt):
        st = s[t]
        ct = c[t]
        for p in range(npix):
            out[t, p] = y[t, p] - (a[p] * st + cc[p] * ct + b[p])
    return out


@njit(cache=True, nogil=True)
def cycle(s, c, params):
    """The cycle ``(time, pixel)`` float64 at phases ``s = sin θ``, ``c = cos θ``."""
    nt = s.shape[0]
    npix = params.shape[1]
    out = np.empty((nt, npix))
    a = params[0] * np.cos(params[1])
    cc = params[0] * np.sin(params[1])
    b = params[2]
    for t in range(nt):
        for p in range(npix):
            out[t, p] = a[p] * s[t] + cc[p] * c[t] + b[p]
    return out

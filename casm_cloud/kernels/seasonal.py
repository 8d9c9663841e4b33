"""Seasonal-cycle kernels: the closed-form fit of ``a·sin θ + c·cos θ + b``.

All arrays are 2-D ``(time, pixel)`` (C order, time slowest) or per-pixel
``(k, pixel)``; the labelled wrapper flattens every non-time dimension into
``pixel``.  ``θ`` is the phase of each time step within its calendar year
(computed by the wrapper), passed as precomputed ``sin θ`` / ``cos θ``.

A fit is built from nine per-pixel sums over the valid (non-NaN) values::

    0 n    1 Σs   2 Σc   3 Σs²   4 Σsc   5 Σy   6 Σys   7 Σyc   8 Σy²

(``Σc² = n − Σs²`` since sin² + cos² = 1).  Sums add, so partial sums of
time chunks reduce in a tree.  A *partial* is the tuple ``(sums, idx,
vals)``: the nine sums ``(9, pixel)`` float64, and a sparse buffer with the
exact valid values of the pixels that have 1 to ``kbuf`` of them (the only
ones that may need the median fallback): ``idx`` their pixel indices,
ascending, and ``vals`` ``(len(idx), k)`` their values, NaN padded.  Pixels
with more than ``kbuf`` values keep none: they can never fall back for lack
of data.  A chunk of a dense series thus carries nine numbers per pixel and
an almost empty buffer.

Large outputs (the sums, residuals, cycles) are allocated by the caller with
NumPy and filled in place: NumPy asks the kernel for transparent huge pages,
numba's allocator does not, and first-touching a 70 MB chunk in 4 KiB pages
took twice as long as computing its residuals.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

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
# Rows ahead that :func:`_sums_block` prefetches (see :func:`_prefetch`).
_AHEAD = 16


@intrinsic
def _prefetch(typingctx, arr, i, j):
    """Hint the CPU to load the cache line of ``arr[i, j]`` (``llvm.prefetch``).

    A pixel block reads 1 KiB of each time row, rows a whole row length
    apart: the hardware prefetchers stop at every 4 KiB page, so without a
    hint each row segment starts with a stall and the fit ran at a third of
    the memory read speed.  numba has no prefetch of its own, hence this
    intrinsic; a prefetch never faults and does not change any result.
    """
    sig = types.void(arr, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]],
                                       wraparound=False, boundscheck=False)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read, keep in all cache levels, data cache
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


# ``contract`` lets LLVM fuse multiply-adds; NaN semantics stay IEEE (the
# NaN test ``v == v`` must survive, so no full fastmath).
_FM = {"contract"}


@njit(cache=True, nogil=True, fastmath=_FM)
def _sums_block(y, s, c, out, p0, p1):
    """Nine sums for pixels ``p0:p1`` of ``y`` into ``out[:9, p0:p1]``.

    The inner loop runs over contiguous pixels (vectorised, branch-free:
    the NaN test is a select) and takes four time rows per pass so each
    accumulator is loaded and stored once per four values.  The row
    segments ``_AHEAD`` rows on are prefetched, one hint per cache line.
    """
    nt = y.shape[0]
    nb = p1 - p0
    line = max(1, 64 // y.itemsize)
    acc = np.zeros((NSUMS, nb))
    t = 0
    while t + 4 <= nt:
        if t + _AHEAD + 4 <= nt:
            for ta in range(t + _AHEAD, t + _AHEAD + 4):
                for p in range(p0, p1, line):
                    _prefetch(y, ta, p)
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
def gather(y, sums, kb):
    """Sparse buffer ``(idx, vals)`` of the pixels of ``y`` with 1..kb values.

    ``sums`` are ``y``'s from :func:`partial_sums` (row 0, the counts, picks
    the pixels).  One pass over the rows, touching only the listed pixels; a
    pixel's values are stored in time order.

    Returns
    -------
    idx : (m,) int64, the pixels, ascending
    vals : (m, k) float64, their values, NaN padded (``k`` the largest count)
    """
    nt, npix = y.shape
    m = 0
    k = 0
    for p in range(npix):
        n = sums[0, p]
        if 0 < n <= kb:
            m += 1
            k = max(k, int(n))
    idx = np.empty(m, np.int64)
    i = 0
    for p in range(npix):
        n = sums[0, p]
        if 0 < n <= kb:
            idx[i] = p
            i += 1
    vals = np.full((m, k), np.nan)
    if m == 0:
        return idx, vals
    got = np.zeros(m, np.int64)
    for t in range(nt):
        for i in range(m):
            v = y[t, idx[i]]
            if v == v:
                vals[i, got[i]] = v
                got[i] += 1
    return idx, vals


@njit(cache=True, nogil=True)
def partial_sums(y, s, c, out):
    """The nine sums of one ``(time, pixel)`` chunk into ``out`` (serial; run by dask).

    Parameters
    ----------
    y : (nt, npix) float32 or float64, NaN for gaps
    s, c : (nt,) float64, ``sin θ`` and ``cos θ`` of each time step
    out : (9, npix) float64, overwritten
    """
    npix = y.shape[1]
    for p0 in range(0, npix, _BLOCK):
        _sums_block(y, s, c, out, p0, min(p0 + _BLOCK, npix))


@njit(cache=True, nogil=True, parallel=True)
def partial_sums_parallel(y, s, c, out):
    """:func:`partial_sums` with pixel blocks spread over numba's threads.

    For one large in-memory array (the benchmark, NumPy users); inside dask
    use the serial kernel, dask already runs one task per thread.
    """
    npix = y.shape[1]
    nblocks = (npix + _BLOCK - 1) // _BLOCK
    for b in prange(nblocks):
        p0 = b * _BLOCK
        _sums_block(y, s, c, out, p0, min(p0 + _BLOCK, npix))


@njit(cache=True, nogil=True)
def merge(n_l, idx_l, vals_l, n_r, idx_r, vals_r, kbuf):
    """Merge the buffers of two partials with per-pixel counts ``n_l``, ``n_r``.

    The sums of the merged partial are the sums of the two (added by the
    caller); this concatenates the buffers.  A pixel keeps its buffer while
    its total count is at most ``kbuf``;
    then each side held all of its values (a pixel missing from one side's
    buffer has no values there, or more than ``kbuf``).  The merged buffer
    is as wide as the largest count it keeps, so partials shrink to the
    nine sums as the reduction goes up the tree (unless some pixel stays
    sparse).
    """
    ml, mr = idx_l.size, idx_r.size
    # Pass 1: size of the union of kept pixels; pass 2: fill.
    m = 0
    k = 0
    i = j = 0
    while i < ml or j < mr:
        if j == mr or (i < ml and idx_l[i] < idx_r[j]):
            p = idx_l[i]
            i += 1
        elif i == ml or idx_r[j] < idx_l[i]:
            p = idx_r[j]
            j += 1
        else:
            p = idx_l[i]
            i += 1
            j += 1
        n = n_l[p] + n_r[p]
        if n <= kbuf:
            m += 1
            k = max(k, int(n))
    idx = np.empty(m, np.int64)
    vals = np.full((m, k), np.nan)
    o = 0
    i = j = 0
    while i < ml or j < mr:
        il = ir_ = -1
        if j == mr or (i < ml and idx_l[i] < idx_r[j]):
            il = i
            i += 1
        elif i == ml or idx_r[j] < idx_l[i]:
            ir_ = j
            j += 1
        else:
            il = i
            ir_ = j
            i += 1
            j += 1
        p = idx_l[il] if il >= 0 else idx_r[ir_]
        if n_l[p] + n_r[p] > kbuf:
            continue
        idx[o] = p
        q = 0
        if il >= 0:
            for v in range(int(n_l[p])):
                vals[o, q] = vals_l[il, v]
                q += 1
        if ir_ >= 0:
            for v in range(int(n_r[p])):
                vals[o, q] = vals_r[ir_, v]
                q += 1
        o += 1
    return idx, vals


@njit(cache=True, nogil=True)
def solve(sums, idx, vals, min_obs, out):
    """Parameters per pixel from a fully reduced partial, into ``out``.

    Parameters
    ----------
    sums, idx, vals : the partial (see the module docstring)
    min_obs : int, fewest valid values for a sine fit
    out : (6, npix) float64, overwritten; rows as in :data:`PARAMS`.  Sine fit: amplitude
    ``hypot(a, c)``, phase ``atan2(c, a)``, offset ``b``.  Median / mean
    fallback: amplitude 0, phase 0, offset the median (mean).  Empty: NaN.
    ``residual_std`` is the population standard deviation (ddof 0) of
    ``y − cycle``; for the sine fit from the sums (SSR = Σy² − β·Xᵀy), for
    the median from the buffered values.
    """
    pos = _positions(idx, sums.shape[1])
    for p in range(sums.shape[1]):
        _solve_pixel(sums, vals, pos[p], p, min_obs, out)


@njit(cache=True, nogil=True, parallel=True)
def solve_parallel(sums, idx, vals, min_obs, out):
    """:func:`solve` with pixels spread over numba's threads (in-memory arrays)."""
    pos = _positions(idx, sums.shape[1])
    for p in prange(sums.shape[1]):
        _solve_pixel(sums, vals, pos[p], p, min_obs, out)


@njit(cache=True, nogil=True)
def _positions(idx, npix):
    """Buffer row of each pixel, -1 for pixels without one."""
    pos = np.full(npix, -1, np.int64)
    for i in range(idx.size):
        pos[idx[i]] = i
    return pos


@njit(cache=True, nogil=True)
def _solve_pixel(sums, vals, row, p, min_obs, out):
    """Parameters of pixel ``p`` into ``out[:, p]``; ``row`` its buffer row or -1."""
    n = sums[0, p]
    out[3, p] = n
    if n == 0:
        out[0, p] = out[1, p] = out[2, p] = out[5, p] = np.nan
        out[4, p] = EMPTY
        return
    ss = sums[1, p]
    sc = sums[2, p]
    sss = sums[3, p]
    ssc = sums[4, p]
    scc = n - sss
    sy = sums[5, p]
    sys_ = sums[6, p]
    syc = sums[7, p]
    syy = sums[8, p]
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
    elif row >= 0:
        m = int(n)
        v = np.sort(vals[row, :m])
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


@njit(cache=True, nogil=True)
def residuals(y, s, c, amplitude, phase, offset, out):
    """``y − cycle`` for a ``(time, pixel)`` chunk into ``out`` (``y``'s shape and dtype).

    ``amplitude``, ``phase``, ``offset`` are ``(npix,)``; one formula
    ``A·sin(θ + φ) + b = (A cos φ)·sin θ + (A sin φ)·cos θ + b`` serves every
    method (amplitude 0 for the fallbacks, NaN for empty pixels).
    """
    nt, npix = y.shape
    a = amplitude * np.cos(phase)
    cc = amplitude * np.sin(phase)
    for t in range(nt):
        st = s[t]
        ct = c[t]
        for p in range(npix):
            out[t, p] = y[t, p] - (a[p] * st + cc[p] * ct + offset[p])


@njit(cache=True, nogil=True)
def cycle(s, c, amplitude, phase, offset, out):
    """The cycle at phases ``s = sin θ``, ``c = cos θ`` into ``out`` ``(time, pixel)`` float64."""
    nt = s.shape[0]
    npix = amplitude.shape[0]
    a = amplitude * np.cos(phase)
    cc = amplitude * np.sin(phase)
    for t in range(nt):
        for p in range(npix):
            out[t, p] = a[p] * s[t] + cc[p] * c[t] + offset[p]

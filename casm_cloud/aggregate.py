"""Anchored n-day means and daily means, lazy and streaming by time chunk.

Bins are **anchored** (docs/science.md, "Data model"): bin ``k`` covers
``[anchor + n·k, anchor + n·(k+1))`` and is labelled by its start, so every
sensor, every run and every monthly update lands in the same bins whatever
the first date of its data.  A bin's mean is NaN unless it holds at least
``min_count`` valid values at that pixel.

How it streams: the time axis is sorted, so a bin is a contiguous run of
time steps.  The input's time chunks are first moved to the nearest bin
edge (a cheap rechunk: each new chunk draws on at most two old ones); then
every chunk holds whole bins and is reduced on its own with one
``numpy.add.reduceat`` (a blockwise reduction, what flox calls
``method="blockwise"``).  The output has one chunk per input chunk and never
needs the whole series in memory.  We do not use ``Dataset.resample`` here:
without flox (not in this stack) xarray reduces each bin as a separate slice
(one task per bin and chunk), and its ``mean`` has no ``min_count``.

Public API::

    nday_mean(ds, n=3, anchor="2002-01-01", min_count=1)
    daily_mean(ds, min_count=6)
    bin_start(times, n=3, anchor="2002-01-01")
    source_means(cat, "smos", window=w, start=..., end=..., variables=[...], n_days=3, ...)
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["DEFAULT_ANCHOR", "nday_mean", "daily_mean", "bin_index", "bin_start",
           "screen_frozen", "source_means"]

#: Anchor of the n-day bins of every CASM product (docs/science.md, "Data model").
DEFAULT_ANCHOR = "2002-01-01"

_DAY_NS = np.int64(86_400 * 10**9)


def _anchor_ns(anchor) -> np.int64:
    try:
        ts = pd.Timestamp(anchor)
    except (TypeError, ValueError) as err:
        raise ValueError(f"anchor={anchor!r} is not a date: {err}") from None
    if ts.tzinfo is not None:
        raise ValueError(f"anchor={anchor!r}: expected a naive (UTC) date")
    return np.int64(ts.as_unit("ns").value)


def bin_index(times, n: int = 3, anchor=DEFAULT_ANCHOR) -> np.ndarray:
    """Index ``k`` of the anchored n-day bin holding each time.

    ``k = floor((t - anchor) / n days)``; negative before the anchor.

    Parameters
    ----------
    times : array_like of datetime64
    n : int
        Bin length in days (>= 1).
    anchor : date-like
        Start of bin 0.

    Returns
    -------
    numpy.ndarray of int64

    Raises
    ------
    ValueError
        For ``n < 1``, an anchor that is not a date, or times that are not
        datetimes.
    """
    if not (isinstance(n, int | np.integer) and n >= 1):
        raise ValueError(f"n={n!r}: expected a whole number of days >= 1")
    t = np.asarray(times)
    if not np.issubdtype(t.dtype, np.datetime64):
        raise ValueError(f"times have dtype {t.dtype}; expected datetime64")
    t_ns = t.astype("datetime64[ns]").astype(np.int64)
    return np.floor_divide(t_ns - _anchor_ns(anchor), np.int64(n) * _DAY_NS)


def bin_start(times, n: int = 3, anchor=DEFAULT_ANCHOR) -> np.ndarray:
    """Start (the label) of the anchored n-day bin of each time, datetime64[ns]."""
    k = bin_index(times, n, anchor)
    return (_anchor_ns(anchor) + k * np.int64(n) * _DAY_NS).astype("datetime64[ns]")


def _aligned_chunks(bins: np.ndarray, chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Time chunks with every edge moved back to the first step of its bin."""
    edges = np.cumsum((0, *chunks))[1:-1]
    snapped = np.searchsorted(bins, bins[edges], side="left")
    cuts = np.unique(np.concatenate(([0], snapped, [bins.size])))
    return tuple(int(c) for c in np.diff(cuts))


def _block_plan(bins: np.ndarray, chunks: tuple[int, ...]) -> list[tuple[np.ndarray, int]]:
    """Per time chunk: (output bin of each step, relative to the chunk's first bin; n bins).

    Output chunk ``i`` covers bins ``[first_i, first_{i+1})``, so bins that no
    time step falls in (gaps in the record) still get a (NaN) slot and the
    output axis is regular.
    """
    starts = np.cumsum((0, *chunks))
    firsts = [int(bins[s]) for s in starts[:-1]] + [int(bins[-1]) + 1]
    return [(bins[starts[i]:starts[i + 1]] - firsts[i], firsts[i + 1] - firsts[i])
            for i in range(len(chunks))]


def _bin_mean_block(block: np.ndarray, rel_bins: np.ndarray, nbins: int, min_count: int,
                    axis: int) -> np.ndarray:
    """Mean over runs of equal ``rel_bins`` along ``axis`` (NumPy in, NumPy out).

    Sums in float64 with NaN as missing; bins with fewer than ``min_count``
    valid values, and bins no step falls in, are NaN.
    """
    valid = ~np.isnan(block)
    values = np.where(valid, block, 0)
    # Start of each run of equal bins (rel_bins is sorted within a block).
    run_starts = np.flatnonzero(np.r_[True, np.diff(rel_bins) != 0])
    sums = np.add.reduceat(values, run_starts, axis=axis, dtype=np.float64)
    counts = np.add.reduceat(valid, run_starts, axis=axis, dtype=np.int32)
    out_shape = list(block.shape)
    out_shape[axis] = nbins
    out = np.full(out_shape, np.nan, dtype=block.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts >= min_count, sums / np.maximum(counts, 1), np.nan)
    index = [slice(None)] * block.ndim
    index[axis] = rel_bins[run_starts]
    out[tuple(index)] = means.astype(block.dtype)
    return out


def _reduce_variable(var: xr.DataArray, bins: np.ndarray, time_chunks: tuple[int, ...],
                     plan: list[tuple[np.ndarray, int]], min_count: int) -> xr.DataArray:
    axis = var.dims.index("time")
    data = var.data
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks={axis: time_chunks})
    data = data.rechunk({axis: time_chunks})
    out_chunks = list(data.chunks)
    out_chunks[axis] = tuple(nb for _, nb in plan)

    def block_mean(block, block_info=None):
        rel, nbins = plan[block_info[0]["chunk-location"][axis]]
        return _bin_mean_block(block, rel, nbins, min_count, axis)

    out = data.map_blocks(block_mean, chunks=tuple(out_chunks), dtype=data.dtype,
                          meta=np.empty((0,) * data.ndim, dtype=data.dtype),
                          token="nday-mean")
    return xr.DataArray(out, dims=var.dims, attrs=var.attrs)


def nday_mean(ds: xr.Dataset, n: int = 3, *, anchor=DEFAULT_ANCHOR,
              min_count: int = 1) -> xr.Dataset:
    """Means over anchored n-day bins, lazily (nothing is computed here).

    Bin ``k`` covers ``[anchor + n·k, anchor + n·(k+1))`` and is labelled by
    its start.  The output time axis runs from the bin of the first time to
    the bin of the last time, every bin present (bins with no data are NaN);
    partial first and last bins are kept and depend only on the data in them.

    Parameters
    ----------
    ds : xarray.Dataset
        With a sorted ``time`` coordinate (datetime64).  Floating-point
        variables with a ``time`` dimension are averaged (NaN = missing);
        variables without ``time`` are kept as they are.  Dask-backed
        variables are reduced chunk by chunk; NumPy-backed ones are wrapped
        in dask first.
    n : int
        Bin length in days (3 for CASM).
    anchor : date-like
        Start of bin 0 (default 2002-01-01).
    min_count : int
        Fewest valid values a bin needs at a pixel; fewer give NaN.

    Returns
    -------
    xarray.Dataset
        Same variables and attributes; ``time`` holds the bin starts, with
        attributes ``casm_nday``, ``casm_anchor`` and ``casm_min_count``.

    Raises
    ------
    ValueError
        If ``time`` is missing, not datetime64 or not strictly increasing; if
        a variable with ``time`` is not floating point (name given); for
        ``n < 1`` or ``min_count < 1``.
    """
    if "time" not in ds.dims or "time" not in ds.coords:
        raise ValueError(f"nday_mean: dataset has no 'time' coordinate (dims {dict(ds.sizes)})")
    if not (isinstance(min_count, int | np.integer) and min_count >= 1):
        raise ValueError(f"min_count={min_count!r}: expected a whole number >= 1")
    times = ds["time"].values
    bins = bin_index(times, n, anchor)
    if times.size > 1 and np.any(np.diff(times.astype("datetime64[ns]").astype(np.int64)) <= 0):
        raise ValueError("nday_mean: coordinate 'time' must be strictly increasing; sort it first")
    timed = [name for name in ds.data_vars if "time" in ds[name].dims]
    for name in timed:
        if not np.issubdtype(ds[name].dtype, np.floating):
            raise ValueError(
                f"nday_mean: variable {name!r} has dtype {ds[name].dtype}; only floating-point "
                "variables can be averaged (drop it or cast it first)"
            )
    if times.size == 0:
        raise ValueError("nday_mean: coordinate 'time' is empty")

    # Time chunking of the first dask variable, else one chunk.
    chunks = next((ds[v].chunksizes["time"] for v in timed if ds[v].chunks is not None),
                  (times.size,))
    time_chunks = _aligned_chunks(bins, tuple(chunks))
    plan = _block_plan(bins, time_chunks)
    first, last = int(bins[0]), int(bins[-1])
    label = _anchor_ns(anchor) + np.arange(first, last + 1, dtype=np.int64) * np.int64(n) * _DAY_NS

    out = ds.drop_vars(timed).drop_dims("time", errors="ignore").copy()
    time_attrs = {**ds["time"].attrs, "long_name": f"start of the {n}-day bin",
                  "casm_nday": int(n), "casm_anchor": str(pd.Timestamp(anchor).date()),
                  "casm_min_count": int(min_count)}
    out = out.assign_coords(time=("time", label.astype("datetime64[ns]"), time_attrs))
    for name in timed:
        out[name] = _reduce_variable(ds[name], bins, time_chunks, plan, int(min_count))
    # Non-index coordinates along time (e.g. a per-step label) have no bin meaning.
    return out[list(ds.data_vars)]


def daily_mean(ds: xr.Dataset, min_count: int = 6) -> xr.Dataset:
    """Daily means (UTC calendar days) of sub-daily data, lazily.

    SoMo.ml keeps a day only when it has at least 6 valid values (e.g. of
    24 hourly ERA5 steps).

    Parameters
    ----------
    ds : xarray.Dataset
        Sub-daily data with a sorted ``time`` coordinate.
    min_count : int
        Fewest valid values per day and pixel (default 6).

    Returns
    -------
    xarray.Dataset
        ``time`` at midnight of each day.

    Raises
    ------
    ValueError
        As :func:`nday_mean`.
    """
    return nday_mean(ds, 1, anchor=DEFAULT_ANCHOR, min_count=min_count)


def screen_frozen(ds: xr.Dataset, skt: xr.DataArray, threshold_k: float) -> xr.Dataset:
    """``ds`` without its days of frozen soil: daily-mean skin temperature below ``threshold_k``.

    Over frozen soil TB stops following soil moisture and SMAP retrieves
    none, so those days leave the satellite means.  Days ``skt`` does not
    cover (ERA5's latency is days) are kept.

    Parameters
    ----------
    ds : xarray.Dataset
        Sub-daily or daily data on the same window as ``skt``.
    skt : xarray.DataArray
        Daily-mean skin temperature (K) with a daily ``time``.
    threshold_k : float
    """
    days = ds["time"].dt.floor("D").values
    skt = skt.reindex(time=days).assign_coords(time=ds["time"].values)
    return ds.where(~(skt < threshold_k))  # NaN skt: not frozen


def source_means(cat, entry: str, *, window, start, end, variables: list[str], n_days: int,
                 anchor=DEFAULT_ANCHOR, min_count: int = 1, chunks: dict | None = None,
                 era5: str | None = None, frozen_skt_k: float | None = None
                 ) -> xr.Dataset | None:
    """Lazy n-day means of one catalog source on ``window``, complete bins only.

    The source is opened with the window, the period and the variables pushed
    down (the adapter reads only what is asked), put on the window, screened
    for frozen soil where ``era5`` names the catalog entry of its skin
    temperature (:func:`screen_frozen` with ``frozen_skt_k``), and averaged
    into anchored ``n_days`` bins (:func:`nday_mean`).  A partial last bin
    (one ending after ``end``) is left out: it comes with the next update, so
    stored bins never change.

    Returns
    -------
    xarray.Dataset or None
        Chunked as ``chunks``, with the window's identity attributes; None
        where the source has no data in the period or no complete bin.
    """
    from casm_cloud.catalog import SourceError, open_source
    from casm_cloud.regrid import on_window

    try:
        ds = open_source(cat, entry, window=window, period=(start, end), variables=variables)
    except SourceError as err:
        if "no data in the period" not in str(err) and "no time step" not in str(err):
            raise
        return None  # a source without data in these months (an update past its end)
    ds = on_window(ds, window, name=f"catalog entry {entry!r}")
    ds = ds.sel(time=slice(str(start), str(end)))
    if ds.sizes["time"] == 0:
        return None
    if era5:
        skt = open_source(cat, era5, window=window, period=(start, end), variables=["skt"])
        ds = screen_frozen(ds, skt["skt"], frozen_skt_k)
    out = nday_mean(ds, n_days, anchor=str(anchor), min_count=min_count)
    out = out.sel(time=slice(None, np.datetime64(end) + np.timedelta64(1 - n_days, "D")))
    if out.sizes["time"] == 0:
        return None
    out = out.chunk(dict(chunks or {}))
    out.attrs.update(window.identity())
    return out

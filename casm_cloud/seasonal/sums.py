"""Stored partial sums of the seasonal fit: fit while another pass holds the data.

The fit (:mod:`casm_cloud.seasonal.fit`) is closed form over nine per-pixel
sums plus, for pixels with few values, the values themselves (the median
fallback).  Both reduce over time chunks, so any pass that already holds the
chunks of a series in memory can reduce them on the side: the CASM
``aggregate`` stage does, while it writes the n-day means
(:func:`lazy_sums` computed with the region writes in one ``dask.compute``:
each chunk of means is made once and feeds both its write and its partial).
The reduced partial is stored (:func:`write_sums`, a small Zarr store) and
the ``seasonal`` stage finishes the fit from it (:func:`params_from_sums`)
without reading the aggregates again.

The stored partial keeps the values of every pixel with at most
:data:`SUMS_KBUF` of them, so it serves any ``min_obs <= SUMS_KBUF + 1``:
finishing keeps the buffer rows of pixels with at most ``min_obs - 1``
values, which is exactly the buffer the fit itself reduces to, and gives the
parameters :func:`~casm_cloud.seasonal.seasonal_params` gives on the same
series and time chunks (bit for bit: same kernels, same tree).
:func:`sums_usable` says when a stored partial does not serve a request
(another ``min_obs``, other variables, a series that grew since: the monthly
update appends aggregates but keeps the parameters); callers then fit from
the data.

Public API::

    lazy = lazy_sums(ds, ["tb_h", "tb_v"])          # dask Delayed of the sums dataset
    _, sums = dask.compute(writes, lazy)             # with the pass that writes ds
    write_sums(sums, url)
    sums = merge_sums(open_sums(u) for u in piece_urls)   # a stage in pieces, in time order
    params = params_from_sums(open_sums(url), ["tb_h", "tb_v"], min_obs=40)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import xarray as xr

from casm_cloud.kernels import seasonal as _k
from casm_cloud.seasonal.fit import (
    _SPLIT_EVERY,
    SeasonalError,
    _aggregate,
    _check,
    _check_min_obs,
    _combine,
    _params_dataset,
    _reduce_partials,
    _sincos,
)
from casm_cloud.seasonal.stage import _select

__all__ = ["SUMS_KBUF", "lazy_sums", "write_sums", "open_sums", "merge_sums",
           "params_from_sums", "sums_usable"]

#: Values kept per pixel with few of them: the default ``seasonal.min_obs`` (40) minus one.
#: A larger ``min_obs`` is fitted from the data (:func:`sums_usable` says so).
SUMS_KBUF = 39
_ATTR = "seasonal_sums_"


def _stacked(ds: xr.Dataset, variables: Sequence[str] | None, dim: str) -> tuple:
    names = _select(ds, variables)
    da = ds[names].to_dataarray("variable")
    t = _check(da, dim)
    return names, da.transpose(dim, ...), t


class _StoreSink:
    """Writes a chunk of the stacked (time, variable, ...) array into its variable's array
    of a store :func:`casm_cloud.storage.write_template` made (picklable, for workers);
    ``offset`` (dim → index) places the array in the store."""

    def __init__(self, url: str, storage_options: Mapping | None, names: list[str],
                 stacked_dims: tuple, var_dims: dict[str, tuple],
                 offset: Mapping[str, int] | None = None):
        self.url, self.so = url, dict(storage_options or {})
        self.names, self.stacked_dims, self.var_dims = names, stacked_dims, var_dims
        self.offset = dict(offset or {})

    def __call__(self, block: np.ndarray, location: tuple) -> None:
        from casm_cloud import storage

        vpos = self.stacked_dims.index("variable")
        v0, v1 = location[vpos]
        group = storage.zarr_group(self.url, self.so)
        others = [d for d in self.stacked_dims if d != "variable"]
        for v in range(v0, v1):
            name = self.names[v]
            part = np.take(block, v - v0, axis=vpos)
            order = [others.index(d) for d in self.var_dims[name]]
            region = tuple(slice(*(i + self.offset.get(d, 0)
                                   for i in location[self.stacked_dims.index(d)]))
                           for d in self.var_dims[name])
            group[name][region] = np.transpose(part, order)


def lazy_sums(ds: xr.Dataset, variables: Sequence[str] | None = None, *, dim: str = "time",
              kbuf: int = SUMS_KBUF, write_to: str | None = None,
              storage_options: Mapping | None = None,
              region: Mapping[str, slice] | None = None):
    """The reduced partial of the fit of every (selected) variable, as a dask ``Delayed``.

    Nothing is computed here.  Compute it together with the pass that writes
    ``ds`` (``dask.compute(writes, lazy_sums(ds))``) and every chunk of
    ``ds`` is made once and feeds both.

    Parameters
    ----------
    ds : xarray.Dataset
        As for :func:`~casm_cloud.seasonal.seasonal_params`; NumPy-backed
        variables are wrapped in one dask chunk.
    variables : sequence of str, optional
        Default: every variable with ``dim``.
    dim : str
        The time dimension.
    kbuf : int
        Values kept per sparse pixel (serves ``min_obs <= kbuf + 1``).
    write_to : str, optional
        A store :func:`casm_cloud.storage.write_template` made from ``ds``
        (one Zarr chunk per dask chunk): the task that computes a chunk's
        partial also writes the chunk there, so the data are made once for
        both, whatever the graph optimisations do.  Variables without
        ``dim`` are not written (the template holds them).
    storage_options : mapping, optional
        fsspec options of ``write_to``.
    region : mapping of str to slice, optional
        Where ``ds`` lies in ``write_to`` (as for
        :func:`casm_cloud.storage.region_writes`; default: from index 0 of
        every dimension), so a stage in pieces writes each piece in place.

    Returns
    -------
    dask.delayed.Delayed
        Computes to the sums dataset: ``sums`` (``seasonal_sum``, variable,
        *space) float64, ``sparse_index`` (flat index over (variable,
        *space)) and ``sparse_values`` (NaN padded), the non-time
        coordinates of ``ds``, and attributes recording ``kbuf``, the dtype,
        the variables and the time axis covered.

    Raises
    ------
    SeasonalError
        As :func:`~casm_cloud.seasonal.fit_seasonal_cycle`.
    """
    from functools import partial as bind

    import dask

    names, da, t = _stacked(ds, variables, dim)
    if da.chunks is None:
        da = da.chunk()
    dtype = da.dtype if da.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    s, c = _sincos(t)
    sink = None
    if write_to is not None:
        sink = _StoreSink(write_to, storage_options, list(names), da.dims,
                          {n: ds[n].dims for n in names},
                          {d: int(r.start or 0) for d, r in (region or {}).items()})
    red = _reduce_partials(da.data, s, c, int(kbuf), bind(_combine, kbuf=int(kbuf)),
                           _k.NSUMS, "seasonal-sums", sink=sink)
    blocks = list(red.to_delayed(optimize_graph=False).ravel())
    rest = da.dims[1:]
    coords = {k: v.variable.compute() for k, v in da.coords.items() if dim not in v.dims}
    attrs = {f"{_ATTR}kbuf": int(kbuf), f"{_ATTR}dtype": str(dtype),
             f"{_ATTR}variables": list(names), f"{_ATTR}time_size": int(t.size),
             f"{_ATTR}time_first": str(t[0]) if t.size else "",
             f"{_ATTR}time_last": str(t[-1]) if t.size else ""}
    if da.attrs.get("units"):
        attrs[f"{_ATTR}units"] = str(da.attrs["units"])
    return dask.delayed(_assemble, pure=True)(blocks, da.data.chunks[1:], rest, coords, attrs)


def _assemble(blocks: list, chunks: tuple, rest: tuple, coords: dict, attrs: dict) -> xr.Dataset:
    """One partial over the whole space from the merged partial of each spatial block."""
    shape = tuple(int(sum(ch)) for ch in chunks)
    starts = [np.cumsum((0, *ch[:-1])) for ch in chunks]
    sums = np.empty((_k.NSUMS, *shape))
    idxs, valss = [], []
    for bi, (s_b, i_b, v_b) in zip(np.ndindex(*(len(ch) for ch in chunks)), blocks, strict=True):
        off = [int(starts[d][bi[d]]) for d in range(len(shape))]
        sums[(slice(None), *(slice(o, o + n) for o, n in zip(off, s_b.shape[1:], strict=True)))] = s_b
        if i_b.size:
            local = np.unravel_index(i_b, s_b.shape[1:])
            idxs.append(np.ravel_multi_index(tuple(li + o for li, o in zip(local, off, strict=True)), shape))
            valss.append(v_b)
    k = max((v.shape[1] for v in valss), default=0)
    idx = np.concatenate(idxs).astype(np.int64) if idxs else np.empty(0, np.int64)
    vals = np.full((idx.size, k), np.nan)
    row = 0
    for v in valss:
        vals[row:row + v.shape[0], :v.shape[1]] = v
        row += v.shape[0]
    order = np.argsort(idx, kind="stable")
    return xr.Dataset(
        {"sums": (("seasonal_sum", *rest), sums),
         "sparse_index": (("sparse",), idx[order]),
         "sparse_values": (("sparse", "sparse_k"), vals[order])},
        coords=coords, attrs=attrs)


def write_sums(sums: xr.Dataset, url: str, storage_options: Mapping | None = None, *,
               config_hash: str | None = None) -> None:
    """Write a computed sums dataset as a finished Zarr store (:mod:`casm_cloud.storage`)."""
    from casm_cloud import storage

    out = sums
    if "variable" in out.coords and out["variable"].dtype.kind == "U":
        out = out.assign_coords(variable=out["variable"].astype(object))
    if out.sizes.get("sparse", 0) == 0 or out.sizes.get("sparse_k", 0) == 0:
        # Zarr has no empty chunks: one NaN row that no pixel points to (index -1).
        out = out.drop_vars(["sparse_index", "sparse_values"]).assign(
            sparse_index=(("sparse",), np.array([-1], np.int64)),
            sparse_values=(("sparse", "sparse_k"), np.full((1, 1), np.nan)))
    storage.write_dataset(out, url, storage_options, config_hash=config_hash)


def open_sums(url: str, storage_options: Mapping | None = None) -> xr.Dataset | None:
    """A finished sums store, loaded (it is small); None if there is none."""
    from casm_cloud import storage

    if not storage.store_state(url, storage_options)["complete"]:
        return None
    return storage.open_zarr(url, storage_options, require_complete=True).load()


def _parts(sums: xr.Dataset) -> tuple:
    """``(sums, idx, vals)`` of a sums dataset, as the fit's reduction passes partials."""
    idx = np.asarray(sums["sparse_index"].values, np.int64)
    ok = idx >= 0  # write_sums' placeholder row of an empty buffer
    return (np.asarray(sums["sums"].values, np.float64), np.ascontiguousarray(idx[ok]),
            np.ascontiguousarray(np.asarray(sums["sparse_values"].values, np.float64)[ok]))


def merge_sums(pieces: Iterable[xr.Dataset]) -> xr.Dataset:
    """The sums of a series from the sums of its consecutive pieces, given in time order.

    Sums add and the sparse buffers merge as in the fit's tree reduction (its
    combine, :func:`casm_cloud.seasonal.fit._combine`), over the tree that
    reduction builds on the pieces: groups of ``_SPLIT_EVERY`` consecutive
    ones, level by level.  When every piece but the last covers
    ``_SPLIT_EVERY**k`` time chunks of the series (and was summed with those
    chunks) that tree continues the one within the pieces, so the merged sums
    are those of the whole series in one pass, bit for bit (docs/architecture.md,
    "Stages in pieces").  Pieces are read one at a time; at most
    ``_SPLIT_EVERY - 1`` partials per level of the tree are held.

    Raises
    ------
    SeasonalError
        For no pieces, or pieces of other variables, ``kbuf`` or dtype.
    """
    kbuf, first, last, n_time = None, None, None, 0
    stack: list[tuple[int, tuple]] = []  # (pieces covered, partial), largest first
    for sums in pieces:
        a = sums.attrs
        if first is None:
            first, kbuf = sums, int(a[f"{_ATTR}kbuf"])
        for key in ("kbuf", "dtype", "variables"):
            if a[f"{_ATTR}{key}"] != first.attrs[f"{_ATTR}{key}"]:
                raise SeasonalError(f"merge_sums: a piece has {key} {a[f'{_ATTR}{key}']!r}; "
                                    f"the first has {first.attrs[f'{_ATTR}{key}']!r}")
        last, n_time = sums, n_time + int(a[f"{_ATTR}time_size"])
        node = (1, _parts(sums))
        while len(stack) >= _SPLIT_EVERY - 1 and all(
                n == node[0] for n, _ in stack[len(stack) - _SPLIT_EVERY + 1:]):
            group = [stack.pop()[1] for _ in range(_SPLIT_EVERY - 1)][::-1]
            node = (node[0] * _SPLIT_EVERY, _combine([*group, node[1]], kbuf=kbuf))
        stack.append(node)
    if first is None:
        raise SeasonalError("merge_sums: no pieces")
    # The partial last block of each level: its full siblings, then the rest, combined.
    _, acc = stack.pop()
    while stack:
        size, group = stack[-1][0], []
        while stack and stack[-1][0] == size:
            group.insert(0, stack.pop()[1])
        acc = _combine([*group, acc], kbuf=kbuf)
    S, idx, vals = acc
    out = xr.Dataset(
        {"sums": (first["sums"].dims, S), "sparse_index": (("sparse",), idx),
         "sparse_values": (("sparse", "sparse_k"), vals)},
        coords={k: v for k, v in first.coords.items()
                if not ({"sparse", "sparse_k"} & set(v.dims))},
        attrs={k: v for k, v in first.attrs.items() if k.startswith(_ATTR)})  # not the store's
    out.attrs.update({f"{_ATTR}time_size": n_time,
                      f"{_ATTR}time_last": last.attrs[f"{_ATTR}time_last"]})
    return out


def _stored_names(sums: xr.Dataset) -> list[str]:
    return [str(v) for v in sums.attrs[f"{_ATTR}variables"]]


def sums_usable(sums: xr.Dataset | None, ds: xr.Dataset, variables: Sequence[str] | None = None,
                *, min_obs: int = 40, dim: str = "time") -> str | None:
    """Why stored sums do not serve a fit of ``ds`` (None when they do).

    They serve it when they keep enough values (``min_obs - 1 <= kbuf``),
    hold every requested variable, and cover exactly ``ds``'s time axis and
    dtype (stored sums are not grown by updates).  Only metadata of ``ds`` is read.
    """
    if sums is None:
        return "no stored sums"
    a = sums.attrs
    names = _select(ds, variables)
    if min_obs - 1 > int(a[f"{_ATTR}kbuf"]):
        return (f"they keep the values of pixels with up to {a[f'{_ATTR}kbuf']} values; "
                f"min_obs={min_obs} needs {min_obs - 1}")
    missing = sorted(set(names) - set(_stored_names(sums)))
    if missing:
        return f"they have no sums of {missing}"
    t = np.asarray(ds[dim].values)
    if (int(a[f"{_ATTR}time_size"]) != t.size or (t.size and (
            np.datetime64(a[f"{_ATTR}time_first"]) != t[0]
            or np.datetime64(a[f"{_ATTR}time_last"]) != t[-1]))):
        return (f"they cover {a[f'{_ATTR}time_size']} steps {a[f'{_ATTR}time_first']}.."
                f"{a[f'{_ATTR}time_last']}; the data has {t.size} steps"
                + (f" {t[0]}..{t[-1]}" if t.size else ""))
    dtype = np.result_type(*(ds[n].dtype for n in names))
    dtype = dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)
    if str(dtype) != a[f"{_ATTR}dtype"]:
        return f"they were summed from {a[f'{_ATTR}dtype']} values; the data is {dtype}"
    return None


def params_from_sums(sums: xr.Dataset, variables: Sequence[str] | None = None, *,
                     min_obs: int = 40, dim: str = "time") -> xr.Dataset:
    """The parameters :func:`~casm_cloud.seasonal.seasonal_params` gives, from stored sums.

    Parameters
    ----------
    sums : xarray.Dataset
        From :func:`lazy_sums` (computed) or :func:`open_sums`.
    variables : sequence of str, optional
        Default: every variable summed, in the stored order.
    min_obs : int
        As for :func:`~casm_cloud.seasonal.fit_seasonal_cycle`; at most the
        stored ``kbuf + 1``.
    dim : str
        Name of the time dimension the sums were taken over (not stored).

    Returns
    -------
    xarray.Dataset
        Parameters with a ``variable`` dimension, NumPy-backed.

    Raises
    ------
    SeasonalError
        For ``min_obs`` the stored values cannot serve or unknown variables.
    """
    min_obs = _check_min_obs(min_obs)
    a = sums.attrs
    kbuf = int(a[f"{_ATTR}kbuf"])
    if min_obs - 1 > kbuf:
        raise SeasonalError(f"min_obs={min_obs}: the stored sums keep the values of pixels "
                            f"with up to {kbuf} values (min_obs <= {kbuf + 1}); fit from the "
                            "data instead")
    stored = _stored_names(sums)
    names = list(variables) if variables else stored
    missing = [n for n in names if n not in stored]
    if missing:
        raise SeasonalError(f"variables {missing} have no stored sums; they have {stored}")
    sel = [stored.index(n) for n in names]
    rest = sums["sums"].dims[1:]
    S = np.asarray(sums["sums"].values, np.float64)
    full = S.shape[1:]
    idx = np.asarray(sums["sparse_index"].values, np.int64)
    vals = np.asarray(sums["sparse_values"].values, np.float64)
    ok = idx >= 0
    idx, vals = idx[ok], vals[ok]
    vpos = rest.index("variable")
    if sel != list(range(len(stored))):
        S = np.take(S, sel, axis=1 + vpos)
        where = list(np.unravel_index(idx, full))
        new_v = np.full(len(stored), -1)
        new_v[sel] = np.arange(len(sel))
        keep = new_v[where[vpos]] >= 0
        where = [w[keep] for w in where]
        where[vpos] = new_v[where[vpos]]
        idx, vals = np.ravel_multi_index(tuple(where), S.shape[1:]), vals[keep]
    n = S[0].reshape(-1)
    keep = n[idx] <= min_obs - 1
    idx, vals = np.ascontiguousarray(idx[keep]), np.ascontiguousarray(vals[keep])
    dtype = np.dtype(a[f"{_ATTR}dtype"])
    params = _aggregate([(S, idx, vals)], kbuf=min_obs - 1, min_obs=min_obs, dtype=dtype)
    coords = {k: v for k, v in sums.coords.items()
              if not ({"seasonal_sum", "sparse", "sparse_k"} & set(v.dims))}
    coords["variable"] = ("variable", np.array(names))
    units = a.get(f"{_ATTR}units")
    template = xr.DataArray(np.empty((0, *S.shape[1:])), dims=(dim, *rest), coords=coords,
                            attrs={"units": units} if units else {})
    out = _params_dataset(params, template, dim, rest, min_obs)
    out.attrs["seasonal_fitted_variable"] = ",".join(names)
    return out

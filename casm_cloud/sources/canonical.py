"""Adapter for Zarr stores already in canonical form.

The simulator and every pipeline stage write canonical stores
(``casm_cloud.storage``); this adapter opens one lazily and checks it
against the schema, so a catalog can point at simulated and real inputs
alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import xarray as xr

from casm_cloud import schema, storage
from casm_cloud.grid import GridWindow
from casm_cloud.sources._common import select_stored, time_index

__all__ = ["open_canonical_zarr"]


def open_canonical_zarr(urlpath: str, *, storage_options: Mapping | None = None,
                        kind: str, variables: Sequence[str] | None = None,
                        require_complete: bool = False, window: GridWindow | None = None,
                        start: str | None = None, end: str | None = None,
                        method: str = "bilinear") -> xr.Dataset:
    """Open a canonical Zarr store lazily and validate it.

    The store is opened without dask, cut to the variables, the period and
    the cells ``window`` needs, and only then chunked (on the store's own
    chunk grid), so the cost of an open follows the request, not the store.

    Parameters
    ----------
    urlpath : str
        Local path or fsspec URL of the store.
    storage_options : mapping, optional
        fsspec options (credentials from here or the environment only).
    kind : str
        Canonical kind (a key of :data:`casm_cloud.schema.KINDS`).
    variables : sequence of str, optional
        Keep only these data variables (the store is validated with all of
        the kind's required variables first).
    require_complete : bool
        Refuse stores without the completion attribute (unfinished writes).
    window : GridWindow, optional
        Return this window: cut out of a store on the same EASE2 grid, or
        regridded (``method``) from a store on another grid.
    start, end : str, optional
        First and last day kept (inclusive).
    method : {"bilinear", "nearest"}
        Regridding method for a store on another grid.

    Returns
    -------
    xarray.Dataset
        Dask-backed, on-disk chunks, validated as ``kind``.

    Raises
    ------
    casm_cloud.storage.StoreError
        If there is no store at ``urlpath`` (or it is unfinished and
        ``require_complete``).
    casm_cloud.schema.SchemaError
        If the store is not a canonical ``kind`` dataset, a requested
        variable is absent, or the period holds no time step.
    casm_cloud.regrid.RegridError
        If ``window`` lies outside the store's grid.
    """
    from casm_cloud.regrid import on_window, source_box

    ds = storage.open_zarr(urlpath, storage_options, require_complete=require_complete,
                           chunks=None)
    if variables is not None:
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise schema.SchemaError(
                f"{urlpath}: variables {missing} are not in the store (have {sorted(ds.data_vars)})"
            )
    index = {}
    if (start is not None or end is not None) and "time" in ds.dims:
        index["time"] = time_index(ds["time"].values, start, end)
        if index["time"].stop == index["time"].start:
            t = ds["time"].values
            held = f"{str(t[0])[:10]}..{str(t[-1])[:10]}" if t.size else "no time steps"
            raise schema.SchemaError(f"{urlpath}: no time step in {start}..{end}; the store "
                                     f"holds {held}")
    if window is not None:
        index.update(_same_grid_box(ds, window, urlpath) or
                     source_box(ds, window, method=method, name=str(urlpath)))
    ds = schema.validate(select_stored(ds, index), kind)
    if variables is not None:
        ds = ds[list(variables)]
    if window is not None:
        ds = on_window(ds, window, name=str(urlpath))
        ds.attrs.update(window.identity())
    return ds


def _same_grid_box(ds: xr.Dataset, window: GridWindow, urlpath) -> dict | None:
    """The ``y``/``x`` cut of ``window`` from a store on a window of the same lat/lon grid.

    (EASE2 stores are cut by :func:`casm_cloud.regrid.source_box`; a lat/lon
    grid window, ERA5's 0.25° cells, is cut the same way here.)
    """
    if window.kind != "latlon" or "latlon_grid" not in ds.attrs or \
            not {"y", "x"} <= set(ds.dims):
        return None
    src = GridWindow.from_attrs(ds.attrs, (ds.sizes["y"], ds.sizes["x"]))
    if src.name != window.name:
        return None
    r0 = window.row_slice.start - src.row_slice.start
    c0 = window.col_slice.start - src.col_slice.start
    if r0 < 0 or c0 < 0 or r0 + window.shape[0] > src.shape[0] or \
            c0 + window.shape[1] > src.shape[1]:
        raise schema.SchemaError(f"{urlpath}: the store covers {src!r}, not the window {window!r}")
    return {"y": slice(r0, r0 + window.shape[0]), "x": slice(c0, c0 + window.shape[1])}

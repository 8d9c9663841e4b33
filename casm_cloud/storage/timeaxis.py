"""The time axis of a finished store grows: the monthly append, and the one way it grows."""

from __future__ import annotations

from collections.abc import Mapping

import xarray as xr

from casm_cloud.errors import StoreError
from casm_cloud.storage.guard import zarr_store
from casm_cloud.storage.stores import (
    COMPLETE_ATTR,
    HASH_ATTR,
    mark_complete,
    open_zarr,
    write_region,
    zarr_group,
)

__all__ = ["append_time", "grow_time"]

def _so(storage_options: Mapping | None) -> dict | None:
    """``storage_options`` as ``to_zarr``/``open_zarr`` take them (``None`` when empty)."""
    return dict(storage_options or {}) or None


def append_time(ds: xr.Dataset, url: str, storage_options: Mapping | None = None, *,
                config_hash: str | None = None) -> int:
    """Write ``ds`` onto the end of a store's time axis (the monthly update).

    Times of ``ds`` up to the store's last one must be the store's last times
    (a killed append that grew the axis): they are written again in place;
    later ones are appended.  Writes are chunked to line up with the store's
    chunks, so dask workers never share a Zarr chunk.  The store reads as
    unfinished until the write is done; its attributes stay.

    Returns
    -------
    int
        Number of time steps the store gained (``ds`` empty: nothing is touched).

    Raises
    ------
    StoreError
        If the store is missing, or ``ds`` starts at a time the store does not
        have or lacks some of the store's times after its start.
    """
    so = dict(storage_options or {})
    stored = open_zarr(url, so)
    if ds.sizes.get("time", 0) == 0:
        return 0
    old, times = stored["time"].values, ds["time"].values
    i0 = int(old.searchsorted(times[0]))
    n_over = old.size - i0
    if n_over > times.size or (old[i0:] != times[:n_over]).any():
        raise StoreError(f"cannot append to {url}: its times end at {old[-1]}, the new ones "
                         f"({times[0]}..{times[-1]}) do not continue them")
    new = _time_part(ds)
    chunks = {}
    for name in new.data_vars:
        chunks.update(zip(stored[name].dims, stored[name].encoding["chunks"], strict=True))
    attrs = {k: v for k, v in stored.attrs.items() if k != COMPLETE_ATTR}
    zarr_group(url, so).attrs[COMPLETE_ATTR] = False
    if n_over:
        over = new.isel(time=slice(0, n_over))
        over = over.chunk({**chunks, "time": _aligned(n_over, i0, chunks["time"])})
        # Starts inside a Zarr chunk when the killed append did: each dask chunk
        # is one Zarr chunk's part (above) and nothing else writes them.
        write_region(over, url, so, region={d: slice(i0, None) if d == "time" else slice(None)
                                            for d in over.dims}, safe_chunks=False)
    rest = new.isel(time=slice(n_over, None))
    if rest.sizes["time"]:
        rest = rest.chunk({**chunks, "time": _aligned(rest.sizes["time"], old.size,
                                                       chunks["time"])})
        grow_time(rest, url, so, attrs=attrs)
    mark_complete(url, so, config_hash=config_hash or attrs.get(HASH_ATTR))
    return int(times.size - n_over)


def _time_part(ds: xr.Dataset) -> xr.Dataset:
    """The time-dependent data variables of ``ds`` with the ``time`` coordinate only."""
    new = ds[[v for v in ds.data_vars if "time" in ds[v].dims]]
    return new.drop_vars([c for c in new.coords if c != "time"])


def grow_time(ds: xr.Dataset, url: str, storage_options: Mapping | None = None, *,
              attrs: Mapping, compute: bool = True) -> None:
    """Append ``ds``'s time steps to the end of a store's time axis (the one way it grows).

    Only ``ds``'s time-dependent data variables and its ``time`` coordinate
    are written; the times must all be after the store's last one (the
    caller checks).  The store's attributes become ``attrs`` with
    ``casm_complete`` false (``to_zarr(append_dim=...)`` replaces a group's
    attributes): the store reads as unfinished until the caller calls
    :func:`mark_complete`.

    ``compute=True`` writes the data; its dask chunks must line up with the
    store's chunks (see :func:`append_time`).  ``compute=False`` grows the
    arrays and writes the new times only, leaving the data to later
    :func:`write_region` calls: ``ds`` is then a template, whose chunks need
    not line up since none of them is written.
    """
    so = _so(storage_options)
    zarr_group(url, so).attrs[COMPLETE_ATTR] = False
    grow = _time_part(ds)
    grow.attrs = {**dict(attrs), COMPLETE_ATTR: False}
    grow.to_zarr(zarr_store(url, so), append_dim="time", compute=compute, consolidated=False,
                 safe_chunks=compute)


def _aligned(n: int, offset: int, step: int) -> tuple[int, ...]:
    """Chunk sizes of ``n`` steps written from ``offset`` on Zarr chunks of ``step``."""
    sizes, pos = [], offset
    while pos < offset + n:
        end = min((pos // step + 1) * step, offset + n)
        sizes.append(end - pos)
        pos = end
    return tuple(sizes)

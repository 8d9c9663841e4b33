"""``write_simulation``: every source to Zarr, the stations, and a catalog.

Order of writing (so that nothing half-written looks complete):

1. check the inputs and that ``out`` is writable; remove an old
   ``catalog.yaml`` there;
2. per source, write the Zarr template (metadata, no data);
3. write every chunk of every store in **one** dask computation, so each
   spatial block's bucket chain runs once and feeds all stores, streaming
   chunk by chunk (memory bounded by a few chunks per worker thread);
4. set the completion attribute of each store;
5. write the stations (from the finished truth store) and, last, the catalog.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping

import dask
import xarray as xr

from casm_cloud import storage
from casm_cloud.errors import InputError, UserError
from casm_cloud.simulate.generate import DEFAULT_CHUNKS, parse_day

__all__ = ["write_simulation", "write_sources", "OutputNotWritableError"]

_DESCRIPTIONS = {
    "truth": "true soil moisture of the three layers (the answer key)",
    "era5": "ERA5-like daily forcing and model soil water",
    "static": "static maps (soil texture, porosity, elevation, vegetation, climate)",
    "smos": "SMOS L3-like brightness temperatures (1.4 GHz H/V, 42.5 deg)",
    "amsre": "AMSR-E brightness temperatures (10.65V, 18.7H, 36.5H, 89V GHz, 55 deg)",
    "amsr2": "AMSR2 brightness temperatures (AMSR-E channels, with its calibration offset)",
    "smap": "SMAP L3-like surface soil-moisture retrievals",
}


class OutputNotWritableError(UserError, PermissionError):
    """The output folder cannot be created or written."""


def _check_writable(out: str, storage_options: Mapping | None) -> None:
    try:
        fs, root = storage.url_to_fs(out, storage_options)
        fs.makedirs(root, exist_ok=True)
        probe = posixpath.join(root, ".casm_write_probe")
        fs.pipe(probe, b"")
        fs.rm(probe)
    except (OSError, ValueError) as err:
        raise OutputNotWritableError(f"cannot write to output {out!r}: {err}") from None


def write_sources(sources: Mapping[str, xr.Dataset], out: str,
                  storage_options: Mapping | None = None, *,
                  config_hash: str | None = None) -> dict[str, str]:
    """Write lazy datasets to ``<out>/<name>.zarr`` in one streamed computation.

    Templates first, then every chunk of every store
    (:func:`casm_cloud.storage.region_writes`) in a single ``dask.compute``
    (shared bucket chains run once), then the completion attribute of each
    store.  Runs on the active dask scheduler or client.

    Returns
    -------
    dict of str to str
        Source name -> store URL.
    """
    so = dict(storage_options or {})
    writes, urls = [], {}
    for name, ds in sources.items():
        url = storage.join(out, f"{name}.zarr")
        urls[name] = url
        storage.write_template(ds, url, so, config_hash=config_hash)
        writes.append(storage.region_writes(ds, url, so))
    dask.compute(*writes)
    for url in urls.values():
        storage.mark_complete(url, so, config_hash=config_hash)
    return urls


def write_simulation(out: str, *, region: str = "demo", grid: str = "M25", start, end,
                     seed: int = 0, storage_options: Mapping | None = None,
                     era5_native: bool = False, amsre_ease1: bool = False,
                     chunks: Mapping[str, int] | None = None, n_stations: int = 8,
                     settings=None, sources=None, station_depths=None,
                     shared_cells: int = 0, lat=None, lon=None) -> str:
    """Simulate a named region and write every source, the stations and a catalog.

    Parameters
    ----------
    out : str
        Output folder: local path or fsspec URL (``gs://``, ``s3://``,
        ``memory://``).  Gets ``<source>.zarr`` per source, ``stations/``
        (ISMN layout) and ``catalog.yaml``.
    region : str
        Named region (:data:`casm_cloud.grid.REGIONS`); ignored when ``lat`` and
        ``lon`` are given.
    grid : str
        EASE2 grid name (``M36``, ``M25``, ``M09``) or ``ERA5_0p25`` (ERA5's regular
        0.25° lat/lon grid, :class:`casm_cloud.grid.LatLonGrid`).
    start, end : str or date
        First and last day.
    seed : int
    storage_options : mapping, optional
        fsspec options for ``out`` (credentials stay out of the catalog).
    era5_native, amsre_ease1 : bool
        Write ERA5 on its 0.25° lat/lon grid and AMSR-E on EASE-Grid v1
        (see :func:`casm_cloud.simulate.simulate`).
    chunks : mapping, optional
        Output chunks (default ``{"time": 365, "y": 64, "x": 64}``).
    n_stations : int
        Number of ISMN-like stations.
    settings : SimSettings, optional
    sources : iterable of str, optional
        Subset of the simulator's sources to write (default: all); ``truth``
        and ``static`` are always written (the stations need them).
    station_depths, shared_cells
        Sensor depths per station and extra stations in already used cells
        (see :func:`casm_cloud.simulate.simulate_stations`).
    lat, lon : (float, float), optional
        The window's latitude and longitude ranges instead of a region.

    Returns
    -------
    str
        Path or URL of the catalog.

    Raises
    ------
    casm_cloud.errors.UserError
        Unknown region or grid (``GridError``), dates that are not dates, or
        ``end`` before ``start`` (``InputError``), all ``ValueError``; an
        ``out`` that cannot be written (:class:`OutputNotWritableError`, a
        ``PermissionError``).
    """
    from casm_cloud.catalog import make_entry, write_catalog
    from casm_cloud.grid import LATLON_GRIDS, EASE2Grid, LatLonGrid

    def grid_by_name(name):  # EASE2 by default: its error names the EASE2 grids
        return LatLonGrid(name) if name in LATLON_GRIDS else EASE2Grid(name)
    from casm_cloud.simulate import simulate
    from casm_cloud.simulate.stations import simulate_stations, write_ismn

    window = grid_by_name(grid).window_by_name(region) if lat is None else \
        grid_by_name(grid).window(lat=tuple(lat), lon=tuple(lon))
    if sources is not None:
        sources = tuple(dict.fromkeys(["truth", "static", *sources]))
    try:
        t0, t1 = parse_day(start, "start"), parse_day(end, "end")
    except ValueError as err:  # parse_day's "is not a date": the user's input
        if isinstance(err, UserError):
            raise
        raise InputError(str(err)) from None
    if t1 < t0:
        raise InputError(f"end {t1} is before start {t0}")
    ch = dict(DEFAULT_CHUNKS, **dict(chunks or {}))
    so = dict(storage_options or {})
    _check_writable(out, so)
    catalog_path = storage.join(out, "catalog.yaml")
    storage.remove(catalog_path, so)
    config_hash = hashlib.sha256(json.dumps(
        {"region": region if lat is None else [list(lat), list(lon)], "grid": grid, "start": str(t0), "end": str(t1), "seed": seed,
         "era5_native": era5_native, "amsre_ease1": amsre_ease1, "chunks": ch,
         "n_stations": n_stations, "settings": repr(settings),
         **({"sources": list(sources)} if sources is not None else {}),
         **({"station_depths": repr(station_depths), "shared_cells": shared_cells}
            if station_depths is not None or shared_cells else {})},
        sort_keys=True).encode()
    ).hexdigest()[:16]

    sources = simulate(window, t0, t1, seed, chunks=ch, era5_native=era5_native,
                       amsre_ease1=amsre_ease1, settings=settings, sources=sources)
    urls = write_sources(sources, out, so, config_hash=config_hash)

    truth = storage.open_zarr(urls["truth"], so, require_complete=True)
    static = storage.open_zarr(urls["static"], so, require_complete=True).load()
    n = min(n_stations, truth.sizes["y"] * truth.sizes["x"])
    stations = simulate_stations(truth, n_stations=n, seed=seed, static=static,
                                 depths=station_depths, shared_cells=shared_cells)
    write_ismn(stations, storage.join(out, "stations"), so)

    entries = {}
    for name in sources:
        entries[name] = make_entry("canonical_zarr", f"{name}.zarr", kind=name,
                                   description=f"{_DESCRIPTIONS[name]}; simulated, region "
                                               f"{region} ({grid}), {t0}..{t1}, seed {seed}")
    return write_catalog(entries, catalog_path, so)



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
from collections.abc import Mapping, Sequence
from typing import Literal

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


#: Where the provider layout keeps the canonical stores it converts (removed at the end
#: unless ``keep_canonical``).
CANONICAL_DIR = "canonical"
_ALWAYS_CANONICAL = ("truth", "static")  # no provider product: canonical in both layouts


def _entry(name: str, url: str, description: str):
    from casm_cloud.catalog import make_entry

    return make_entry("canonical_zarr", url, kind=name, description=description)


def _provider_layout(urls: dict[str, str], out: str, so: dict, *, static, seed: int,
                     era5_formats, window_options: dict, keep_canonical: bool,
                     describe) -> dict:
    """The provider files of the sensor stores, their catalog entries; the stores removed
    (or given their own catalog) after."""
    from casm_cloud.catalog import make_entry, write_catalog
    from casm_cloud.simulate.provider import write_provider_files

    made = write_provider_files(urls, out, so, static=static, seed=seed,
                                era5_formats=era5_formats, window_options=window_options)
    entries = {name: make_entry(adapter, url, description=f"{text}; {describe('')}",
                                **options)
               for name, (adapter, url, options, text) in made.items()}
    scratch = storage.join(out, CANONICAL_DIR)
    if keep_canonical:  # beside the stores: the same world, canonical (truth, static from ..)
        canon = {name: _entry(name, f"{name}.zarr", describe(name)) for name in urls}
        canon.update({n: _entry(n, f"../{n}.zarr", describe(n)) for n in _ALWAYS_CANONICAL})
        write_catalog(canon, storage.join(scratch, "catalog.yaml"), so)
    else:
        storage.remove(scratch, so)
    return entries


def write_simulation(out: str, *, region: str = "demo", grid: str = "M25", start, end,
                     seed: int = 0, storage_options: Mapping | None = None,
                     era5_native: bool = False, amsre_ease1: bool = False,
                     chunks: Mapping[str, int] | None = None, n_stations: int = 8,
                     settings=None, sources=None, station_depths=None,
                     shared_cells: int = 0, lat=None, lon=None,
                     layout: Literal["canonical", "provider"] = "canonical",
                     era5_formats: Sequence[str] | None = None,
                     keep_canonical: bool = False) -> str:
    """Simulate a named region and write every source, the stations and a catalog.

    Parameters
    ----------
    out : str
        Output folder: local path or fsspec URL (``gs://``, ``s3://``,
        ``memory://``).  Gets ``<source>.zarr`` per source (``layout="provider"``:
        the providers' files instead, see below), ``stations/`` (ISMN layout) and
        ``catalog.yaml``.
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
    layout : {"canonical", "provider"}
        ``provider``: SMAP, SMOS, AMSR-E, AMSR2 and ERA5 as the files their
        providers distribute (:mod:`casm_cloud.simulate.provider`: SPL3SMP
        HDF5, CATDS L3TB netCDF, NSIDC-0301 binaries, CETB netCDF, ARCO Zarr
        and CDS netCDF), with a catalog of the real data's adapters; truth and
        static maps stay canonical stores.
    era5_formats : sequence of {"arco", "netcdf"}, optional
        ERA5 layouts of the provider layout (default both; the ARCO layout
        has one chunk per hour and variable, the costliest to write).
    keep_canonical : bool
        Provider layout: keep the canonical stores it was made from in
        ``<out>/canonical/`` with their own ``catalog.yaml`` (the same world in
        both layouts, for comparisons); otherwise they are removed.

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
    from casm_cloud.catalog import write_catalog
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
    if layout not in ("canonical", "provider"):
        raise InputError(f"layout {layout!r}: expected 'canonical' or 'provider'")
    from casm_cloud.simulate.provider import ERA5_FORMATS

    era5_formats = tuple(ERA5_FORMATS if era5_formats is None else era5_formats)
    if not era5_formats or set(era5_formats) - set(ERA5_FORMATS):
        raise InputError(f"era5_formats {list(era5_formats)}: expected some of "
                         f"{list(ERA5_FORMATS)}")
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
            if station_depths is not None or shared_cells else {}),
         **({"layout": layout, "era5_formats": list(era5_formats)}
            if layout == "provider" else {})},
        sort_keys=True).encode()
    ).hexdigest()[:16]

    sources = simulate(window, t0, t1, seed, chunks=ch, era5_native=era5_native,
                       amsre_ease1=amsre_ease1, settings=settings, sources=sources)
    kept = {k: v for k, v in sources.items() if layout == "canonical" or k in _ALWAYS_CANONICAL}
    urls = write_sources(kept, out, so, config_hash=config_hash)
    if layout == "provider":
        scratch = storage.join(out, CANONICAL_DIR)
        storage.remove(scratch, so)
        converted = write_sources({k: v for k, v in sources.items() if k not in kept},
                                  scratch, so, config_hash=config_hash)
        urls.update(converted)

    truth = storage.open_zarr(urls["truth"], so, require_complete=True)
    static = storage.open_zarr(urls["static"], so, require_complete=True).load()
    n = min(n_stations, truth.sizes["y"] * truth.sizes["x"])
    stations = simulate_stations(truth, n_stations=n, seed=seed, static=static,
                                 depths=station_depths, shared_cells=shared_cells)
    write_ismn(stations, storage.join(out, "stations"), so)

    def describe(name: str) -> str:
        text = f"simulated, region {region} ({grid}), {t0}..{t1}, seed {seed}"
        return f"{_DESCRIPTIONS[name]}; {text}" if name else text

    entries = {name: _entry(name, f"{name}.zarr", describe(name)) for name in kept}
    if layout == "provider":
        where = {"grid": grid, **({"region": region} if lat is None else
                                  {"lat": list(lat), "lon": list(lon)})}
        entries.update(_provider_layout(
            {k: u for k, u in urls.items() if k not in kept}, out, so, static=static,
            seed=seed, era5_formats=era5_formats, window_options=where,
            keep_canonical=keep_canonical, describe=describe))
    return write_catalog(entries, catalog_path, so)



"""Adapters for the SoMo.ml static maps: ETOPO1 elevation and the GLDAS static files.

Both cut their file to the request (``window``, or a ``bbox``) before any value
is read (docs/real_data.md, "Static maps"):

* ETOPO1 is reduced in 15 × 15 blocks onto the cells of the recipe's window
  when the window is on a 0.25° lat/lon grid (ERA5's: centres at multiples of
  0.25°), and returned on that window (``y``, ``x``): block statistics of the
  window's own cells, no interpolation.  Otherwise (an EASE2 window, or none)
  onto the GLDAS cells (edges at multiples of 0.25°);
* GLDAS is returned on its own cells, a margin around the window, for
  :func:`casm_cloud.regrid.on_window` (bilinear; nearest for the vegetation class).

A lat/lon result has dims ``(lat, lon)``, latitude decreasing, longitude
increasing (a regular grid ``casm_cloud.regrid.regrid_to_window`` reads).

* :func:`open_etopo1` -- NOAA NCEI's ETOPO1 netCDF (``ETOPO1_Ice_g_gmt4.grd``:
  variables ``x``, ``y``, ``z``; or the CF form ``lon``, ``lat``, ``z``).  The
  1-arc-minute elevations are reduced in 15 × 15 blocks (``xarray.coarsen``,
  not interpolation) to ``elevation`` (block mean) and ``elevation_std``
  (block standard deviation), lazily with dask.
* :func:`open_gldas_static` -- the GLDAS 0.25° static netCDF files (soil
  fractions, porosity, dominant MODIS-IGBP vegetation), renamed to the
  canonical ``static`` variables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from casm_cloud import schema
from casm_cloud.errors import UserError

__all__ = ["StaticSourceError", "block_reduce", "open_etopo1", "open_gldas_static",
           "GLDAS_VARIABLES", "CELL"]

#: Static cell size in degrees (GLDAS 0.25°) and ETOPO1 nodes per cell side.
CELL = 0.25
_BLOCK = 15

#: canonical name -> (GLDAS netCDF variable, expected units, scale to the canonical units)
GLDAS_VARIABLES: dict[str, tuple[str, tuple[str, ...], float]] = {
    "sand": ("GLDAS_soilfraction_sand", ("1", "fraction", "-"), 1.0),
    "silt": ("GLDAS_soilfraction_silt", ("1", "fraction", "-"), 1.0),
    "clay": ("GLDAS_soilfraction_clay", ("1", "fraction", "-"), 1.0),
    "porosity": ("GLDAS_porosity", ("m3 m-3", "m3/m3", "1", "fraction", "-"), 1.0),
    "vegetation_class": ("GLDAS_domveg", ("1", "-", "index"), 1.0),
}


class StaticSourceError(UserError, ValueError):
    """A static source file that lacks a variable or has unexpected units (names both)."""


def _open(urlpath: str, storage_options: Mapping | None) -> xr.Dataset:
    from casm_cloud.storage import url_to_fs

    fs, path = url_to_fs(urlpath, storage_options)
    if not fs.exists(path):
        raise StaticSourceError(f"{urlpath}: no such file")
    local = path if "file" in np.atleast_1d(fs.protocol) else fs.open(path, "rb")
    return xr.open_dataset(local, chunks={}, mask_and_scale=True)


def _axes(ds: xr.Dataset, where: str) -> tuple[str, str]:
    for lat, lon in (("lat", "lon"), ("y", "x"), ("latitude", "longitude")):
        if lat in ds.dims and lon in ds.dims:
            return lat, lon
    raise StaticSourceError(f"{where}: expected dimensions lat/lon or y/x, found {sorted(ds.dims)}")


def _cut(da: xr.DataArray, lat: str, lon: str, bbox, tol: float,
         origin: tuple[float, float] = (0.0, 0.0)) -> xr.DataArray:
    """``da`` sorted ascending and cut to the whole 0.25° cells covering ``bbox`` (cell
    edges at ``origin + k * 0.25`` in latitude and longitude)."""
    da = da.sortby(lat).sortby(lon)
    if bbox is None:
        s, n = float(da[lat].min()), float(da[lat].max())
        w, e = float(da[lon].min()), float(da[lon].max())
    else:
        s, n, w, e = bbox
    (o_lat, o_lon) = origin
    s, w = _edge(s, o_lat, np.floor), _edge(w, o_lon, np.floor)
    n, e = _edge(n, o_lat, np.ceil), _edge(e, o_lon, np.ceil)
    # half-open [edge, edge + 0.25): a node on a cell's north/east edge belongs to the next cell
    keep_lat = (da[lat] >= s - tol) & (da[lat] < n - tol)
    keep_lon = (da[lon] >= w - tol) & (da[lon] < e - tol)
    return da.isel({lat: np.flatnonzero(keep_lat.values), lon: np.flatnonzero(keep_lon.values)})


def _edge(v: float, origin: float, rounding) -> float:
    """The cell edge at or beyond ``v`` (``np.floor``: below, ``np.ceil``: above), to 1e-9°."""
    return float(rounding(round((v - origin) / CELL, 9)) * CELL + origin)


def _on_cells(da, lat: str, lon: str, origin: tuple[float, float] = (0.0, 0.0)):
    """Dims ``(lat, lon)``, latitude decreasing, centres snapped to the 0.25° cells."""
    (o_lat, o_lon) = origin
    lat_c = np.floor((da[lat].values - o_lat) / CELL) * CELL + o_lat + CELL / 2
    lon_c = np.floor((da[lon].values - o_lon) / CELL) * CELL + o_lon + CELL / 2
    out = da.rename({lat: "_lat", lon: "_lon"}).assign_coords(_lat=lat_c, _lon=lon_c)
    out = out.rename({"_lat": "lat", "_lon": "lon"})
    return out.isel(lat=slice(None, None, -1))


def block_reduce(z: xr.DataArray, lat: str, lon: str, bbox=None,
                 origin: tuple[float, float] = (0.0, 0.0)) -> xr.Dataset:
    """Mean and standard deviation of 1-arc-minute ``z`` in each 0.25° cell (15 × 15 blocks).

    Nodes are assigned to the cell that contains them (edges at ``origin``
    plus multiples of 0.25°, half-open), so cell- and grid-registered ETOPO1
    both give whole blocks on either cell grid (GLDAS's, origin 0; ERA5's,
    origin 0.125°); a window edge between cell edges is widened to one.

    Returns
    -------
    xarray.Dataset
        ``elevation`` and ``elevation_std`` (population std, ``ddof=0``), float32, lazy.
    """
    held = (float(z[lat].min()), float(z[lat].max()), float(z[lon].min()), float(z[lon].max()))
    z = _cut(z, lat, lon, bbox, tol=1e-6, origin=origin)
    ny, nx = z.sizes[lat], z.sizes[lon]
    if bbox is not None:
        s, n, w, e = bbox
        want = (round((_edge(n, origin[0], np.ceil) - _edge(s, origin[0], np.floor)) / CELL),
                round((_edge(e, origin[1], np.ceil) - _edge(w, origin[1], np.floor)) / CELL))
        if (ny, nx) != (want[0] * _BLOCK, want[1] * _BLOCK):
            raise StaticSourceError(
                f"ETOPO1: the file (lat {held[0]:g}..{held[1]:g}, lon {held[2]:g}..{held[3]:g}) "
                f"does not cover the request lat {s:g}..{n:g}, lon {w:g}..{e:g}")
    if ny % _BLOCK or nx % _BLOCK or not ny or not nx:
        raise StaticSourceError(f"ETOPO1: the window holds {ny} x {nx} nodes, expected whole "
                                f"{_BLOCK} x {_BLOCK} blocks of the 1-arc-minute grid")
    blocks = z.astype(np.float64).coarsen({lat: _BLOCK, lon: _BLOCK})
    mean, std = blocks.mean(), blocks.std()
    # coarsen labels a block by its mean coordinate: the cell centre
    ds = xr.Dataset({"elevation": mean.astype(np.float32),
                     "elevation_std": std.astype(np.float32)})
    ds = _on_cells(ds, lat, lon, origin)
    for n in ds.data_vars:
        ds[n].attrs = schema.spec("static", n).attrs()
    return ds


def _aligned(window) -> tuple[float, float] | None:
    """The cell-edge origin of ``window`` when it is on a 0.25° lat/lon grid, else None."""
    from casm_cloud.grid import LATLON_GRIDS

    if window is None or window.name not in LATLON_GRIDS or LATLON_GRIDS[window.name][2] != CELL:
        return None
    return (float((window.lat[0] - CELL / 2) % CELL), float((window.lon[0] - CELL / 2) % CELL))


def _bbox(window, bbox, margin: float):
    """The (south, north, west, east) of ``window`` with ``margin`` degrees, or ``bbox``."""
    if window is None:
        return bbox
    half = CELL / 2 + margin
    return (float(window.lat.min()) - half, float(window.lat.max()) + half,
            float(window.lon.min()) - half, float(window.lon.max()) + half)


def _on_window(ds: xr.Dataset, window, urlpath: str) -> xr.Dataset:
    """A dataset on the 0.25° cells of a lat/lon ``window`` as that window (``y``, ``x``)."""
    got = (ds.sizes["lat"], ds.sizes["lon"])
    if got != window.shape or not (np.allclose(ds["lat"], window.lat)
                                   and np.allclose(ds["lon"], window.lon)):
        raise StaticSourceError(f"{urlpath}: covers {got[0]} x {got[1]} cells of the window "
                                f"{window!r}, expected {window.shape[0]} x {window.shape[1]} "
                                f"(lat {window.lat.min()}..{window.lat.max()}, lon "
                                f"{window.lon.min()}..{window.lon.max()})")
    out = ds.drop_vars(["lat", "lon"]).rename({"lat": "y", "lon": "x"})
    out = out.assign_coords(window.coords())
    out.attrs.update(window.identity())
    return out


def open_etopo1(urlpath: str, *, storage_options: Mapping | None = None,
                bbox: Sequence[float] | None = None, variable: str = "z",
                chunk: int = 600, window=None) -> xr.Dataset:
    """ETOPO1 elevations reduced to 0.25° ``elevation`` / ``elevation_std`` (lazy).

    Parameters
    ----------
    urlpath : str
        NOAA NCEI's ETOPO1 netCDF (GMT4 ``.grd`` or CF netCDF), local or fsspec URL.
    bbox : (south, north, west, east), optional
        Degrees; the file is cut to the 0.25° cells covering it before reading.
    variable : str
        Elevation variable (``z`` in NCEI's files), metres.
    chunk : int
        Dask chunk in nodes per side (a multiple of 15).
    window : casm_cloud.grid.GridWindow, optional
        The recipe's window (the catalog passes it).  On a 0.25° lat/lon grid
        the blocks are the window's own cells and the result is on the window;
        otherwise GLDAS cells around it, for regridding.

    Raises
    ------
    StaticSourceError
        Missing variable, units other than metres, or a window of no whole block.
    """
    ds = _open(urlpath, storage_options)
    if variable not in ds:
        raise StaticSourceError(f"{urlpath}: no variable {variable!r} (ETOPO1 elevation); "
                                f"found {sorted(ds.data_vars)}")
    z = ds[variable]
    units = str(z.attrs.get("units", "m")).strip().lower()
    if units not in ("m", "meters", "metres", "meter", "metre"):
        raise StaticSourceError(f"{urlpath}: {variable!r} has units {units!r}, expected metres")
    lat, lon = _axes(ds, urlpath)
    origin = _aligned(window)
    out = block_reduce(z, lat, lon, _bbox(window, bbox, 0.0 if origin else 2 * CELL),
                       origin or (0.0, 0.0))
    out = out.chunk({"lat": max(1, chunk // _BLOCK), "lon": max(1, chunk // _BLOCK)})
    return _on_window(out, window, urlpath) if origin else out


def _gldas_var(ds: xr.Dataset, urlpath: str, name: str, variable: str,
               units_ok: tuple[str, ...], bbox) -> xr.DataArray:
    if variable not in ds:
        raise StaticSourceError(f"{urlpath}: no variable {variable!r} (GLDAS {name}); "
                                f"found {sorted(ds.data_vars)}")
    da = ds[variable]
    if "time" in da.dims:
        da = da.isel(time=0, drop=True)
    units = str(da.attrs.get("units", "1")).strip()
    if units not in units_ok:
        raise StaticSourceError(f"{urlpath}: {variable!r} has units {units!r}, "
                                f"expected one of {list(units_ok)}")
    lat, lon = _axes(ds, urlpath)
    da = _on_cells(_cut(da, lat, lon, bbox, tol=CELL / 4), lat, lon)
    return da.drop_vars([c for c in da.coords if c not in ("lat", "lon")])


def open_gldas_static(urlpath: str | Sequence[str], *, storage_options: Mapping | None = None,
                      bbox: Sequence[float] | None = None,
                      names: Mapping[str, str] | None = None, window=None) -> xr.Dataset:
    """The GLDAS 0.25° static fields as canonical ``static`` variables (lazy).

    Parameters
    ----------
    urlpath : str or sequence of str
        The GLDAS static netCDF files (paths or globs) (soil fractions, porosity, dominant
        vegetation); each canonical variable is taken from the first file that has it.
    bbox : (south, north, west, east), optional
        Degrees; cut before reading.
    names : mapping, optional
        Canonical name -> GLDAS variable, replacing :data:`GLDAS_VARIABLES`' names
        (a catalog entry option).
    window : casm_cloud.grid.GridWindow, optional
        The recipe's window (the catalog passes it): the files are cut to its
        cells and a margin of two cells, which the regridding needs.

    Returns
    -------
    xarray.Dataset
        ``sand``, ``silt``, ``clay``, ``porosity`` (``porosity_top`` and
        ``porosity_mid`` both, GLDAS having one porosity) and ``vegetation_class``.
    """
    from casm_cloud.sources._common import expand_paths

    paths = expand_paths(urlpath, storage_options)
    bbox = _bbox(window, bbox, 2 * CELL)
    opened = [(p, _open(p, storage_options)) for p in paths]
    wanted = {k: (names or {}).get(k, v[0]) for k, v in GLDAS_VARIABLES.items()}
    out = {}
    for name, variable in wanted.items():
        found = [(p, ds) for p, ds in opened if variable in ds]
        p, ds = found[0] if found else opened[0]
        da = _gldas_var(ds, p, name, variable, GLDAS_VARIABLES[name][1], bbox)
        out[name] = da.astype(np.float32)
    ds = xr.Dataset(out)
    ds["porosity_top"] = ds["porosity"]
    ds["porosity_mid"] = ds["porosity"]
    for n in ds.data_vars:
        ds[n].attrs = schema.spec("static", n).attrs()
    return ds

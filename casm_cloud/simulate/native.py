"""The simulator's provider-grid variants: ERA5 on 0.25° lat/lon, AMSR-E on EASE-Grid v1.

Both resample a simulated EASE2 window to the provider's grid so that the
demo exercises :mod:`casm_cloud.regrid` on the way back.  EASE2 latitude
depends on the row only and longitude on the column only, and so do the
target grids' (regular lat/lon; the cylindrical EASE-Grid v1), so bilinear
interpolation separates into one 1-D interpolation per axis in index space:
two lazy ``isel`` gathers per axis and weights, chunk-friendly and exact for
this geometry (a general 2-D resampler such as pyresample would be
overkill here).  Points outside the window take the nearest edge cell.

:func:`to_ease2` moves a window to another EASE2 grid the same way (the
provider layout's SMAP granules are on M36, the simulation on M25); with
gaps in the data (swaths) it weights by the valid neighbours, as
:mod:`casm_cloud.regrid` does on the way back.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["EASE1_GLOBAL_25KM", "to_era5_native", "to_ease1", "to_ease2", "covering_window"]

#: NSIDC EASE-Grid global 25 km (NSIDC-0301): EPSG:3410, cols, rows, cell size (m),
#: and the map origin in (col, row) cell-centre coordinates.
EASE1_GLOBAL_25KM = {"epsg": 3410, "cols": 1383, "rows": 586, "cell_m": 25067.525,
                     "origin_col": 691.0, "origin_row": 292.5}


def _axis_weights(target, source_centres):
    """(i0, i1, w) so that value = (1 - w)·src[i0] + w·src[i1], clamped at the edges."""
    src = np.asarray(source_centres, dtype=np.float64)
    increasing = src.size < 2 or src[1] > src[0]
    s = src if increasing else src[::-1]
    pos = np.interp(np.asarray(target, dtype=np.float64), s, np.arange(s.size))
    if not increasing:
        pos = (s.size - 1) - pos
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, src.size - 1)
    return i0, i1, pos - i0


def _resample(ds: xr.Dataset, y_target, x_target, ydim: str, xdim: str, *,
              min_weight: float | None = None) -> xr.Dataset:
    """Bilinear resampling of the data variables of an EASE2 dataset to (ydim, xdim).

    ``min_weight=None``: a NaN neighbour makes the value NaN.  Otherwise the
    valid neighbours are weighted, and values with less than ``min_weight``
    of the weight on valid neighbours are NaN (gaps stay gaps).
    """
    yi0, yi1, wy = _axis_weights(y_target, ds["y"].values)
    xi0, xi1, wx = _axis_weights(x_target, ds["x"].values)
    data = ds[list(ds.data_vars)].drop_vars([c for c in ds.coords if c != "time"])
    wy_ = xr.DataArray(wy, dims=ydim)
    wx_ = xr.DataArray(wx, dims=xdim)

    def bilinear(d):
        rows = d.isel(y=xr.DataArray(yi0, dims=ydim)) * (1 - wy_) + d.isel(
            y=xr.DataArray(yi1, dims=ydim)) * wy_
        return rows.isel(x=xr.DataArray(xi0, dims=xdim)) * (1 - wx_) + rows.isel(
            x=xr.DataArray(xi1, dims=xdim)) * wx_

    if min_weight is None:
        out = bilinear(data)
    else:
        weight = bilinear(data.notnull().astype(np.float32))
        out = (bilinear(data.fillna(0.0)) / weight.where(weight > 0)).where(weight >= min_weight)
    for v in out.data_vars:
        out[v] = out[v].astype(np.float32)
        out[v].attrs = {k: a for k, a in ds[v].attrs.items() if k != "grid_mapping"}
    return out


def to_era5_native(ds: xr.Dataset, *, margin_deg: float = 1.0, resolution: float = 0.25,
                   time_chunk: int | None = None) -> xr.Dataset:
    """ERA5 as ECMWF distributes it: regular lat/lon, latitude decreasing.

    Parameters
    ----------
    ds : xarray.Dataset
        Simulated ERA5 on an EASE2 window.
    margin_deg : float
        Extra degrees around the window.
    resolution : float
        Grid spacing in degrees (0.25 for ERA5).

    Returns
    -------
    xarray.Dataset
        Dims ``time, latitude, longitude`` (longitude -180..180), lazy.
    """
    from pyproj import Transformer

    lat0 = np.floor((float(ds.lat.min()) - margin_deg) / resolution) * resolution
    lat1 = np.ceil((float(ds.lat.max()) + margin_deg) / resolution) * resolution
    lon0 = np.floor((float(ds.lon.min()) - margin_deg) / resolution) * resolution
    lon1 = np.ceil((float(ds.lon.max()) + margin_deg) / resolution) * resolution
    lats = np.round(np.arange(lat1, lat0 - resolution / 2, -resolution), 6)
    lons = np.round(np.arange(max(lon0, -180.0), min(lon1, 180.0 - resolution) + resolution / 2,
                              resolution), 6)
    fwd = Transformer.from_crs("EPSG:4326", "EPSG:6933", always_xy=True)
    _, y = fwd.transform(np.zeros_like(lats), np.clip(lats, -85.0, 85.0))
    x, _ = fwd.transform(lons, np.zeros_like(lons))
    out = _resample(ds, y, x, "latitude", "longitude")
    out = out.assign_coords(
        latitude=("latitude", lats, {"units": "degrees_north", "standard_name": "latitude"}),
        longitude=("longitude", lons, {"units": "degrees_east", "standard_name": "longitude"}),
    )
    out.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("ease2_")}
    out.attrs.update({"grid": f"regular latitude-longitude {resolution} deg (ERA5 native)",
                      "GRIB_gridType": "regular_ll"})
    return _rechunk(out, ("latitude", "longitude"), time_chunk)


def to_ease1(ds: xr.Dataset, *, margin_cells: int = 3, time_chunk: int | None = None,
             min_weight: float | None = None) -> xr.Dataset:
    """AMSR-E as NSIDC-0301 distributes it: the global EASE-Grid v1 at 25 km.

    Parameters
    ----------
    ds : xarray.Dataset
        Simulated AMSR-E on an EASE2 window.
    margin_cells : int
        Extra EASE-Grid v1 cells around the window.
    min_weight : float, optional
        Weight the valid neighbours of a gap (see :func:`to_ease2`); None: a
        NaN neighbour gives NaN.

    Returns
    -------
    xarray.Dataset
        Dims ``time, row, col`` (global EASE-Grid v1 indices) with 2-D
        ``lat``/``lon`` coordinates and a ``crs`` variable (EPSG:3410).
    """
    from pyproj import CRS, Transformer

    g = EASE1_GLOBAL_25KM
    inv = Transformer.from_crs(f"EPSG:{g['epsg']}", "EPSG:4326", always_xy=True)
    fwd1 = Transformer.from_crs("EPSG:4326", f"EPSG:{g['epsg']}", always_xy=True)
    c = g["cell_m"]
    # window corners -> EASE1 row/col range
    lon_w, lon_e = float(ds.lon.min()), float(ds.lon.max())
    lat_s, lat_n = float(ds.lat.min()), float(ds.lat.max())
    xw, yn = fwd1.transform(lon_w, lat_n)
    xe, ys = fwd1.transform(lon_e, lat_s)
    col0 = max(int(np.floor(xw / c + g["origin_col"])) - margin_cells, 0)
    col1 = min(int(np.ceil(xe / c + g["origin_col"])) + margin_cells, g["cols"] - 1)
    row0 = max(int(np.floor(g["origin_row"] - yn / c)) - margin_cells, 0)
    row1 = min(int(np.ceil(g["origin_row"] - ys / c)) + margin_cells, g["rows"] - 1)
    rows = np.arange(row0, row1 + 1)
    cols = np.arange(col0, col1 + 1)
    xs = (cols - g["origin_col"]) * c
    ys_ = (g["origin_row"] - rows) * c
    lon1d, _ = inv.transform(xs, np.zeros_like(xs))
    _, lat1d = inv.transform(np.zeros_like(ys_), ys_)
    fwd2 = Transformer.from_crs("EPSG:4326", "EPSG:6933", always_xy=True)
    _, y2 = fwd2.transform(np.zeros_like(lat1d), lat1d)
    x2, _ = fwd2.transform(lon1d, np.zeros_like(lon1d))
    out = _resample(ds, y2, x2, "row", "col", min_weight=min_weight)
    crs = CRS.from_epsg(g["epsg"])
    crs_attrs = crs.to_cf()
    crs_attrs.update({"spatial_ref": crs.to_wkt(), "epsg_code": f"EPSG:{g['epsg']}"})
    out = out.assign_coords(
        row=("row", rows, {"long_name": "EASE-Grid global 25 km row (0-based)"}),
        col=("col", cols, {"long_name": "EASE-Grid global 25 km column (0-based)"}),
        lat=(("row", "col"), np.broadcast_to(lat1d[:, None], (rows.size, cols.size)).copy(),
             {"units": "degrees_north", "standard_name": "latitude"}),
        lon=(("row", "col"), np.broadcast_to(lon1d[None, :], (rows.size, cols.size)).copy(),
             {"units": "degrees_east", "standard_name": "longitude"}),
        crs=((), np.int32(0), crs_attrs),
    )
    for v in out.data_vars.values():
        v.attrs["grid_mapping"] = "crs"
    out.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("ease2_")}
    out.attrs.update({"grid": "NSIDC EASE-Grid Global 25 km (NSIDC-0301), EPSG:3410",
                      "ease1_grid": "ML", "ease1_cols": g["cols"], "ease1_rows": g["rows"],
                      "ease1_cell_m": c})
    return _rechunk(out, ("row", "col"), time_chunk)


def covering_window(src, grid: str, margin_cells: int = 1):
    """The window of EASE2 ``grid`` whose cells cover window ``src`` plus ``margin_cells``."""
    from casm_cloud.grid import EASE2Grid, GridWindow

    target = EASE2Grid(grid)
    lat = np.array([src.lat[0], src.lat[-1]])
    lon = np.array([src.lon[0], src.lon[-1]])
    rows, cols = target.to_rowcol(lat[:, None], lon[None, :])
    nrows, ncols = target.shape
    r0, r1 = max(int(rows.min()) - margin_cells, 0), min(int(rows.max()) + margin_cells, nrows - 1)
    c0, c1 = max(int(cols.min()) - margin_cells, 0), min(int(cols.max()) + margin_cells, ncols - 1)
    return GridWindow(grid, slice(r0, r1 + 1), slice(c0, c1 + 1))


def to_ease2(ds: xr.Dataset, grid: str, *, margin_cells: int = 1, min_weight: float = 0.5,
             time_chunk: int | None = None) -> xr.Dataset:
    """A simulated EASE2 window on another EASE2 grid (e.g. M25 to SMAP's M36).

    Parameters
    ----------
    ds : xarray.Dataset
        On an EASE2 window (``ease2_*`` attributes, dims ``y``, ``x``).
    grid : str
        Target EASE2 grid name.
    margin_cells : int
        Target cells added around those covering the window (so that
        regridding back to ``ds``'s window has neighbours everywhere).
    min_weight : float
        Least share of the bilinear weight on valid (non-NaN) neighbours.

    Returns
    -------
    xarray.Dataset
        On the covering window of ``grid`` (its ``coords()`` and
        ``identity()``), lazy.
    """
    from casm_cloud.grid import GridWindow

    src = GridWindow.from_attrs(ds.attrs, (ds.sizes["y"], ds.sizes["x"]))
    win = covering_window(src, grid, margin_cells)
    if win == src:
        return ds
    out = _resample(ds, win.y, win.x, "y_new", "x_new", min_weight=min_weight)
    out = out.rename(y_new="y", x_new="x").assign_coords(win.coords())
    out.attrs = {**{k: v for k, v in ds.attrs.items() if not k.startswith("ease2_")},
                 **win.identity()}
    return _rechunk(out, ("y", "x"), time_chunk)


def _rechunk(ds: xr.Dataset, dims, time_chunk):
    chunks = {d: -1 for d in dims}
    if time_chunk:
        chunks["time"] = time_chunk
    return ds.assign({v: ds[v].chunk(chunks) for v in ds.data_vars})

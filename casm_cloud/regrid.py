"""Regridding to an EASE2 window: bilinear for continuous fields, nearest for categories.

Source grids handled (each is rectilinear in its own CRS):

* regular latitude/longitude (ERA5 0.25°, dims ``latitude``/``longitude`` or
  ``lat``/``lon``; latitude in either order; longitude 0..360 or -180..180,
  periodic when the grid is global);
* EASE-Grid v1 global 25 km (NSIDC-0301 AMSR-E; EPSG:3410, 1383×586 cells
  of 25 067.525 m, dims ``row``/``col``, 2-D ``lat``/``lon`` coordinates);
* EASE-Grid 2.0 windows of another resolution (dims ``y``/``x`` in metres,
  ``ease2_grid`` attributes), e.g. SMAP 36 km to the 25 km grid.

Weights are computed once per (source grid, window, method) and cached, then
applied lazily per chunk with :func:`xarray.apply_ufunc`.  We compute our own
sparse weights rather than use pyresample: because every source grid above is
rectilinear in its CRS, the bilinear weights are a closed form of the
fractional source index of each target centre (after one pyproj transform),
exact, and cost microseconds; pyresample's bilinear resampler instead builds
a KD-tree over all source pixels (1 M for global ERA5) and treats the source
as a swath.  Neighbours that are NaN are dropped and the remaining weights
renormalised (at least half the weight must be valid), so coastlines and
swath gaps do not spread NaN.

Public API::

    out = regrid_to_window(era5_native, window)                       # bilinear
    out = regrid_to_window(ds, window, methods={"sand": "nearest"})   # an override

Class codes (the schema's categorical variables, e.g. ``vegetation_class``) are
regridded by nearest neighbour unless ``methods`` says otherwise: an average
of two vegetation classes is no class.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import xarray as xr

from casm_cloud.errors import UserError
from casm_cloud.grid import GridWindow
from casm_cloud.schema import KINDS

__all__ = ["Method", "RegridError", "regrid_to_window", "on_window", "source_box", "EASE1_GLOBAL",
           "ease1_latlon"]

Method = Literal["bilinear", "nearest"]
#: Class-code variables of the data model: nearest neighbour by default.
_CATEGORICAL = frozenset(n for specs in KINDS.values() for part in specs
                         for n, v in part.items() if v.categorical)
_METHODS = ("bilinear", "nearest")

# Share of the bilinear weight that must fall on valid neighbours.
_MIN_WEIGHT = 0.5

#: NSIDC EASE-Grid (v1) global 25 km "ML" grid: columns, rows, cell size (m),
#: map origin column and row (Brodzik & Knowles 2002, NSIDC ``Ml.gpd``).
EASE1_GLOBAL = {"ncols": 1383, "nrows": 586, "cell": 25067.525, "col0": 691.0, "row0": 292.5,
                "crs": "EPSG:3410"}


class RegridError(UserError, ValueError):
    """A source grid that cannot be regridded as asked."""


@dataclass(frozen=True)
class _Axis:
    """A regular 1-D axis: coordinate of index 0, step, size, periodicity."""

    dim: str
    origin: float
    step: float
    size: int
    periodic: bool = False

    def frac(self, v: np.ndarray) -> np.ndarray:
        f = (v - self.origin) / self.step
        if self.periodic:
            f = np.mod(f, self.size)
        return f


@dataclass(frozen=True)
class _Source:
    crs: str  # CRS of the axes ("EPSG:4326" means lat/lon degrees)
    y: _Axis
    x: _Axis
    drop: tuple[str, ...]  # coordinates that belong to the source grid

    @property
    def dims(self) -> tuple[str, str]:
        return (self.y.dim, self.x.dim)


def _regular_axis(ds: xr.Dataset, dim: str, periodic_span: float | None = None) -> _Axis:
    if dim not in ds.coords:
        raise RegridError(f"source dimension {dim!r} has no coordinate")
    v = np.asarray(ds[dim].values, dtype=np.float64)
    if v.size < 2:
        raise RegridError(f"source coordinate {dim!r} has {v.size} value(s); need at least 2")
    d = np.diff(v)
    step = float(np.mean(d))
    if step == 0 or not np.allclose(d, step, rtol=0, atol=1e-4 * abs(step)):
        raise RegridError(f"source coordinate {dim!r} is not regularly spaced (steps {d.min():g} to "
                          f"{d.max():g})")
    periodic = periodic_span is not None and abs(abs(step) * v.size - periodic_span) < abs(step) / 2
    return _Axis(dim, float(v[0]), step, v.size, periodic)


def ease1_latlon(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latitude, longitude of EASE-Grid v1 global 25 km cell centres (2-D, rows × cols).

    Parameters
    ----------
    rows, cols : 1-D arrays of absolute row / column indices.

    Returns
    -------
    lat, lon : (rows, cols) float64 arrays in degrees.
    """
    from pyproj import Transformer

    g = EASE1_GLOBAL
    x = (np.asarray(cols, dtype=np.float64) - g["col0"]) * g["cell"]
    y = (g["row0"] - np.asarray(rows, dtype=np.float64)) * g["cell"]
    xx, yy = np.meshgrid(x, y)
    lon, lat = Transformer.from_crs(g["crs"], "EPSG:4326", always_xy=True).transform(xx, yy)
    return np.asarray(lat), np.asarray(lon)


def _ease1_source(ds: xr.Dataset) -> _Source:
    g = EASE1_GLOBAL
    rows = (np.asarray(ds["row"].values, dtype=np.int64) if "row" in ds.coords
            else np.arange(ds.sizes["row"]) + int(ds.attrs.get("ease1_row_offset", 0)))
    cols = (np.asarray(ds["col"].values, dtype=np.int64) if "col" in ds.coords
            else np.arange(ds.sizes["col"]) + int(ds.attrs.get("ease1_col_offset", 0)))
    for name, idx, n in (("row", rows, g["nrows"]), ("col", cols, g["ncols"])):
        if idx.size > 1 and not np.all(np.diff(idx) == 1):
            raise RegridError(f"EASE-Grid v1 source: {name} indices are not consecutive")
        if idx[0] < 0 or idx[-1] >= n:
            raise RegridError(f"EASE-Grid v1 source: {name} indices {idx[0]}..{idx[-1]} are outside "
                              f"0..{n - 1}")
    # The geometry is the NSIDC grid definition; a dataset carrying its own
    # 2-D lat/lon must agree with it (a check, not a second source of truth).
    if "lat" in ds.coords and "lon" in ds.coords and ds["lat"].ndim == 2:
        i = np.linspace(0, rows.size - 1, min(rows.size, 5)).astype(int)
        j = np.linspace(0, cols.size - 1, min(cols.size, 5)).astype(int)
        lat, lon = ease1_latlon(rows[i], cols[j])
        have_lat = np.asarray(ds["lat"].transpose("row", "col").values)[np.ix_(i, j)]
        have_lon = np.asarray(ds["lon"].transpose("row", "col").values)[np.ix_(i, j)]
        dlon = np.abs((have_lon - lon + 180.0) % 360.0 - 180.0)
        if not (np.allclose(have_lat, lat, atol=1e-3) and np.all(dlon < 1e-3)):
            raise RegridError(
                "EASE-Grid v1 source: its lat/lon coordinates are not the NSIDC global 25 km grid "
                f"(cell {g['cell']} m, origin col {g['col0']}, row {g['row0']}) at the given "
                "row/col indices"
            )
    y = _Axis("row", (g["row0"] - rows[0]) * g["cell"], -g["cell"], rows.size)
    x = _Axis("col", (cols[0] - g["col0"]) * g["cell"], g["cell"], cols.size)
    return _Source(g["crs"], y, x, ("lat", "lon", "row", "col"))


def _source_grid(ds: xr.Dataset) -> _Source:
    dims = set(ds.dims)
    for ydim, xdim in (("latitude", "longitude"), ("lat", "lon")):
        if {ydim, xdim} <= dims:
            return _Source("EPSG:4326", _regular_axis(ds, ydim), _regular_axis(ds, xdim, 360.0),
                           (ydim, xdim))
    if {"row", "col"} <= dims:
        return _ease1_source(ds)
    if {"y", "x"} <= dims and "ease2_grid" in ds.attrs:
        return _Source("EPSG:6933", _regular_axis(ds, "y"), _regular_axis(ds, "x"),
                       ("y", "x", "lat", "lon", "crs"))
    raise RegridError(
        f"cannot tell the source grid from dimensions {sorted(map(str, dims))}: expected "
        "latitude/longitude (regular lat/lon), row/col (EASE-Grid v1) or y/x with ease2_grid "
        "attributes (EASE-Grid 2.0)"
    )


@lru_cache(maxsize=64)
def _weights(src: _Source, window: GridWindow, method: str):
    """(index (p, k) into the source box, weight (p, k), y slice, x slice) of the box."""
    lat2, lon2 = np.meshgrid(window.lat, window.lon, indexing="ij")
    if src.crs == "EPSG:4326":
        # Target longitudes into the source's convention (0..360 or -180..180).
        lo = min(src.x.origin, src.x.origin + src.x.step * (src.x.size - 1)) - abs(src.x.step) / 2
        xs, ys = lo + np.mod(lon2.ravel() - lo, 360.0), lat2.ravel()
    else:
        from pyproj import Transformer

        xs, ys = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True).transform(
            lon2.ravel(), lat2.ravel())
    fy, fx = src.y.frac(np.asarray(ys)), src.x.frac(np.asarray(xs))
    if method == "nearest":
        iy = np.floor(fy + 0.5).astype(np.int64)[:, None]
        ix = np.floor(fx + 0.5).astype(np.int64)[:, None]
        w = np.ones_like(iy, dtype=np.float64)
    else:
        y0, x0 = np.floor(fy), np.floor(fx)
        ty, tx = fy - y0, fx - x0
        y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
        iy = np.stack([y0, y0, y0 + 1, y0 + 1], axis=1)
        ix = np.stack([x0, x0 + 1, x0, x0 + 1], axis=1)
        w = np.stack([(1 - ty) * (1 - tx), (1 - ty) * tx, ty * (1 - tx), ty * tx], axis=1)
    if src.x.periodic:
        ix = np.mod(ix, src.x.size)
    ok = (iy >= 0) & (iy < src.y.size) & (ix >= 0) & (ix < src.x.size) & (w > 0)
    if not ok.any():
        raise RegridError(f"{window!r} lies entirely outside the source grid")
    # Read only the box of source cells the window needs (the whole width when
    # a periodic longitude wraps inside the window).
    ys_ = slice(int(iy[ok].min()), int(iy[ok].max()) + 1)
    xs_ = slice(int(ix[ok].min()), int(ix[ok].max()) + 1)
    if src.x.periodic and np.any(np.diff(np.unique(ix[ok])) > src.x.size // 2):
        xs_ = slice(0, src.x.size)
    nbx = xs_.stop - xs_.start
    index = np.where(ok, (iy - ys_.start) * nbx + (ix - xs_.start), -1).astype(np.int64)
    return index, np.where(ok, w, 0.0), ys_, xs_


def _apply_block(block: np.ndarray, index: np.ndarray, weight: np.ndarray, method: str,
                 shape: tuple[int, int]) -> np.ndarray:
    lead = block.shape[:-2]
    flat = block.reshape(-1, block.shape[-2] * block.shape[-1])
    if method == "nearest":
        # Exact values (categories survive); outside cells become NaN.
        idx = index[:, 0]
        out = np.take(flat, np.maximum(idx, 0), axis=1)
        if (idx < 0).any():
            out = out.astype(np.result_type(out.dtype, np.float32))
            out[:, idx < 0] = np.nan
    else:
        from casm_cloud.kernels._regrid import apply_weights

        src = flat if flat.dtype in (np.float32, np.float64) else flat.astype(np.float32)
        out = apply_weights(np.ascontiguousarray(src), index, weight, _MIN_WEIGHT)
    return out.reshape(*lead, *shape)


def _out_dtype(dtype: np.dtype, method: str, any_outside: bool) -> np.dtype:
    if method == "bilinear":
        return np.dtype(np.float32)
    return np.result_type(dtype, np.float32) if any_outside else np.dtype(dtype)


def regrid_to_window(ds: xr.Dataset, window: GridWindow, *, method: Method = "bilinear",
                     methods: dict[str, str] | None = None) -> xr.Dataset:
    """Regrid every gridded variable of ``ds`` onto an EASE2 window, lazily.

    Parameters
    ----------
    ds : xarray.Dataset
        On a regular lat/lon grid, EASE-Grid v1 25 km, or an EASE2 grid (see
        the module docstring); any leading dimensions (``time``) are kept and
        chunked as in the source.
    window : GridWindow
        Target window of a named EASE2 grid.
    method : {"bilinear", "nearest"}
        Method of the continuous fields: bilinear (NaN neighbours dropped,
        weights renormalised) or nearest (values kept exactly).  The schema's
        categorical variables (class codes) are always nearest.
    methods : dict of str to str, optional
        Per-variable overrides, e.g. ``{"sand": "nearest"}``.

    Returns
    -------
    xarray.Dataset
        Dims ``(..., y, x)`` with ``window.coords()``, a ``crs`` coordinate,
        attributes of ``ds`` plus ``window.identity()``.  Bilinear outputs
        are float32; variables without both source spatial dimensions are
        kept as they are.

    Raises
    ------
    RegridError
        For an unknown method or variable in ``methods``, an unrecognised or
        irregular source grid, or a window outside the source.
    """
    methods = dict(methods or {})
    for name, m in [("method", method), *methods.items()]:
        if m not in _METHODS:
            raise RegridError(f"regrid method {m!r} for {name}: expected one of {_METHODS}")
    unknown = sorted(set(methods) - set(ds.data_vars))
    if unknown:
        raise RegridError(f"methods names variables {unknown} that are not in the dataset "
                          f"(have {sorted(ds.data_vars)})")
    src = _source_grid(ds)
    ydim, xdim = src.dims
    ny, nx = window.shape
    out = xr.Dataset(coords=window.coords())
    for name, da in ds.data_vars.items():
        if not {ydim, xdim} <= set(da.dims):
            out[name] = da.drop_vars([c for c in da.coords if c in src.drop], errors="ignore")
            continue
        m = methods.get(name, "nearest" if name in _CATEGORICAL else method)
        index, weight, ys_, xs_ = _weights(src, window, m)
        sub = da.drop_vars([c for c in da.coords if set(ds[c].dims) & {ydim, xdim}])
        sub = sub.isel({ydim: ys_, xdim: xs_}).transpose(..., ydim, xdim)
        if sub.chunks is not None:
            sub = sub.chunk({ydim: -1, xdim: -1})
        res = xr.apply_ufunc(
            _apply_block, sub,
            kwargs={"index": index, "weight": weight, "method": m, "shape": (ny, nx)},
            input_core_dims=[[ydim, xdim]], output_core_dims=[["y", "x"]],
            exclude_dims={ydim, xdim}, dask="parallelized",
            output_dtypes=[_out_dtype(da.dtype, m, bool((index < 0).any()))],
            dask_gufunc_kwargs={"output_sizes": {"y": ny, "x": nx}},
            keep_attrs=True,
        )
        res.attrs["regrid_method"] = m
        out[name] = res
    out = out.assign_coords(crs=xr.DataArray(np.int32(0), attrs=window.crs_attrs()))
    attrs = {k: v for k, v in ds.attrs.items()
             if not k.startswith(("ease1_", "ease2_", "geospatial_"))}
    out.attrs = {**attrs, **window.identity()}
    return out


def source_box(ds: xr.Dataset, window: GridWindow, *, method: Method = "bilinear",
               name: str = "source") -> dict[str, slice]:
    """The source cells ``window`` needs: ``{ydim: slice, xdim: slice}`` for ``ds.isel``.

    Computed from coordinates only, so an adapter can cut a store opened
    without dask to the box before it builds dask arrays over it (the cost of
    an open follows the window, not the store).  Regridding the box gives
    what regridding the whole source gives.  On the window's own EASE2 grid
    the box is the window itself.

    Raises
    ------
    RegridError
        If ``window`` lies outside the source grid (named ``name``), or the
        source grid is not one :func:`regrid_to_window` reads.
    """
    if {"y", "x"} <= set(ds.dims) and any(k.startswith("ease2_") for k in ds.attrs):
        src = GridWindow.from_attrs(ds.attrs, (ds.sizes["y"], ds.sizes["x"]))
        if src.name == window.name:
            r0 = window.row_slice.start - src.row_slice.start
            c0 = window.col_slice.start - src.col_slice.start
            if r0 < 0 or c0 < 0 or r0 + window.shape[0] > src.shape[0] or \
                    c0 + window.shape[1] > src.shape[1]:
                raise RegridError(f"{name} ({src!r}) does not cover the window {window!r}")
            return {"y": slice(r0, r0 + window.shape[0]), "x": slice(c0, c0 + window.shape[1])}
    src = _source_grid(ds)
    try:
        _, _, ys_, xs_ = _weights(src, window, method)
    except RegridError as err:
        raise RegridError(f"{name}: {err}") from None
    return {src.y.dim: ys_, src.x.dim: xs_}


def on_window(ds: xr.Dataset, window: GridWindow, *, name: str = "source") -> xr.Dataset:
    """``ds`` on ``window``: cut out when on the same EASE2 grid, regridded otherwise.

    Parameters
    ----------
    ds : xarray.Dataset
        A canonical source: on an EASE2 window (``ease2_*`` attributes), or on
        a grid :func:`regrid_to_window` reads.
    window : GridWindow
    name : str
        Named in errors (the catalog entry).

    Raises
    ------
    RegridError
        If the source's own window of the same grid does not cover ``window``.
    """
    if "y" not in ds.dims or "x" not in ds.dims:
        return regrid_to_window(ds, window)
    if ds.sizes["y"] == window.shape[0] and ds.sizes["x"] == window.shape[1] and np.allclose(
            ds.y.values, window.y) and np.allclose(ds.x.values, window.x):
        return ds
    src = GridWindow.from_attrs(ds.attrs, (ds.sizes["y"], ds.sizes["x"]))
    if src.name != window.name:
        return regrid_to_window(ds, window)
    r0 = window.row_slice.start - src.row_slice.start
    c0 = window.col_slice.start - src.col_slice.start
    if r0 < 0 or c0 < 0 or r0 + window.shape[0] > src.shape[0] or c0 + window.shape[1] > src.shape[1]:
        raise RegridError(f"{name} ({src!r}) does not cover the recipe window {window!r}")
    out = ds.isel(y=slice(r0, r0 + window.shape[0]), x=slice(c0, c0 + window.shape[1]))
    out.attrs.update(window.identity())
    return out

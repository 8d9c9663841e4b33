"""The simulated static maps as the files SoMo.ml's static sources distribute.

* ``etopo1/ETOPO1_Ice_g_gmt4.grd``: NOAA NCEI's ETOPO1 layout (GMT4 netCDF,
  grid-registered 1-arc-minute nodes ``x``, ``y``, integer metres ``z``) over the
  window and a margin.  The nodes of each simulated cell are its ``elevation``
  plus its ``elevation_std`` times one fixed 15 × 15 pattern of mean 0 and
  standard deviation 1, so the block reduction of :func:`casm_cloud.sources.statics.open_etopo1`
  gives the simulated cell values back (to the metre rounding of ``z``) on a
  window of ERA5's 0.25° cells, whose 15 × 15 node blocks are exactly these;
* ``gldas/GLDASp4_{soilfraction,porosity,domveg}_025d.nc4``: the GLDAS static
  files (0.25° cells centred at ``k * 0.25 + 0.125``, one time step, fill
  value -9999), the simulated maps interpolated to those centres (bilinear;
  the vegetation class by nearest neighbour).  GLDAS has one porosity: the
  simulated topsoil's.

What the round trip loses against the canonical ``static`` store: ERA5's
cells are half a cell off GLDAS's, so the fractions come back smoothed over
neighbouring cells and a vegetation class may move by a cell; the subsoil
porosity is the topsoil's (docs/real_data.md, "Static maps").
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from casm_cloud.simulate.native import _axis_weights
from casm_cloud.simulate.provider._files import netcdf_bytes, put

__all__ = ["write_statics", "ETOPO1_PATH", "GLDAS_FILES", "PATTERN"]

ETOPO1_PATH = "etopo1/ETOPO1_Ice_g_gmt4.grd"
#: GLDAS file -> {GLDAS variable: simulated static variable}
GLDAS_FILES = {
    "gldas/GLDASp4_soilfraction_025d.nc4": {"GLDAS_soilfraction_sand": "sand",
                                            "GLDAS_soilfraction_silt": "silt",
                                            "GLDAS_soilfraction_clay": "clay"},
    "gldas/GLDASp4_porosity_025d.nc4": {"GLDAS_porosity": "porosity_top"},
    "gldas/GLDASp4_domveg_025d.nc4": {"GLDAS_domveg": "vegetation_class"},
}
_CELL, _NODES = 0.25, 15
_MARGIN = 1.0  # degrees of file around the window (the readers take a margin of 0.5°)
_FILL = np.float32(-9999.0)


def _pattern() -> np.ndarray:
    p = np.random.default_rng(20_200_101).standard_normal((_NODES, _NODES))
    return (p - p.mean()) / p.std()


#: The sub-grid elevation pattern of every cell (mean 0, population std 1).
PATTERN = _pattern()


def _nearest(target: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the centre nearest each target (clamped at the edges)."""
    i0, i1, w = _axis_weights(target, centres)
    return np.where(w > 0.5, i1, i0)


def _place(cell: np.ndarray) -> np.ndarray:
    """Each node's place in its cell's run of nodes (0 at the cell's first node)."""
    cells, first = np.unique(cell, return_index=True)
    return np.arange(cell.size) - first[np.searchsorted(cells, cell)]


def _interp(values: np.ndarray, lat_w, lon_w) -> np.ndarray:
    """Separable bilinear interpolation of ``values (y, x)`` with per-axis weights."""
    (yi0, yi1, wy), (xi0, xi1, wx) = lat_w, lon_w
    rows = values[yi0] * (1 - wy)[:, None] + values[yi1] * wy[:, None]
    return rows[:, xi0] * (1 - wx)[None] + rows[:, xi1] * wx[None]


def _etopo1(static: xr.Dataset) -> xr.Dataset:
    lat, lon = static["lat"].values, static["lon"].values
    step = 1.0 / 60.0
    ys = np.arange(np.floor((lat.min() - _MARGIN) / step),
                   np.ceil((lat.max() + _MARGIN) / step) + 1) * step
    xs = np.arange(np.floor((lon.min() - _MARGIN) / step),
                   np.ceil((lon.max() + _MARGIN) / step) + 1) * step
    ci, cj = _nearest(ys, lat), _nearest(xs, lon)
    pi, pj = _place(ci), _place(cj)
    mean = static["elevation"].values.astype(np.float64)[np.ix_(ci, cj)]
    std = static["elevation_std"].values.astype(np.float64)[np.ix_(ci, cj)]
    z = np.round(mean + std * PATTERN[np.ix_(pi % _NODES, pj % _NODES)]).astype(np.int32)
    return xr.Dataset(
        {"z": (("y", "x"), z, {"long_name": "z", "actual_range": [int(z.min()), int(z.max())]})},
        coords={"x": ("x", xs, {"long_name": "Longitude", "units": "degrees_east"}),
                "y": ("y", ys, {"long_name": "Latitude", "units": "degrees_north"})},
        attrs={"Conventions": "COARDS/CF-1.0",
               "title": "ETOPO1_Ice_g_gmt4.grd (simulated)",
               "node_offset": np.int32(0)})


def _gldas(static: xr.Dataset) -> dict[str, xr.Dataset]:
    lat, lon = static["lat"].values, static["lon"].values
    k = np.arange(np.floor((lat.min() - _MARGIN) / _CELL), np.ceil((lat.max() + _MARGIN) / _CELL))
    glat = k * _CELL + _CELL / 2
    k = np.arange(np.floor((lon.min() - _MARGIN) / _CELL), np.ceil((lon.max() + _MARGIN) / _CELL))
    glon = k * _CELL + _CELL / 2
    lat_w, lon_w = _axis_weights(glat, lat), _axis_weights(glon, lon)
    coords = {"time": ("time", np.array(["2000-01-01"], dtype="datetime64[ns]")),
              "lat": ("lat", glat, {"units": "degrees_north", "standard_name": "latitude"}),
              "lon": ("lon", glon, {"units": "degrees_east", "standard_name": "longitude"})}
    out = {}
    for path, names in GLDAS_FILES.items():
        data = {}
        for gldas_name, sim_name in names.items():
            v = static[sim_name].values.astype(np.float64)
            if sim_name == "vegetation_class":  # a class: nearest, never averaged
                v = v[np.ix_(_nearest(glat, lat), _nearest(glon, lon))]
            else:
                v = _interp(v, lat_w, lon_w)
            data[gldas_name] = (("time", "lat", "lon"), v[None].astype(np.float32),
                                {"units": "1" if sim_name != "porosity_top" else "m3/m3",
                                 "long_name": gldas_name.replace("GLDAS_", "").replace("_", " ")})
        out[path] = xr.Dataset(data, coords=coords,
                               attrs={"title": f"GLDAS {path.split('_')[1]} 0.25 degree "
                                               "(simulated)", "missing_value": _FILL})
    return out


def write_statics(static: xr.Dataset, out: str,
                  storage_options: Mapping | None = None) -> dict[str, tuple]:
    """Write the ETOPO1 and GLDAS static files of the simulated ``static`` maps under ``out``.

    Returns
    -------
    dict
        Catalog entries ``etopo1`` (adapter ``etopo1``) and ``gldas_static``
        (adapter ``gldas_static``): entry name -> ``(adapter, relative URL, options,
        description)``.
    """
    static = static.load()
    put(out, ETOPO1_PATH, netcdf_bytes(_etopo1(static)), storage_options)
    for path, ds in _gldas(static).items():
        enc = {v: {"_FillValue": _FILL, "zlib": True} for v in ds.data_vars}
        put(out, path, netcdf_bytes(ds, enc), storage_options)
    return {
        "etopo1": ("etopo1", ETOPO1_PATH, {},
                   "ETOPO1 1-arc-minute elevations (NOAA NCEI GMT4 netCDF layout), simulated"),
        "gldas_static": ("gldas_static", "gldas/GLDASp4_*_025d.nc4", {},
                         "GLDAS 0.25 degree static soil fractions, porosity and dominant "
                         "vegetation (netCDF), simulated"),
    }

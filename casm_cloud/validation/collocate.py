"""Match stations to a product: nearest EASE2 cell, or nearest time series.

Three product layouts are recognised (by their dimensions, not by name):

* a gridded EASE2 window (``y``, ``x`` and the ``ease2_*`` attributes of
  :meth:`casm_cloud.grid.GridWindow.identity`): the station's cell comes
  from :meth:`~casm_cloud.grid.GridWindow.to_rowcol`, the grid's own
  forward projection, so it is exact on the EASE2 cell boundaries;
* a regular lat/lon grid (1-D ``lat`` and ``lon`` coordinates along two
  dimensions): nearest row and column, half a cell of slack at the edges;
* time series per location (``location`` dimension with per-location
  ``lat``/``lon``, e.g. :func:`casm_cloud.sources.tuw_ts.open_tuw_ts`):
  nearest location by great-circle distance within ``max_distance``.

Several stations in one cell stay separate rows: the product series is
gathered once per station with a vectorised (pointwise) selection, lazily.
A station that cannot be matched is removed with a reason, never silently.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.errors import UserError
from casm_cloud.grid import GridError, GridWindow

__all__ = ["collocate", "CollocationError", "EARTH_RADIUS_M"]

#: mean Earth radius (IUGG), metres
EARTH_RADIUS_M = 6_371_008.8


class CollocationError(UserError, ValueError):
    """No station could be matched to the product, or its layout is not one collocation knows."""


def collocate(product: xr.DataArray, lat, lon, *, max_distance: float = 30_000.0
              ) -> tuple[xr.DataArray, pd.DataFrame]:
    """The product's series at each station's nearest cell or location.

    Parameters
    ----------
    product : xarray.DataArray
        With a ``time`` dimension and one of the spatial layouts above.
    lat, lon : array_like
        Station coordinates in degrees, one per station.
    max_distance : float
        Largest station-to-location distance (m) for time-series products
        (default 30 km: the half-diagonal of a 36 km SMAP cell is 25.5 km).

    Returns
    -------
    series : xarray.DataArray
        ``(station, time)``, lazy if ``product`` is, one row per input
        station (NaN rows for stations that could not be matched).
    matches : pandas.DataFrame
        One row per station: ``matched`` (bool), ``reason`` (why not),
        ``distance_km`` (to the cell centre / location), and ``row``/``col``
        or ``location`` indices.

    Raises
    ------
    CollocationError
        If ``product`` has no ``time`` dimension, or its layout is not one of
        the three above.
    """
    if "time" not in product.dims:
        raise CollocationError(
            f"product {product.name!r} has no 'time' dimension (dims: {product.dims}); "
            "validation needs a time series at each station"
        )
    lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    if "location" in product.dims:
        idx, table = _match_locations(product, lat, lon, max_distance)
        indexers = {"location": idx}
    elif {"y", "x"} <= set(product.dims) and "ease2_grid" in product.attrs:
        (rows, cols), table = _match_ease2(product, lat, lon)
        indexers = {"y": rows, "x": cols}
    else:
        (rows, cols), dims, table = _match_latlon(product, lat, lon)
        indexers = {dims[0]: rows, dims[1]: cols}
    ok = table["matched"].to_numpy()
    safe = {d: xr.DataArray(np.where(ok, i, 0), dims="station") for d, i in indexers.items()}
    series = product.isel(safe).where(xr.DataArray(ok, dims="station"))
    drop = [c for c in series.coords if c not in ("time",) and "time" not in series[c].dims]
    series = series.drop_vars(drop).transpose("station", "time")
    return series, table


def _match_locations(product: xr.DataArray, lat, lon, max_distance):
    from scipy.spatial import cKDTree

    for c in ("lat", "lon"):
        if c not in product.coords or product[c].dims != ("location",):
            raise CollocationError(f"time-series product needs a {c!r} coordinate along 'location'")
    plat = np.asarray(product["lat"].values, dtype=np.float64)
    plon = np.asarray(product["lon"].values, dtype=np.float64)
    # nearest neighbour on the unit sphere (chord length), converted to a
    # great-circle distance; a KD-tree scales to global location counts
    tree = cKDTree(_unit_vectors(plat, plon))
    chord, idx = tree.query(_unit_vectors(lat, lon))
    dist = 2.0 * EARTH_RADIUS_M * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))
    matched = dist <= max_distance
    reason = np.where(matched, "", [
        f"outside the product: nearest location {d / 1000:.1f} km away > "
        f"max_distance {max_distance / 1000:.1f} km" for d in dist])
    table = pd.DataFrame({"matched": matched, "reason": reason, "distance_km": dist / 1000.0,
                          "location": idx})
    if "location_id" in product.coords:
        table["location_id"] = product["location_id"].values[idx]
    return idx, table


def _unit_vectors(lat, lon) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def _haversine(lat1, lon1, lat2, lon2) -> np.ndarray:
    la1, la2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((la2 - la1) / 2) ** 2 + np.cos(la1) * np.cos(la2) * np.sin(
        np.radians(lon2 - lon1) / 2) ** 2
    return 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _match_ease2(product: xr.DataArray, lat, lon):
    win = GridWindow.from_attrs(product.attrs, (product.sizes["y"], product.sizes["x"]))
    rows = np.zeros(lat.size, dtype=np.int64)
    cols = np.zeros(lat.size, dtype=np.int64)
    matched = np.zeros(lat.size, dtype=bool)
    reason = []
    for i, (la, lo) in enumerate(zip(lat, lon, strict=True)):
        try:
            r, c = win.to_rowcol(la, lo)
        except GridError:
            reason.append(f"outside the product's grid {win!r} (lat={la:.4f}, lon={lo:.4f})")
            continue
        rows[i], cols[i], matched[i] = int(r), int(c), True
        reason.append("")
    dist = np.where(matched, _haversine(lat, lon, win.lat[rows], win.lon[cols]), np.nan)
    table = pd.DataFrame({"matched": matched, "reason": reason, "distance_km": dist / 1000.0,
                          "row": rows, "col": cols})
    return (rows, cols), table


def _match_latlon(product: xr.DataArray, lat, lon):
    if "lat" not in product.coords or "lon" not in product.coords \
            or product["lat"].ndim != 1 or product["lon"].ndim != 1:
        raise CollocationError(
            f"product {product.name!r} (dims {product.dims}): expected an EASE2 window "
            "(y, x with ease2_* attributes), 1-D 'lat' and 'lon' coordinates, or time series "
            "along 'location' with per-location lat/lon"
        )
    dims = (product["lat"].dims[0], product["lon"].dims[0])
    idx_out, slack_ok = [], np.ones(lat.size, dtype=bool)
    for axis, pts in zip(("lat", "lon"), (lat, lon), strict=True):
        centres = np.asarray(product[axis].values, dtype=np.float64)
        half = np.abs(np.diff(centres)).max() / 2.0 if centres.size > 1 else 0.5
        j = np.abs(pts[:, None] - centres[None, :]).argmin(axis=1)
        slack_ok &= np.abs(pts - centres[j]) <= half
        idx_out.append(j)
    rows, cols = idx_out
    reason = np.where(slack_ok, "", [f"outside the product's lat/lon grid (lat={a:.4f}, "
                                     f"lon={b:.4f})" for a, b in zip(lat, lon, strict=True)])
    dist = _haversine(lat, lon, product["lat"].values[rows], product["lon"].values[cols])
    table = pd.DataFrame({"matched": slack_ok, "reason": reason,
                          "distance_km": np.where(slack_ok, dist / 1000.0, np.nan),
                          "row": rows, "col": cols})
    return (rows, cols), dims, table

"""Combining sensor-era products into one record, and the published CASM layout.

CASM (Skulovich & Gentine 2023) predicts the SMOS years with NN_SMOS→SMAP and
the AMSR-E years with the transfer-learned NN_AMSR-E; where both exist (the
overlap) the record is their mean.  ``source`` says which network made each
value.  Both functions here are lazy.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["SOURCE_CODES", "merge_eras", "to_casm_layout"]

#: ``source`` values: which network(s) made each value.
SOURCE_CODES = {"none": 0, "nn_amsre": 1, "nn_smos": 2, "mean_nn_amsre_nn_smos": 3}

_VARS = ("sm", "sm_residual", "seasonal_cycle", "structural_uncertainty", "data_uncertainty")


def merge_eras(eras: dict[str, xr.Dataset]) -> xr.Dataset:
    """Merge per-era products into one record (lazy).

    Parameters
    ----------
    eras : dict
        ``{"nn_amsre": ds, "nn_smos": ds}`` (either may be missing), each a
        product on the same grid and anchored time bins.

    Returns
    -------
    xarray.Dataset
        The product variables over the union of the time bins; in the
        overlap, the mean of both networks; plus ``source`` (int8).

    Raises
    ------
    ValueError
        If no era is given or the grids differ.
    """
    known = [k for k in ("nn_amsre", "nn_smos") if k in eras]
    unknown = set(eras) - set(known)
    if unknown or not known:
        raise ValueError(f"merge_eras: expected eras 'nn_amsre' and/or 'nn_smos', got {sorted(eras)}")
    parts = [eras[k][list(_VARS)] for k in known]
    for k, ds in zip(known[1:], parts[1:], strict=True):
        if not (np.array_equal(ds.y, parts[0].y) and np.array_equal(ds.x, parts[0].x)):
            raise ValueError(f"merge_eras: era {k!r} is on another grid than {known[0]!r}")
    times = np.unique(np.concatenate([p.time.values for p in parts]))
    aligned = [p.reindex(time=times) for p in parts]
    valid = [p["sm"].notnull() for p in aligned]
    stacked = xr.concat(aligned, dim="era")
    out = stacked.mean("era", skipna=True)
    for name in _VARS:
        out[name].attrs = parts[0][name].attrs
    code = xr.zeros_like(valid[0], dtype=np.int8)
    for k, v in zip(known, valid, strict=True):
        code = code + v.astype(np.int8) * np.int8(SOURCE_CODES[k])
    out["source"] = code.assign_attrs(
        long_name="network that made the value",
        flag_values=np.array(list(SOURCE_CODES.values()), dtype=np.int8),
        flag_meanings=" ".join(SOURCE_CODES),
    )
    out.attrs = {k: v for k, v in parts[0].attrs.items() if not k.startswith("casm_")}
    out.attrs["title"] = "CASM soil moisture (casm_cloud)"
    return out


def to_casm_layout(product: xr.Dataset) -> xr.Dataset:
    """The published CASM layout: dims ``date, lat, lon`` and CASM names.

    On an EASE2 grid latitude is constant along rows and longitude along
    columns, so ``y``/``x`` map one to one onto ``lat``/``lon``.
    """
    names = {"sm": "CASM_soil_moisture", "seasonal_cycle": "seasonal_cycle",
             "structural_uncertainty": "structural_uncertainty",
             "data_uncertainty": "data_uncertainty"}
    missing = [v for v in names if v not in product]
    if missing:
        raise ValueError(f"to_casm_layout: product lacks variables {missing}")
    out = product[list(names)].rename(names)
    out = out.drop_vars([c for c in out.coords if c not in ("time", "y", "x", "lat", "lon")])
    lat = product["lat"].values
    lon = product["lon"].values
    out = out.drop_vars(["lat", "lon"], errors="ignore")
    out = out.rename({"time": "date", "y": "lat", "x": "lon"}).assign_coords(
        lat=("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        lon=("lon", lon, {"units": "degrees_east", "standard_name": "longitude"}),
    )
    out.attrs = {"title": "CASM: Consistent AI-based Soil Moisture (casm_cloud export)",
                 "grid": str(product.attrs.get("ease2_grid", "EASE2")),
                 "references": "Skulovich, O. & Gentine, P. (2023), Sci. Data 10, 154"}
    return out

"""Combining sensor-era products into one record, and the published CASM layout.

CASM (Skulovich & Gentine 2023) predicts the SMOS years with NN_SMOS→SMAP and
the AMSR-E years with the transfer-learned NN_AMSR-E; where both exist (the
overlap) the record is their mean.  ``source`` says which network made each
value.  :func:`merge_eras` and :func:`to_casm_layout` are lazy;
:func:`export_casm` writes the published layout (one netCDF file per year)
through fsspec; the recipe's export stage and ``casm-cloud export-casm``
both call it (``docs/architecture.md``, "The CASM recipe").
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import xarray as xr

from casm_cloud import storage
from casm_cloud.errors import UserError

__all__ = ["SOURCE_CODES", "MergeError", "merge_eras", "to_casm_layout", "export_casm",
           "PRODUCT_VARIABLES"]

#: ``source`` values: which network(s) made each value.
SOURCE_CODES = {"none": 0, "nn_amsre": 1, "nn_smos": 2, "mean_nn_amsre_nn_smos": 3}

_VARS = ("sm", "sm_residual", "seasonal_cycle", "structural_uncertainty", "data_uncertainty")

#: product variable -> its name in the published CASM layout
_CASM_NAMES = {"sm": "CASM_soil_moisture", "seasonal_cycle": "seasonal_cycle",
               "structural_uncertainty": "structural_uncertainty",
               "data_uncertainty": "data_uncertainty"}

#: variables a product must have to be exported
PRODUCT_VARIABLES = tuple(_CASM_NAMES)


class MergeError(UserError, ValueError):
    """Eras that cannot be merged, or a dataset that is not a product."""


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
    MergeError
        If no era is given or the grids differ.
    """
    known = [k for k in ("nn_amsre", "nn_smos") if k in eras]
    unknown = set(eras) - set(known)
    if unknown or not known:
        raise MergeError(f"merge_eras: expected eras 'nn_amsre' and/or 'nn_smos', got {sorted(eras)}")
    parts = [eras[k][list(_VARS)] for k in known]
    for k, ds in zip(known[1:], parts[1:], strict=True):
        if not (np.array_equal(ds.y, parts[0].y) and np.array_equal(ds.x, parts[0].x)):
            raise MergeError(f"merge_eras: era {k!r} is on another grid than {known[0]!r}")
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

    Raises
    ------
    MergeError
        If the product lacks a variable of the layout, the ``time, y, x``
        dimensions or 1-D ``lat``/``lon`` coordinates along ``y``/``x``.
    """
    problem = _not_a_product(product)
    if problem:
        raise MergeError(f"to_casm_layout: the dataset is not a product: {problem}")
    names = _CASM_NAMES
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
                 "references": "Skulovich, O. & Gentine, P. (2023), Sci. Data 10, 154",
                 # which precision made the values, and its measured difference from fp32
                 **{k: v for k, v in product.attrs.items()
                    if k.startswith("casm_precision") and v is not None}}
    return out


def _not_a_product(ds: xr.Dataset) -> str | None:
    """Why ``ds`` is not a product that :func:`to_casm_layout` can take (None: it is)."""
    missing = [v for v in PRODUCT_VARIABLES if v not in ds.data_vars]
    if missing:
        return f"it lacks the variable(s) {missing} (has {sorted(map(str, ds.data_vars))})"
    dims = {str(d) for v in PRODUCT_VARIABLES for d in ds[v].dims}
    if dims != {"time", "y", "x"}:
        return f"its variables have dimensions {sorted(dims)}, not time, y, x"
    for c, d in (("lat", "y"), ("lon", "x")):
        if c not in ds.coords or ds[c].dims != (d,):
            return f"it has no 1-D {c!r} coordinate along {d!r}"
    return None


def export_casm(product_url: str, out: str, storage_options: Mapping | None = None, *,
                years: Collection[int] | None = None) -> list[str]:
    """Write the published CASM layout, one netCDF file per year, under ``out``.

    Each year is computed and written on its own (into a local scratch file,
    then copied through fsspec), so memory is bounded by one year of the
    window.  The product is checked before anything is written.

    Parameters
    ----------
    product_url : str
        The product Zarr store (the merge stage's output): local path or URL.
    out : str
        Output folder: local path or fsspec URL; gets ``CASM_SM_<year>.nc``.
    storage_options : mapping, optional
        fsspec options for ``product_url`` and ``out``.
    years : collection of int, optional
        Export only these years (default: every year of the product).

    Returns
    -------
    list of str
        URLs of the files written, in year order.

    Raises
    ------
    StoreError
        If ``product_url`` is not a product: nothing there, no Zarr store,
        or a store without the product's variables, dimensions or
        coordinates.  The message names the URL and what was expected.
    """
    import os
    import tempfile

    so = dict(storage_options or {})
    expected = ("expected a product Zarr store (the merge stage's output) with variables "
                f"{list(PRODUCT_VARIABLES)} on (time, y, x) and 1-D lat/lon coordinates")
    if not storage.store_state(product_url, so)["exists"]:
        there = "nothing is there" if not storage.exists(product_url, so) else \
            "it is not a Zarr store (no zarr.json or .zgroup)"
        raise storage.StoreError(f"export: {product_url} is not a product: {there}; {expected}")
    try:
        product = storage.open_zarr(product_url, so)
    except (ValueError, OSError, KeyError) as err:
        raise storage.StoreError(f"export: {product_url} is not a product: it cannot be opened "
                                 f"({err}); {expected}") from err
    problem = _not_a_product(product)
    if problem:
        raise storage.StoreError(f"export: {product_url} is not a product: {problem}; {expected}")
    casm = to_casm_layout(product)
    fs, root = storage.url_to_fs(out, so)
    fs.makedirs(root, exist_ok=True)
    written = []
    for year in np.unique(casm["date"].dt.year.values):
        if years is not None and year not in years:
            continue
        # Computed wherever dask runs (a gateway's workers), written here: the scratch
        # file is this machine's, which workers need not see.
        part = casm.sel(date=str(year)).load()
        enc = {v: {"zlib": True, "complevel": 4, "dtype": "float32"} for v in part.data_vars}
        with tempfile.TemporaryDirectory(prefix="casm-export-") as tmp:
            local = os.path.join(tmp, f"CASM_SM_{year}.nc")
            part.to_netcdf(local, encoding=enc, engine="netcdf4")
            fs.put_file(local, f"{root.rstrip('/')}/CASM_SM_{year}.nc")
        written.append(storage.join(out, f"CASM_SM_{year}.nc"))
    return written

"""SMAP SPL3SMP (EASE2 M36) and SPL3SMP_E (M09) daily HDF5 granules of a simulated ``smap``.

Layout (SMAP L3 SM P Product Specification, JPL D-72551; what
:func:`casm_cloud.sources.smap.open_smap_l3` reads): one granule per day,
``smap/SPL3SMP.009/YYYY.MM.DD/SMAP_L3_SM_P_YYYYMMDD_R19240_001.h5`` (NSIDC's
folder per day), groups ``Soil_Moisture_Retrieval_Data_AM`` and ``_PM``
(variables with the suffix ``_pm``).  The arrays are a block of the M36 grid
covering the window, as NASA's Harmony subsetter cuts them, with
``EASE_row_index``/``EASE_column_index`` placing the block.  The enhanced
product, ``smap/SPL3SMP_E.006/YYYY.MM.DD/SMAP_L3_SM_P_E_YYYYMMDD_R19240_001.h5``,
is the same on the 9 km M09 grid (catalog entry ``smap_e``, as in
``catalogs/cloud.yaml``): a recipe on M25 reads the 36 km product at its real,
coarser resolution, the 9 km one at about its own.

* ``soil_moisture``: the simulation resampled from its grid to M36
  (:func:`casm_cloud.simulate.native.to_ease2`; M09 for ``_E``), float32, ``_FillValue``
  -9999, ``valid_min`` 0.02 and ``valid_max`` 0.5 as the product's (values
  outside are masked by the reader, as in the real product).
* ``retrieval_qual_flag``: 0 for the simulated (recommended) retrievals; a
  seeded share of the cells the simulation leaves empty get a retrieval
  flagged *not recommended* (bit 0; the simulator drops retrievals over dense
  vegetation as that flag does), so ``quality="all"`` and
  ``quality="recommended"`` differ as on real granules; the rest is fill.
* ``tb_time_seconds`` (seconds since 2000-01-01T11:58:55.816, the SMAP
  epoch) at 06:00 local solar time, ``latitude``/``longitude``.
* The PM group has the same variables and no retrievals (the simulator
  models the 06:00 descending overpass only).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.grid import GridWindow
from casm_cloud.simulate.native import to_ease2
from casm_cloud.simulate.provider._files import days_of, h5_bytes, put, time_blocks

__all__ = ["write_smap", "granule_name", "PRODUCTS", "NOT_RECOMMENDED", "VALID_RANGE"]

#: Entry -> (EASE2 grid, NSIDC collection, the granules' name prefix, cell size in km).
PRODUCTS = {"smap": ("M36", "SPL3SMP.009", "SMAP_L3_SM_P_", 36),
            "smap_e": ("M09", "SPL3SMP_E.006", "SMAP_L3_SM_P_E_", 9)}
NOT_RECOMMENDED = 0b001
VALID_RANGE = (0.02, 0.5)
_FILL = np.float32(-9999.0)
_UFILL = np.uint16(65534)
_J2000 = pd.Timestamp("2000-01-01T11:58:55.816")


def _url(entry: str) -> str:
    """The catalog's URL template (NSIDC's folders per day), relative to the output."""
    _, collection, prefix, _ = PRODUCTS[entry]
    return f"smap/{collection}/{{date:%Y.%m.%d}}/{prefix}{{date:%Y%m%d}}_*.h5"


def granule_name(day: pd.Timestamp, entry: str = "smap") -> str:
    _, collection, prefix, _ = PRODUCTS[entry]
    return f"smap/{collection}/{day:%Y.%m.%d}/{prefix}{day:%Y%m%d}_R19240_001.h5"


def _floats(g, name: str, data: np.ndarray, **attrs) -> None:
    d = g.create_dataset(name, data=np.where(np.isfinite(data), data, _FILL).astype(np.float32))
    d.attrs["_FillValue"] = np.array([_FILL])
    for k, v in attrs.items():
        d.attrs[k] = np.bytes_(v) if isinstance(v, str) else np.array([v], np.float32)


def _uints(g, name: str, data: np.ndarray, **attrs) -> None:
    d = g.create_dataset(name, data=data.astype(np.uint16))
    d.attrs["_FillValue"] = np.array([_UFILL])
    for k, v in attrs.items():
        d.attrs[k] = np.bytes_(v)


def _group(f, group: str, suf: str, sm: np.ndarray, flag: np.ndarray, seconds: np.ndarray,
           win: GridWindow, km: int) -> None:
    g = f.create_group(group)
    _floats(g, f"soil_moisture{suf}", sm, units="cm**3/cm**3", valid_min=VALID_RANGE[0],
            valid_max=VALID_RANGE[1], long_name="Representative soil moisture measurement "
            "for the Earth based grid cell.")
    _uints(g, f"retrieval_qual_flag{suf}", flag,
           long_name="Bit flags that record the conditions and the quality of the retrieval "
           "algorithms that generate soil moisture for the grid cell")
    lat, lon = np.meshgrid(win.lat, win.lon, indexing="ij")
    _floats(g, f"latitude{suf}", lat, units="degrees_north")
    _floats(g, f"longitude{suf}", lon, units="degrees_east")
    rows, cols = np.meshgrid(np.arange(win.row_slice.start, win.row_slice.stop),
                             np.arange(win.col_slice.start, win.col_slice.stop), indexing="ij")
    _uints(g, f"EASE_row_index{suf}", rows, long_name=f"The row index of the {km} km EASE grid cell")
    _uints(g, f"EASE_column_index{suf}", cols,
           long_name=f"The column index of the {km} km EASE grid cell")
    d = g.create_dataset(f"tb_time_seconds{suf}", data=seconds.astype(np.float64))
    d.attrs.update({"_FillValue": np.array([-9999.0]), "units": np.bytes_("seconds")})


def _granule(sm: np.ndarray, win: GridWindow, day: pd.Timestamp, rng, entry: str) -> bytes:
    """One day's granule: AM retrievals (flagged ones in gaps), an empty PM group."""
    empty = ~np.isfinite(sm)
    flagged = empty & (rng.random(sm.shape) < 0.3)
    mean = float(np.nanmean(sm)) if (~empty).any() else 0.25
    degraded = np.clip(mean + rng.normal(0.0, 0.05, sm.shape), *VALID_RANGE)
    am = np.where(flagged, degraded, sm)
    flag = np.where(empty & ~flagged, _UFILL, np.where(flagged, NOT_RECOMMENDED, 0))
    local6 = (day + pd.Timedelta(hours=6) - _J2000).total_seconds()
    seconds = local6 - np.broadcast_to(win.lon[None, :] / 15.0 * 3600.0, sm.shape)
    seconds = np.where(np.isfinite(am), seconds, -9999.0)
    nothing = np.full(sm.shape, np.nan, np.float32)

    km, short = PRODUCTS[entry][3], PRODUCTS[entry][1].split(".")[0]

    def build(f):
        _group(f, "Soil_Moisture_Retrieval_Data_AM", "", am, flag, seconds, win, km)
        _group(f, "Soil_Moisture_Retrieval_Data_PM", "_pm", nothing,
               np.full(sm.shape, _UFILL), np.full(sm.shape, -9999.0), win, km)
        f.create_group("Metadata").attrs["ShortName"] = np.bytes_(short)

    return h5_bytes(build)


def write_smap(ds: xr.Dataset, out: str, storage_options: Mapping | None = None, *,
               seed: int = 0) -> dict:
    """Write the SPL3SMP and SPL3SMP_E granules of a simulated ``smap`` dataset under ``out``.

    Returns
    -------
    dict
        ``{"smap": (adapter, url, options, description), "smap_e": ...}`` for the catalog.
    """
    entries = {}
    for entry, (grid, collection, _, km) in PRODUCTS.items():
        native = to_ease2(ds[["sm"]], grid)
        win = GridWindow.from_attrs(native.attrs, (native.sizes["y"], native.sizes["x"]))
        for block in time_blocks(native):
            for k, day in enumerate(days_of(block)):
                rng = np.random.default_rng([seed, km, day.toordinal()])
                put(out, granule_name(day, entry),
                    _granule(block["sm"].values[k], win, day, rng, entry), storage_options)
        entries[entry] = ("smap_l3", _url(entry), {"orbit": "am", "quality": "recommended"},
                          f"SMAP L3 radiometer {km} km daily SM ({collection} layout, HDF5 "
                          "granules per day), simulated")
    return entries

"""SMOS CATDS-PDC L3TB daily netCDF files (EASE2 M25) of a simulated ``smos`` dataset.

Layout (CATDS-PDC L3TB product description; what
:func:`casm_cloud.sources.smos.open_smos_l3tb` reads): one file per day and
half-orbit, ``smos/L3TB/YYYY/DDD/SM_RE07_MIR_CDF3TA_YYYYMMDDT000000_
YYYYMMDDT235959_300_001_7.DBL.nc`` (``TA``: ascending, 06:00, the overpass
the simulator models), dimensions ``inc`` (the 14 angle classes), ``lat``
(south to north) and ``lon`` on the M25 cell centres of the window,
``BT_H``/``BT_V``/``BT_3``/``BT_4`` packed int16 (0.0061037 K per count,
offset 200 K, ``_FillValue`` -32768), ``Pixel_Radiometric_Accuracy_H/V``,
``Nviews`` and ``Nb_RFI_Flags``.

Only the 42.5° class carries the simulated TB (the simulator models that
angle; the other classes are fill).  A seeded share of the cells the
simulation leaves empty get RFI-contaminated TB (+20..60 K) with every view
flagged in ``Nb_RFI_Flags``, so the reader's RFI filter
(``max_rfi_fraction``) has something to remove; the simulated values
themselves (which include the simulator's own unflagged RFI outliers) carry
no flag.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.grid import GridWindow
from casm_cloud.simulate.native import to_ease2
from casm_cloud.simulate.provider._files import days_of, netcdf4_bytes, pack, put, time_blocks
from casm_cloud.sources.smos import ANGLE_CLASSES

__all__ = ["write_smos", "file_name", "URL", "BT_SCALE", "BT_OFFSET"]

URL = "smos/L3TB/{date:%Y}/{date:%j}/SM_RE07_MIR_CDF3TA_{date:%Y%m%d}T*.DBL.nc"
BT_SCALE, BT_OFFSET = 0.0061037018951994385, 200.0
_ACC_SCALE, _ACC_OFFSET = 7.629627e-4, 25.0
_FILL = np.int16(-32768)
_K42 = ANGLE_CLASSES.index(42.5)


def file_name(day: pd.Timestamp) -> str:
    return (f"smos/L3TB/{day:%Y}/{day:%j}/SM_RE07_MIR_CDF3TA_{day:%Y%m%d}T000000_"
            f"{day:%Y%m%d}T235959_300_001_7.DBL.nc")


def _packed(values: np.ndarray, scale: float, offset: float, **attrs) -> tuple:
    return (("inc", "lat", "lon"), pack(values, scale, offset, _FILL, np.int16)[:, ::-1],
            {"scale_factor": scale, "add_offset": offset, "_FillValue": _FILL, **attrs})


def _day(tb: dict[str, np.ndarray], win: GridWindow, rng, nedt: float) -> bytes:
    """One day's file: (inc, lat south to north, lon)."""
    shape = (len(ANGLE_CLASSES), *win.shape)
    empty = ~np.isfinite(tb["H"])
    rfi = empty & (rng.random(win.shape) < 0.2)
    excess = rng.uniform(20.0, 60.0, win.shape)
    nviews = np.zeros(shape, np.int16)
    nviews[_K42] = np.where(empty & ~rfi, 0, rng.integers(8, 30, win.shape))
    flags = np.zeros(shape, np.int16)
    flags[_K42] = np.where(rfi, nviews[_K42], 0)
    variables = {}
    for pol in ("H", "V", "3", "4"):
        arr = np.full(shape, np.nan, np.float32)
        if pol in tb:
            mean = np.nanmean(tb[pol]) if (~empty).any() else 250.0
            arr[_K42] = np.where(rfi, mean + excess, tb[pol])
        variables[f"BT_{pol}"] = _packed(
            arr, BT_SCALE, BT_OFFSET, units="K", long_name="Angle class averaged Brightness "
            f"temperature in {pol}-pol over current Earth fixed grid point")
    for pol in ("H", "V"):
        acc = np.where(nviews > 0, nedt / np.sqrt(np.maximum(nviews, 1)) * 4.0, np.nan)
        variables[f"Pixel_Radiometric_Accuracy_{pol}"] = _packed(acc, _ACC_SCALE, _ACC_OFFSET,
                                                                 units="K")
    variables["Nviews"] = (("inc", "lat", "lon"), nviews[:, ::-1], {"units": "NA"})
    variables["Nb_RFI_Flags"] = (("inc", "lat", "lon"), flags[:, ::-1], {"units": "NA"})
    dims = {"inc": (np.asarray(ANGLE_CLASSES, np.float32), {"units": "degrees"}),
            "lat": (win.lat[::-1].astype(np.float32), {"units": "degrees_north"}),
            "lon": (win.lon.astype(np.float32), {"units": "degrees_east"})}
    return netcdf4_bytes(dims, variables, {
        "institution": "SMOS CATDS Processing Chain (simulated)", "Conventions": "CF-1.6"})


def write_smos(ds: xr.Dataset, out: str, storage_options: Mapping | None = None, *,
               seed: int = 0, nedt: float = 3.0) -> dict:
    """Write the L3TB daily files of a simulated ``smos`` dataset under ``out``.

    Returns
    -------
    dict
        ``{"smos": (adapter, url, options, description)}`` for the catalog.
    """
    m25 = to_ease2(ds[["tb_h", "tb_v"]], "M25", margin_cells=0)
    win = GridWindow.from_attrs(m25.attrs, (m25.sizes["y"], m25.sizes["x"]))
    for block in time_blocks(m25):
        for k, day in enumerate(days_of(block)):
            rng = np.random.default_rng([seed, 25, day.toordinal()])
            tb = {"H": block["tb_h"].values[k], "V": block["tb_v"].values[k]}
            put(out, file_name(day), _day(tb, win, rng, nedt), storage_options)
    return {"smos": ("smos_l3tb", URL, {"angle": 42.5, "max_rfi_fraction": 0.0, "orbit": "A"},
                     "SMOS CATDS-PDC L3TB daily TB layout, ascending (06:00), 42.5 deg "
                     "class, simulated")}

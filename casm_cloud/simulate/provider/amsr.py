"""AMSR-E NSIDC-0301 flat binaries (EASE-Grid v1) and AMSR2 CETB netCDF (NSIDC-0630, EASE2 M25).

**AMSR-E** (NSIDC-0301 user guide; what
:func:`casm_cloud.sources.amsr.open_amsre_nsidc0301` reads): one file per
day, channel and half-orbit,
``amsre/NSIDC-0301.001/YYYY.MM.DD/ID2r1-AMSRE-MLYYYYDDDD.v03.<FF><P>``
(``D``: descending, 01:30, the overpass the simulator models), the whole
global "ML" grid (1383 × 586) as little-endian uint16 tenths of kelvin, 0
for no data.  The simulation is resampled to EASE-Grid v1
(:func:`casm_cloud.simulate.native.to_ease1`) and written into the rows the
window covers; on a local output the rest of each file is a hole (a sparse
file: 1.6 MB long, a few kB on disk), elsewhere it is written as zeros.

**AMSR2** (CETB NSIDC-0630 user guide; what
:func:`casm_cloud.sources.amsr.open_amsr2_cetb` reads): one netCDF-4 file per
day, channel and pass, ``amsr2/NSIDC-0630.002/YYYY.MM.DD/NSIDC0630_GRD_EASE2_
T25km_GCOMW1_AMSR2_D_<GHz><P>_YYYYMMDD_v1.3.nc``, ``TB`` (time, y, x)
packed uint16 of 0.01 K with ``_FillValue`` 0, ``TB_num_samples``, ``x``/``y``
in EPSG:6933 metres: the window's M25 cells (CETB's T25km grid).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.grid import GridWindow
from casm_cloud.regrid import EASE1_GLOBAL
from casm_cloud.schema import AMSR_CHANNELS
from casm_cloud.simulate.native import to_ease1, to_ease2
from casm_cloud.simulate.provider._files import (
    days_of,
    is_local,
    local_path,
    netcdf4_bytes,
    pack,
    put,
    time_blocks,
)

__all__ = ["write_amsre", "write_amsr2", "AMSRE_URL", "AMSR2_URL", "cetb_channel"]

AMSRE_URL = "amsre/NSIDC-0301.001/{date:%Y.%m.%d}/ID2r*-AMSRE-ML{date:%Y%j}D.v03.*"
AMSR2_URL = ("amsr2/NSIDC-0630.002/{date:%Y.%m.%d}/"
             "NSIDC0630_GRD_EASE2_T25km_GCOMW1_AMSR2_D_*_{date:%Y%m%d}_*.nc")
#: canonical frequency label -> CETB's in file names
_CETB_GHZ = {"06": "6.9", "10": "10.7", "18": "18.7", "23": "23.8", "36": "36.5", "89": "89.0"}


def cetb_channel(name: str) -> str:
    """CETB's channel label of a canonical name: ``tb_10v`` -> ``10.7V``."""
    return f"{_CETB_GHZ[name[3:5]]}{name[5].upper()}"


def _channels(ds: xr.Dataset) -> list[str]:
    return [v for v in ds.data_vars if v in AMSR_CHANNELS]


# --------------------------------------------------------------------------- AMSR-E
def _amsre_name(day: pd.Timestamp, channel: str) -> str:
    return (f"amsre/NSIDC-0301.001/{day:%Y.%m.%d}/ID2r1-AMSRE-ML{day:%Y%j}D.v03."
            f"{channel[3:5]}{channel[5].upper()}")


def _write_flat(out: str, rel: str, rows: np.ndarray, cols: np.ndarray, tenths: np.ndarray,
                storage_options, local: bool) -> None:
    """A global ML file holding ``tenths`` at (rows, cols), zero elsewhere."""
    g = EASE1_GLOBAL
    band = np.zeros((rows.size, g["ncols"]), "<u2")
    band[:, cols[0]:cols[-1] + 1] = tenths
    if not local:
        full = np.zeros((g["nrows"], g["ncols"]), "<u2")
        full[rows[0]:rows[-1] + 1] = band
        put(out, rel, full.tobytes(), storage_options)
        return
    with open(local_path(out, rel, storage_options), "wb") as f:
        f.seek(int(rows[0]) * g["ncols"] * 2)
        f.write(band.tobytes())
        f.truncate(g["nrows"] * g["ncols"] * 2)


def write_amsre(ds: xr.Dataset, out: str, storage_options: Mapping | None = None, *,
                seed: int = 0) -> dict:
    """Write the NSIDC-0301 daily files of a simulated ``amsre`` dataset under ``out``.

    ``ds`` is on an EASE2 window or already on EASE-Grid v1 (dims ``row``, ``col``).
    """
    names = _channels(ds)
    ease1 = ds[names] if "row" in ds.dims else to_ease1(ds[names], min_weight=0.5)
    rows, cols = ease1["row"].values, ease1["col"].values
    local = is_local(out, storage_options)
    for block in time_blocks(ease1):
        for k, day in enumerate(days_of(block)):
            for name in names:
                tenths = pack(block[name].values[k], 0.1, 0.0, 0, np.uint16)
                _write_flat(out, _amsre_name(day, name), rows, cols, tenths, storage_options,
                            local)
    return {"amsre": ("amsre_nsidc0301", AMSRE_URL, {"channels": names, "orbit": "D"},
                      "AMSR-E/Aqua daily EASE-Grid v1 25 km TB (NSIDC-0301 layout, flat "
                      "uint16 files), simulated")}


# --------------------------------------------------------------------------- AMSR2
def _cetb_name(day: pd.Timestamp, channel: str) -> str:
    return (f"amsr2/NSIDC-0630.002/{day:%Y.%m.%d}/NSIDC0630_GRD_EASE2_T25km_GCOMW1_AMSR2_D_"
            f"{cetb_channel(channel)}_{day:%Y%m%d}_v1.3.nc")


def _cetb_file(tb: np.ndarray, win: GridWindow, day: pd.Timestamp, rng) -> bytes:
    n = np.where(np.isfinite(tb), rng.integers(1, 9, tb.shape), 0).astype(np.uint8)
    days = (day - pd.Timestamp("1972-01-01")).days
    dims = {"time": (np.array([days], np.float64), {"units": "days since 1972-01-01 00:00:00",
                                                     "long_name": "ANSI date"}),
            "y": (win.y, {"units": "meters", "standard_name": "projection_y_coordinate"}),
            "x": (win.x, {"units": "meters", "standard_name": "projection_x_coordinate"})}
    variables = {
        "TB": (("time", "y", "x"), pack(tb, 0.01, 0.0, 0, np.uint16)[None],
               {"scale_factor": 0.01, "_FillValue": np.uint16(0), "units": "K",
                "long_name": "GRD Brightness Temperature", "grid_mapping": "crs"}),
        "TB_num_samples": (("time", "y", "x"), n[None], {"long_name": "Number of GRD samples"}),
        "crs": ((), np.int8(0), {k: v for k, v in win.crs_attrs().items()})}
    return netcdf4_bytes(dims, variables, {
        "title": "MEaSUREs Calibrated Enhanced-Resolution Passive Microwave Daily EASE-Grid "
                 "2.0 Brightness Temperature ESDR (simulated)",
        "platform": "GCOM-W1", "sensor": "AMSR2"})


def write_amsr2(ds: xr.Dataset, out: str, storage_options: Mapping | None = None, *,
                seed: int = 0) -> dict:
    """Write the CETB daily files of a simulated ``amsr2`` dataset under ``out``."""
    names = _channels(ds)
    m25 = to_ease2(ds[names], "M25", margin_cells=0)
    win = GridWindow.from_attrs(m25.attrs, (m25.sizes["y"], m25.sizes["x"]))
    for block in time_blocks(m25):
        for k, day in enumerate(days_of(block)):
            rng = np.random.default_rng([seed, 630, day.toordinal()])
            for name in names:
                put(out, _cetb_name(day, name), _cetb_file(block[name].values[k], win, day, rng),
                    storage_options)
    return {"amsr2": ("amsr2_cetb", AMSR2_URL, {"channels": names, "passes": "D"},
                      "AMSR2 CETB daily 25 km EASE2 TB (NSIDC-0630 layout), simulated")}

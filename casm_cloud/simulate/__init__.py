"""The physically based simulator: every source in canonical form, lazily.

Real inputs need accounts and terabytes, so casm_cloud ships a simulator
(docs/science.md) that writes every source for any window of a named
EASE2 grid and any period, with a known truth to score every stage against:

* ``truth``: soil moisture of three layers from a bucket model
  (:mod:`.bucket`, numba kernel) driven by stochastic precipitation with a
  smooth climate gradient across the window and seasonal temperature and
  radiation (:mod:`.forcing`);
* ``era5`` (daily forcing and model soil water) and ``static`` maps;
* ``smos``, ``amsre``, ``amsr2`` brightness temperatures from a tau-omega
  model with Fresnel reflectivity and the Dobson et al. (1985) dielectric
  mixing model (:mod:`.emission`), and ``smap`` soil-moisture retrievals,
  each with its mission period, noise, calibration offset, swath gaps and,
  for SMOS, RFI outliers (:mod:`.sensors`, levels in :mod:`.settings`);
* ISMN-like stations (:mod:`.stations`).

Public API::

    out = simulate(window, "2015-01-01", "2015-12-31", seed=0)   # dict of lazy datasets
    st = simulate_stations(out["truth"], n_stations=8, seed=0)
    write_ismn(st, "stations/")
    write_simulation("sim/", region="demo", start="2015-01-01", end="2015-12-31")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import xarray as xr

from casm_cloud import schema
from casm_cloud.simulate.generate import DEFAULT_CHUNKS, SOURCES, build
from casm_cloud.simulate.settings import DEFAULT_SENSORS, MISSIONS, Sensor, SimSettings
from casm_cloud.simulate.stations import simulate_stations, write_ismn
from casm_cloud.simulate.writer import write_simulation

__all__ = [
    "simulate",
    "simulate_stations",
    "write_ismn",
    "write_simulation",
    "SimSettings",
    "Sensor",
    "DEFAULT_SENSORS",
    "MISSIONS",
    "SOURCES",
    "DEFAULT_CHUNKS",
]


def simulate(window, start, end, seed: int = 0, *, chunks: Mapping[str, int] | None = None,
             sources: Iterable[str] | None = None, era5_native: bool = False,
             amsre_ease1: bool = False, settings: SimSettings | None = None
             ) -> dict[str, xr.Dataset]:
    """Lazy, dask-backed canonical datasets of every simulated source.

    Parameters
    ----------
    window : casm_cloud.grid.GridWindow or EASE2Grid
        Where to simulate.
    start, end : str, date or datetime64
        First and last day (inclusive); daily ``time`` at 00:00.
    seed : int
        Master seed; every chunk is seeded from (seed, source, chunk position)
        and is reproducible alone.
    chunks : mapping, optional
        ``{"time": 365, "y": 64, "x": 64}`` by default.
    sources : iterable of str, optional
        Subset of :data:`SOURCES` (default: all).
    era5_native : bool
        ERA5 on its native regular 0.25° grid (dims ``time, latitude,
        longitude``, latitude decreasing, window plus a 1° margin).
    amsre_ease1 : bool
        AMSR-E on the NSIDC-0301 EASE-Grid v1 global 25 km grid (dims
        ``time, row, col``, 2-D ``lat``/``lon``).
    settings : SimSettings, optional
        Noise, gap and physical parameters.

    Returns
    -------
    dict of str to xarray.Dataset
        Keys among ``truth, era5, static, smos, amsre, amsr2, smap``; a
        sensor whose mission does not overlap [start, end] is left out.
        Nothing is computed.

    Raises
    ------
    ValueError
        For dates that are not dates, ``end`` before ``start``, unknown
        sources or bad chunk sizes.
    """
    out = build(window, start, end, seed, chunks=chunks, sources=sources, settings=settings)
    for kind, ds in out.items():
        schema.validate(ds, kind, grid=window, values="none")
    t = (chunks or {}).get("time", DEFAULT_CHUNKS["time"])
    if era5_native and "era5" in out:
        from casm_cloud.simulate.native import to_era5_native

        out["era5"] = to_era5_native(out["era5"], time_chunk=t)
    if amsre_ease1 and "amsre" in out:
        from casm_cloud.simulate.native import to_ease1

        out["amsre"] = to_ease1(out["amsre"], time_chunk=t)
    return out

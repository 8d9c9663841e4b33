"""Seeded synthetic datasets for tests, notebooks and benchmarks.

Every factory takes a grid window, a time axis and a seed and returns a
canonical, chunked (dask-backed) dataset with realistic coordinates and
attributes, so a fixture is one line::

    win = EASE2Grid("M25").window_by_name("tiny")
    times = pd.date_range("2009-06-01", "2012-06-01", freq="3D")
    truth = make_truth(win, times, seed=0)
    product = make_product(win, times, seed=0, truth=truth)

These are statistical stand-ins (a seasonal cycle plus AR(1) anomalies), not
the physically based simulator in ``casm_cloud.simulate``: they are fast,
small and fully determined by the seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.grid import EASE2Grid, GridWindow
from casm_cloud.merge import SOURCE_CODES
from casm_cloud.schema import apply_attrs

__all__ = [
    "SOURCE_FLAGS",
    "SENSOR_CHANGES",
    "grid_dataset",
    "make_truth",
    "make_product",
    "make_tb_dataset",
]

#: ``source`` codes of the three eras (AMSR-E network, overlap mean, SMOS
#: network), as ``casm_cloud.merge.SOURCE_CODES`` writes them; 0 is missing.
SOURCE_FLAGS: dict[int, str] = {SOURCE_CODES[k]: k
                                for k in ("nn_amsre", "mean_nn_amsre_nn_smos", "nn_smos")}

#: Sensor changes of the CASM record (label -> first day of the new era).
SENSOR_CHANGES: dict[str, str] = {
    "SMOS starts (AMSR-E/SMOS overlap)": "2010-01-17",
    "AMSR-E ends": "2011-10-04",
}


def grid_dataset(window: GridWindow | EASE2Grid, times: Sequence | None = None) -> xr.Dataset:
    """An empty dataset with the coordinates and attributes of ``window`` (and ``times``)."""
    ds = xr.Dataset(coords=window.coords())
    if times is not None:
        ds = ds.assign_coords(time=("time", pd.DatetimeIndex(times).values.astype("datetime64[ns]")))
    ds = ds.assign_coords(crs=xr.DataArray(np.int32(0), attrs=window.crs_attrs()))
    ds.attrs.update(window.identity())
    return ds


def _chunked(ds: xr.Dataset, time_chunk: int) -> xr.Dataset:
    # Data variables only: lat/lon stay in memory as they would on opening Zarr.
    for name in ds.data_vars:
        ds[name] = ds[name].chunk({"time": time_chunk, "y": -1, "x": -1})
    return ds


def _seasonal(times: pd.DatetimeIndex, lat: np.ndarray, lon: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(seasonal cycle (t, y, x), per-pixel mean (y, x)) of a soil-moisture climate."""
    ny, nx = lat.size, lon.size
    # A smooth wet-east / dry-west gradient plus pixel texture.
    xs = np.linspace(0.0, 1.0, nx)[None, :]
    ys = np.linspace(0.0, 1.0, ny)[:, None]
    mean = 0.12 + 0.16 * xs + 0.03 * ys + 0.01 * rng.standard_normal((ny, nx))
    amp = 0.03 + 0.04 * xs + 0.0 * ys
    phase = 2.0 * np.pi * (0.15 + 0.05 * ys)
    doy = np.asarray(times.day_of_year, dtype=np.float64)
    omega_t = 2.0 * np.pi * doy / 365.25
    cycle = mean[None] + amp[None] * np.sin(omega_t[:, None, None] + phase[None])
    return cycle, mean


def _ar1(rng: np.random.Generator, shape: tuple[int, ...], rho: float, sigma: float) -> np.ndarray:
    """AR(1) series along axis 0 with stationary standard deviation ``sigma``."""
    eps = rng.standard_normal(shape) * sigma * np.sqrt(1.0 - rho**2)
    out = np.empty(shape)
    out[0] = rng.standard_normal(shape[1:]) * sigma
    for i in range(1, shape[0]):
        out[i] = rho * out[i - 1] + eps[i]
    return out


def make_truth(window: GridWindow | EASE2Grid, times: Sequence, *, seed: int = 0,
               time_chunk: int = 64) -> xr.Dataset:
    """A ``truth`` dataset: true soil moisture of three layers (seeded).

    Parameters
    ----------
    window : GridWindow or EASE2Grid
    times : sequence of datetime-like
    seed : int
    time_chunk : int
        Dask chunk length along ``time`` (space is one chunk).

    Returns
    -------
    xarray.Dataset
        ``sm_l1``, ``sm_l2``, ``sm_l3`` (time, y, x), float32, m3 m-3; passes
        ``schema.validate(ds, "truth")``.
    """
    times = pd.DatetimeIndex(times)
    rng = np.random.default_rng(seed)
    ds = grid_dataset(window, times)
    cycle, _ = _seasonal(times, ds["lat"].values, ds["lon"].values, rng)
    shape = cycle.shape
    top = cycle + _ar1(rng, shape, 0.8, 0.04)
    layers = [top, 0.6 * top + 0.4 * cycle + 0.02, 0.3 * top + 0.7 * cycle + 0.04]
    for i, arr in enumerate(layers, start=1):
        ds[f"sm_l{i}"] = (("time", "y", "x"), np.clip(arr, 0.02, 0.5).astype(np.float32))
    return _chunked(apply_attrs(ds, "truth"), time_chunk)


def make_product(window: GridWindow | EASE2Grid, times: Sequence, *, seed: int = 0,
                 truth: xr.Dataset | None = None,
                 sensor_changes: dict[str, str] | None = None,
                 era_bias: Sequence[float] = (0.01, 0.0, -0.005),
                 noise: float = 0.02, gap_fraction: float = 0.1,
                 time_chunk: int = 64) -> xr.Dataset:
    """A merged CASM-like ``product`` dataset (seeded), optionally built on ``truth``.

    The record has three eras split by the two dates of ``sensor_changes``
    (AMSR-E network, the overlap mean, SMOS network); each era adds its own
    constant bias (``era_bias``) and white noise to the truth, so tests of
    the report can check that a known bias step is found.

    Parameters
    ----------
    window : GridWindow or EASE2Grid
    times : sequence of datetime-like
    seed : int
    truth : xarray.Dataset, optional
        From :func:`make_truth` on the same window and times; made from
        ``seed`` if not given.
    sensor_changes : dict of str to str, optional
        Two ``label -> date`` entries; default :data:`SENSOR_CHANGES`.
    era_bias : three floats
        Bias (m3 m-3) of the AMSR-E era, the overlap and the SMOS era.
    noise : float
        Standard deviation of the retrieval error (m3 m-3).
    gap_fraction : float
        Fraction of values set missing (NaN, source 0).
    time_chunk : int

    Returns
    -------
    xarray.Dataset
        ``sm``, ``sm_residual``, ``seasonal_cycle``, ``structural_uncertainty``,
        ``data_uncertainty`` (float32) and ``source`` (int8, CF flags); passes
        ``schema.validate(ds, "product")``.

    Raises
    ------
    ValueError
        If ``truth`` does not share the window and times, or the sensor
        changes are not two dates.
    """
    times = pd.DatetimeIndex(times)
    if truth is None:
        truth = make_truth(window, times, seed=seed, time_chunk=time_chunk)
    if truth.sizes.get("time") != times.size or truth.sizes.get("y") != window.shape[0] \
            or truth.sizes.get("x") != window.shape[1]:
        raise ValueError(
            f"truth has sizes {dict(truth.sizes)}; expected time={times.size}, "
            f"y={window.shape[0]}, x={window.shape[1]}"
        )
    changes = sorted(pd.Timestamp(d) for d in (sensor_changes or SENSOR_CHANGES).values())
    if len(changes) != 2:
        raise ValueError(f"sensor_changes: expected two dates, got {len(changes)}")
    rng = np.random.default_rng(seed + 1)
    ds = grid_dataset(window, times)
    true = np.asarray(truth["sm_l1"].values, dtype=np.float64)
    shape = true.shape
    era = np.searchsorted(np.asarray(changes, dtype="datetime64[ns]"), times.values, side="right")
    bias = np.asarray(era_bias, dtype=np.float64)[era][:, None, None]
    sm = np.clip(true + bias + noise * rng.standard_normal(shape), 0.0, 0.6)
    gaps = rng.random(shape) < gap_fraction
    sm[gaps] = np.nan
    # The seasonal cycle the product stores (the climate used to make the truth).
    cycle, _ = _seasonal(times, ds["lat"].values, ds["lon"].values, np.random.default_rng(seed))
    cycle = np.where(np.isnan(sm), np.nan, cycle)
    source = np.asarray(list(SOURCE_FLAGS), dtype=np.int8)[era][:, None, None] * np.ones(
        shape, dtype=np.int8)
    source[gaps] = 0
    struct = np.where(np.isnan(sm), np.nan, 0.01 + 0.01 * rng.random(shape) + 0.005 * (era == 0)[
        :, None, None])
    data_u = np.where(np.isnan(sm), np.nan, 0.005 + 0.005 * rng.random(shape))
    f32 = np.float32
    ds["sm"] = (("time", "y", "x"), sm.astype(f32))
    ds["seasonal_cycle"] = (("time", "y", "x"), cycle.astype(f32))
    ds["sm_residual"] = (("time", "y", "x"), (sm - cycle).astype(f32))
    ds["structural_uncertainty"] = (("time", "y", "x"), struct.astype(f32))
    ds["data_uncertainty"] = (("time", "y", "x"), data_u.astype(f32))
    ds["source"] = (("time", "y", "x"), source)
    ds = apply_attrs(ds, "product")
    ds["source"].attrs.update({
        "long_name": "network that made the value",
        "flag_values": np.asarray(list(SOURCE_CODES.values()), dtype=np.int8),
        "flag_meanings": " ".join(SOURCE_CODES),
    })
    return _chunked(ds, time_chunk)


def make_tb_dataset(window: GridWindow | EASE2Grid, times: Sequence, *,
                    kind: str = "smos", seed: int = 0, gap_fraction: float = 0.3,
                    time_chunk: int = 64) -> xr.Dataset:
    """Brightness temperatures of a sensor ``kind`` (seeded; swath-like gaps).

    Parameters
    ----------
    window : GridWindow or EASE2Grid
    times : sequence of datetime-like
    kind : {"smos", "amsre", "amsr2"}
        ``smos`` gives ``tb_h``, ``tb_v``; AMSR kinds give ``tb_10v``,
        ``tb_18h``, ``tb_36h``, ``tb_89v``.
    seed : int
    gap_fraction : float
        Fraction of missing values, in stripes along ``x`` per time step.
    time_chunk : int

    Returns
    -------
    xarray.Dataset
        Passes ``schema.validate(ds, kind)``.

    Raises
    ------
    ValueError
        For an unknown ``kind``.
    """
    names = {"smos": ("tb_h", "tb_v"),
             "amsre": ("tb_10v", "tb_18h", "tb_36h", "tb_89v"),
             "amsr2": ("tb_10v", "tb_18h", "tb_36h", "tb_89v")}
    if kind not in names:
        raise ValueError(f"kind={kind!r}: expected one of {sorted(names)}")
    times = pd.DatetimeIndex(times)
    rng = np.random.default_rng(seed)
    ds = grid_dataset(window, times)
    cycle, _ = _seasonal(times, ds["lat"].values, ds["lon"].values, rng)
    sm = cycle + _ar1(rng, cycle.shape, 0.8, 0.04)
    nt, ny, nx = cycle.shape
    # Swath stripes: each time step misses a band of columns.
    start = rng.integers(0, nx, size=nt)
    width = max(1, round(gap_fraction * nx))
    cols = np.arange(nx)[None, :]
    stripe = ((cols - start[:, None]) % nx) < width
    for i, name in enumerate(names[kind]):
        pol_v = name.endswith("v")
        emissivity = (0.95 if pol_v else 0.9) - (0.8 if pol_v else 1.1) * sm
        tb = 295.0 * emissivity + 1.5 * rng.standard_normal(sm.shape) + 2.0 * i
        tb = np.where(stripe[:, None, :], np.nan, tb)
        ds[name] = (("time", "y", "x"), tb.astype(np.float32))
    return _chunked(apply_attrs(ds, kind), time_chunk)

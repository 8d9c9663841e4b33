"""Lazy assembly: per-block tasks in one dask graph, then canonical datasets.

How the bucket's sequential state crosses time chunks
-----------------------------------------------------
Each spatial block (y, x chunk) is a *chain* of tasks along time: task k
generates the forcing of time chunk k, runs the bucket from the state left by
task k-1 and hands on only that state (3 layers + a temperature anomaly per
cell, a few kB).  The first task is a spin-up of ``settings.spinup_days``
days before ``start`` from field capacity.  Memory is therefore bounded by a
few chunks whatever the window or period, output chunks of different blocks
are independent (a globe is 200+ independent chains), and every chunk is
reproducible on its own: its random draws are seeded from (seed, stream,
block origin, first day of the chunk), so computing a chunk alone gives the
same bits as computing it inside the whole array (its chain is recomputed).
The price is that reading the last time chunk alone recomputes its chain;
whole-store writes (``write_simulation``) compute each chain once.

Sensors and ERA5 are tasks hanging off the chain task of the same chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from casm_cloud import schema
from casm_cloud.simulate.bucket import initial_state, run_bucket
from casm_cloud.simulate.forcing import (
    STREAMS,
    block_rng,
    daily_forcing,
    smooth_noise,
    static_fields,
)
from casm_cloud.simulate.sensors import observe
from casm_cloud.simulate.settings import SimSettings

__all__ = ["SOURCES", "DEFAULT_CHUNKS", "build", "parse_day"]

#: Every source the simulator makes, in the order it returns them.
SOURCES = ("truth", "era5", "static", "smos", "amsre", "amsr2", "smap")
DEFAULT_CHUNKS = {"time": 365, "y": 64, "x": 64}

_STATIC_VARS = tuple(schema.KINDS["static"][0])
_TRUTH_VARS = ("sm_l1", "sm_l2", "sm_l3")
_ERA5_VARS = ("t2m", "tp", "q", "ssr", "ssrd", "str", "skt", "swvl1", "swvl2", "swvl3")
_EPOCH = np.datetime64("1970-01-01", "D")


def parse_day(value, name: str) -> np.datetime64:
    """A day (datetime64[D]) from a str/date/datetime64; ValueError naming ``name``."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        ts = pd.NaT
    if ts is pd.NaT or pd.isna(ts):
        raise ValueError(f"{name}={value!r} is not a date; expected YYYY-MM-DD")
    return np.datetime64(ts.date(), "D")


@dataclass(frozen=True)
class _Block:
    """What a task needs to know about its spatial block (small, picklable)."""

    seed: int
    rows: np.ndarray  # absolute grid rows
    cols: np.ndarray  # absolute grid columns
    lat: np.ndarray   # per row
    lon: np.ndarray   # per column
    u: np.ndarray     # per column: 0 west edge of the window .. 1 east edge
    settings: SimSettings


def _static_task(b: _Block) -> dict:
    return static_fields(b.seed, b.rows, b.cols, b.lat, b.lon, b.u, b.settings)


_SLAB = 61  # days generated at once inside a chain task (bounds the float64 temporaries)


def _chain_task(b: _Block, static: dict, day0: int, n: int, prev, keep: bool = True):
    """Generate forcing and soil water of ``n`` days from ``day0``; pass the state on.

    ``keep=False`` (the spin-up) returns only the state, so that no full
    chunk of fields waits in memory for the next task.
    """
    if prev is None:
        state, anom = initial_state(static), np.zeros(static["fc"].shape)
    else:
        state, anom = prev[1]
    rng = block_rng(b.seed, "forcing", b.rows[0], b.cols[0], day0)
    out: dict[str, np.ndarray] = {}
    for s0 in range(0, n, _SLAB):
        days = np.arange(day0 + s0, day0 + min(n, s0 + _SLAB))
        part, state, anom = _slab(b, static, days, rng, state, anom)
        if not keep:
            continue
        for k, v in part.items():
            if k not in out:
                out[k] = np.empty((n,) + v.shape[1:], dtype=np.float32)
            out[k][s0:s0 + days.size] = v
    return out, (state, anom)


def _slab(b: _Block, static: dict, days: np.ndarray, rng, state, anom):
    dates = _EPOCH + days
    doy = (dates - dates.astype("datetime64[Y]")).astype(np.int64) + 1
    f, anom = daily_forcing(b.seed, static, b.rows, b.cols, days, doy, rng, anom, b.settings)
    theta, state = run_bucket(f["tp_mm"], f["pet"], state, static, b.settings.layer_mm)
    beta = np.clip((theta[0] - static["wp"]) / (static["fc"] - static["wp"]), 0.0, 1.0)
    rad = f["ssrd"] / 25e6
    # dry soil heats up: skin above air temperature by up to ~3 K at full sun
    skt = f["t2m"] + 0.5 + 3.0 * (1.0 - beta) * rad
    skt_amp = 2.0 + 6.0 * (f["atm_tau"] / 0.75) * (0.6 + 0.4 * (1.0 - beta))
    out = {"sm_l1": theta[0], "sm_l2": theta[1], "sm_l3": theta[2],
           "t2m": f["t2m"], "tp": f["tp_mm"] / 1000.0, "q": f["q"], "ssr": f["ssr"],
           "ssrd": f["ssrd"], "str": f["str"], "skt": skt, "skt_amp": skt_amp, "vwc": f["vwc"]}
    # ERA5 soil water: a model with its own (smooth, constant) bias per layer
    for i in range(3):
        bias = 0.02 * smooth_noise(b.seed, STREAMS["era5_bias"] * 10 + i, b.rows, b.cols, 8)
        out[f"swvl{i + 1}"] = np.clip(0.85 * theta[i] + 0.04 + bias, 0.01, static["porosity"])
    return out, state, anom


def _sensor_task(b: _Block, name: str, static: dict, chain, day0: int, n: int) -> dict:
    fields = chain[0]
    return observe(name, b.settings.sensors[name], b.seed, fields, static, b.rows, b.cols,
                   b.lat, b.lon, np.arange(day0, day0 + n), b.settings)


def _pick(out, var):
    if isinstance(out, tuple):
        out = out[0]
    return np.asarray(out[var], dtype=np.float32)


def _splits(n: int, size: int) -> list[int]:
    return [min(size, n - i) for i in range(0, n, size)]


def build(window, start, end, seed: int = 0, *, chunks=None, sources=None,
          settings: SimSettings | None = None) -> dict[str, xr.Dataset]:
    """Lazy canonical datasets of ``sources`` on ``window`` (see ``simulate``)."""
    settings = settings or SimSettings()
    t0, t1, ch, wanted = _checked(start, end, chunks, sources)
    ny, nx = window.shape
    nt = int((t1 - t0).astype(int)) + 1
    splits = _splits(nt, ch["time"]), _splits(ny, ch["y"]), _splits(nx, ch["x"])
    token = tokenize(window.name, window.row_slice.start, window.row_slice.stop,
                     window.col_slice.start, window.col_slice.stop, str(t0), str(t1), seed, ch,
                     repr(settings))
    core_name = f"simulate-{token}"
    core = _core_graph(core_name, window, t0, splits, int(seed), settings,
                       [s for s in wanted if s in settings.sensors])

    def array(kind: str, var: str, static: bool = False) -> da.Array:
        return _array(core_name, core, token, splits, kind, var, static)

    times = pd.date_range(str(t0), str(t1), freq="D").values.astype("datetime64[ns]")
    out: dict[str, xr.Dataset] = {}
    for kind in wanted:
        if kind == "static":
            data = {v: (("y", "x"), array("static", v, static=True)) for v in _STATIC_VARS}
            out[kind] = _dataset(data, window, None, kind)
        elif kind in ("truth", "era5"):
            names = _TRUTH_VARS if kind == "truth" else _ERA5_VARS
            data = {v: (("time", "y", "x"), array(kind, v)) for v in names}
            out[kind] = _dataset(data, window, times, kind)
        else:
            sensor = settings.sensors[kind]
            names = [c[0] for c in sensor.channels] if sensor.product == "tb" else ["sm"]
            data = {v: (("time", "y", "x"), array(kind, v)) for v in names}
            ds = _mission_days(_dataset(data, window, times, kind), sensor, t0, t1, ch["time"])
            if ds is not None:
                out[kind] = ds
    return out


def _checked(start, end, chunks, sources):
    """(first day, last day, chunks per dim, sources) or a ValueError naming the argument."""
    t0, t1 = parse_day(start, "start"), parse_day(end, "end")
    if t1 < t0:
        raise ValueError(f"end {t1} is before start {t0}")
    ch = dict(DEFAULT_CHUNKS)
    for k, v in dict(chunks or {}).items():
        if k not in ch:
            raise ValueError(f"chunks: unknown dimension {k!r}; expected time, y, x")
        if int(v) < 1:
            raise ValueError(f"chunks: {k}={v} must be a positive integer")
        ch[k] = int(v)
    wanted = SOURCES if sources is None else tuple(sources)
    for s in wanted:
        if s not in SOURCES:
            raise ValueError(f"unknown source {s!r}; expected some of {list(SOURCES)}")
    return t0, t1, ch, wanted


def _core_graph(core_name, window, t0, splits, seed, settings, sensors) -> dict:
    """The simulation's tasks: per (y, x) block its statics, a spin-up and one chain task
    per time chunk (each continuing the previous one's state), and a sensor task per
    chain task and sensor."""
    tch, ych, xch = splits
    day_start = int((t0 - _EPOCH).astype(int))
    day0s = day_start + np.concatenate([[0], np.cumsum(tch)[:-1]])
    nx = sum(xch)
    lat_all, lon_all = window.lat, window.lon
    u_all = np.linspace(0.0, 1.0, nx) if nx > 1 else np.full(1, 0.5)
    r_off = np.concatenate([[0], np.cumsum(ych)[:-1]])
    c_off = np.concatenate([[0], np.cumsum(xch)[:-1]])
    core: dict = {}
    for i, (r0, rn) in enumerate(zip(r_off, ych, strict=True)):
        for j, (c0, cn) in enumerate(zip(c_off, xch, strict=True)):
            rs, cs = slice(r0, r0 + rn), slice(c0, c0 + cn)
            b = _Block(seed, np.arange(window.row_slice.start + r0,
                                       window.row_slice.start + r0 + rn),
                       np.arange(window.col_slice.start + c0, window.col_slice.start + c0 + cn),
                       lat_all[rs], lon_all[cs], u_all[cs], settings)
            skey = (core_name, "static", i, j)
            core[skey] = (_static_task, b)
            prev = None
            if settings.spinup_days > 0:
                prev = (core_name, "spinup", i, j)
                core[prev] = (_chain_task, b, skey, day_start - settings.spinup_days,
                              settings.spinup_days, None, False)
            for k, (d0, n) in enumerate(zip(day0s, tch, strict=True)):
                key = (core_name, "chain", i, j, k)
                core[key] = (_chain_task, b, skey, int(d0), int(n), prev)
                prev = key
                for s in sensors:
                    core[(core_name, s, i, j, k)] = (_sensor_task, b, s, skey, key, int(d0),
                                                      int(n))
    return core


def _array(core_name, core, token, splits, kind: str, var: str, static: bool) -> da.Array:
    """One variable of the simulation as a dask array over the core graph."""
    tch, ych, xch = splits
    name = f"sim-{kind}-{var}-{token}"
    src = "chain" if kind in ("truth", "era5") else kind
    if static:
        layer = {(name, i, j): (_pick, (core_name, "static", i, j), var)
                 for i in range(len(ych)) for j in range(len(xch))}
        chunks_ = (tuple(ych), tuple(xch))
    else:
        layer = {(name, k, i, j): (_pick, (core_name, src, i, j, k), var)
                 for k in range(len(tch)) for i in range(len(ych)) for j in range(len(xch))}
        chunks_ = (tuple(tch), tuple(ych), tuple(xch))
    graph = HighLevelGraph({name: layer, core_name: core}, {name: {core_name}, core_name: set()})
    return da.Array(graph, name, chunks_, dtype=np.float32)


def _mission_days(ds: xr.Dataset, sensor, t0, t1, time_chunk: int) -> xr.Dataset | None:
    """A sensor's dataset cut to its mission's days (None: no overlap with [t0, t1]),
    re-chunked to whole output chunks when the mission starts inside one."""
    first, last = sensor.period
    lo = max(t0, np.datetime64(first, "D"))
    hi = t1 if last is None else min(t1, np.datetime64(last, "D"))
    if hi < lo:
        return None
    ds = ds.sel(time=slice(lo, hi))
    names = list(ds.data_vars)
    if ds[names[0]].chunks[0][0] != min(time_chunk, ds.sizes["time"]):
        ds = ds.assign({v: ds[v].chunk({"time": time_chunk}) for v in names})
    return ds


_TITLES = {
    "truth": "simulated true soil moisture (bucket model)",
    "era5": "simulated ERA5-like daily forcing and soil water",
    "static": "simulated static maps",
    "smos": "simulated SMOS L3 brightness temperatures (1.4 GHz, 42.5 deg, 06:00)",
    "amsre": "simulated AMSR-E brightness temperatures (55 deg, 01:30)",
    "amsr2": "simulated AMSR2 brightness temperatures (55 deg, 01:30)",
    "smap": "simulated SMAP L3 soil-moisture retrievals (06:00)",
}


def _dataset(data: dict, window, times, kind: str) -> xr.Dataset:
    coords = dict(window.coords())
    if times is not None:
        coords["time"] = ("time", times)
    coords["crs"] = ((), np.int32(0), window.crs_attrs())
    ds = schema.apply_attrs(xr.Dataset(data, coords=coords), kind)
    for v in ds.data_vars.values():
        v.attrs["grid_mapping"] = "crs"
    ds.attrs.update(window.identity())
    ds.attrs.update({"title": _TITLES[kind], "source": "casm_cloud.simulate",
                     "comment": "synthetic data from a physically based simulator"})
    return ds

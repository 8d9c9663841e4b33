"""ISMN-like point stations: point-scale truth plus representativeness error.

``simulate_stations`` picks cells of a truth dataset and makes hourly
point-scale soil moisture for each (docs/science.md, "Simulator"):

    θ_point(t) = a·(θ_cell(t) - mean θ_cell) + mean_point + e(t),

with a per-station scale ``a``, a per-station mean offset and an AR(1)
representativeness error ``e`` (hourly, ten-day memory; below the surface
scaled down by :func:`depth_error_scale`); ISMN quality flags
are 'G' for good values and 'D06' (spike detected, ISMN quality control)
for injected spikes; a few multi-day gaps are left out of the files.

With ``depths`` a station has several sensors (SoMo.ml's layers 0–10,
10–30 and 30–50 cm and deeper): each measures the truth interpolated in
depth between the layers' mid-depths (5, 20, 40 cm), with the station's
scale and offset and its own error; sensors of one station share its
gaps.  :data:`SOMO_DEPTHS` is the layout the SoMo.ml demo uses.

``write_ismn`` writes them in the ISMN "header + values" format of a
current ISMN download (one folder per network and station, a
``<net>_<net>_<station>_sm_<from>_<to>_<sensor>_<start>_<end>.stm`` file
per sensor and a ``<net>_<net>_<station>_static_variables.csv``), which
``ismn.interface.ISMN_Interface`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.simulate.forcing import STREAMS

__all__ = ["simulate_stations", "write_ismn", "SOMO_DEPTHS", "LAYER_MIDS"]

#: Mid-depths (m) of the truth layers sm_l1..3 (0-10, 10-30, 30-50 cm).
LAYER_MIDS = (0.05, 0.20, 0.40)
#: Sensor slots of a SoMo.ml demo station: each station draws one option per slot
#: (``None``: no sensor there).  Mid-depth sensors mostly, some off the middle (the
#: selection then takes the closest inside the layer), some layers without one, and
#: sensors outside every layer (ignored).
SOMO_DEPTHS: tuple[tuple, ...] = (
    ((0.05, 0.05), (0.05, 0.05), (0.0, 0.05), (0.02, 0.02)),
    ((0.02, 0.02), None, None, None),
    ((0.20, 0.20), (0.20, 0.20), (0.15, 0.15), (0.25, 0.25), None),
    ((0.40, 0.40), (0.40, 0.40), (0.35, 0.35), (0.50, 0.50), None),
    ((0.80, 0.80), None),
)


def simulate_stations(truth: xr.Dataset, n_stations: int = 8, seed: int = 0, *,
                      network: str = "SIMNET", spike_fraction: float = 0.003,
                      gaps_per_year: float = 2.0, error_std: float = 0.02,
                      static: xr.Dataset | None = None, depths=None,
                      shared_cells: int = 0) -> xr.Dataset:
    """Hourly point-scale soil moisture at ``n_stations`` cells of ``truth``.

    Parameters
    ----------
    truth : xarray.Dataset
        Simulated truth (``sm_l1`` on ``time, y, x``), lazy or not.
    n_stations : int
        Number of stations, at distinct cells chosen at random (seeded).
    seed : int
    network : str
        ISMN network name.
    spike_fraction : float
        Fraction of hourly values replaced by a flagged ('D06') spike.
    gaps_per_year : float
        Expected number of gaps (1-10 days, no records) per station-year.
    error_std : float
        Standard deviation of the AR(1) representativeness error, m3 m-3.
    static : xarray.Dataset, optional
        Static maps; texture and porosity go into the station metadata.
    depths : sequence of slots, optional
        Several sensors per station (needs ``sm_l1..3``): one option drawn per
        slot and station, an option being ``(depth_from, depth_to)`` in m or
        ``None`` (see :data:`SOMO_DEPTHS`).  Default: one 0–5 cm sensor.
    shared_cells : int
        Extra stations placed in cells that already have one (with
        ``depths``; several stations in one cell).

    Returns
    -------
    xarray.Dataset
        ``sm`` (station, time) float32, lazy where ``truth`` is; NaN where a
        gap leaves no record; ``flag`` (station, time) str; coordinates
        ``station``, ``network``, ``lat``, ``lon``, ``elevation``, ``cell_y``,
        ``cell_x`` (indices in the window), ``depth_from``, ``depth_to``,
        ``instrument``; with ``depths`` one row per sensor and ``site``
        (the station's name, shared by its sensors).

    Raises
    ------
    ValueError
        If ``truth`` lacks ``sm_l1`` or ``n_stations`` exceeds the cells.
    """
    if "sm_l1" not in truth:
        raise ValueError(f"truth has no variable 'sm_l1' (have {sorted(truth.data_vars)})")
    if depths is not None:
        return _multi_depth(truth, n_stations, seed, depths, shared_cells, network,
                            spike_fraction, gaps_per_year, error_std, static)
    ny, nx = truth.sizes["y"], truth.sizes["x"]
    if not 1 <= n_stations <= ny * nx:
        raise ValueError(f"n_stations={n_stations}: expected 1..{ny * nx} (cells in the window)")
    rng = np.random.default_rng([int(seed), STREAMS["stations"], ny, nx])
    cells = rng.choice(ny * nx, size=n_stations, replace=False)
    iy, ix = np.unravel_index(np.sort(cells), (ny, nx))
    sel = {"y": xr.DataArray(iy, dims="station"), "x": xr.DataArray(ix, dims="station")}
    cell = truth["sm_l1"].isel(sel).drop_vars(["y", "x", "lat", "lon", "crs"], errors="ignore")
    cell = cell.chunk({"time": -1, "station": -1}) if cell.chunks else cell
    day = truth["time"].values.astype("datetime64[ns]")
    hours = pd.date_range(day[0], day[-1], freq="h").values
    nh = hours.size
    hourly = cell.interp(time=hours)
    mean_cell = cell.mean("time")

    a = rng.uniform(0.8, 1.3, n_stations)
    offset = rng.normal(0.0, 0.03, n_stations)
    rho = np.exp(-1.0 / 240.0)
    eps = rng.standard_normal((n_stations, nh)) * error_std * np.sqrt(1 - rho ** 2)
    err = np.empty_like(eps)
    err[:, 0] = rng.standard_normal(n_stations) * error_std
    for t in range(1, nh):  # n_stations-wide AR(1); cheap (one vector op per hour)
        err[:, t] = rho * err[:, t - 1] + eps[:, t]
    spikes = rng.random((n_stations, nh)) < spike_fraction
    spike_size = np.where(spikes, rng.uniform(0.10, 0.25, (n_stations, nh)), 0.0)
    gap = np.zeros((n_stations, nh), dtype=bool)
    n_gaps = rng.poisson(gaps_per_year * nh / 8766.0, n_stations)
    for s in range(n_stations):
        for _ in range(n_gaps[s]):
            g0 = rng.integers(0, nh)
            gap[s, g0:g0 + rng.integers(24, 240)] = True

    st_dims = ("station", "time")
    extra = xr.DataArray(offset, dims="station") + xr.DataArray(err + spike_size, dims=st_dims)
    sm = xr.DataArray(a, dims="station") * (hourly - mean_cell) + mean_cell + extra
    upper = 0.6 if static is None else (static["porosity"].isel(sel) + 0.05)
    sm = sm.clip(0.005, upper).where(~xr.DataArray(gap, dims=st_dims))
    flag = np.where(gap, "", np.where(spikes, "D06", "G"))

    names = [f"S{k + 1:03d}" for k in range(n_stations)]
    lat = truth["lat"].values[iy] + rng.uniform(-0.08, 0.08, n_stations)
    lon = truth["lon"].values[ix] + rng.uniform(-0.08, 0.08, n_stations)
    coords = {
        "station": ("station", names), "time": ("time", hours),
        "network": ("station", [network] * n_stations),
        "lat": ("station", np.round(lat, 5)), "lon": ("station", np.round(lon, 5)),
        "cell_y": ("station", iy), "cell_x": ("station", ix),
        "depth_from": ("station", np.zeros(n_stations)),
        "depth_to": ("station", np.full(n_stations, 0.05)),
        "instrument": ("station", ["Sim-Probe"] * n_stations),
    }
    if static is not None:
        for v in ("clay", "sand", "silt", "porosity", "elevation"):
            coords[v] = ("station", np.asarray(static[v].isel(sel).values, dtype=np.float64))
    else:
        coords["elevation"] = ("station", np.full(n_stations, 500.0))
    ds = xr.Dataset({"sm": sm.transpose(*st_dims).astype(np.float32),
                     "flag": (st_dims, flag)}, coords=coords)
    ds["sm"].attrs = {"units": "m3 m-3", "long_name": "point-scale soil moisture 0-5 cm"}
    ds.attrs = {"title": "simulated ISMN-like stations", "source": "casm_cloud.simulate",
                "representativeness_error_std": error_std}
    if not isinstance(ds["sm"].data, da.Array):
        ds["sm"] = ds["sm"].load()
    return ds


def _depth_weights(depth: float) -> np.ndarray:
    """Weights of sm_l1..3 for a sensor at ``depth`` (linear between the mid-depths)."""
    mids = np.asarray(LAYER_MIDS)
    d = float(np.clip(depth, mids[0], mids[-1]))
    k = min(int(np.searchsorted(mids, d, side="right")) - 1, len(mids) - 2)
    f = (d - mids[k]) / (mids[k + 1] - mids[k])
    w = np.zeros(len(mids))
    w[k], w[k + 1] = 1.0 - f, f
    return w


def depth_error_scale(at_depth: xr.DataArray, surface: xr.DataArray) -> np.ndarray:
    """Per sensor, how much smaller its short-term error is than a surface sensor's.

    A point's representativeness error comes from the point answering the same
    rain and drying differently from its cell, so its short-term part can only move
    as fast as the soil water at that depth moves: the factor is the ratio of the
    cell's 35-day anomaly standard deviation at the sensor's depth (``at_depth``,
    station × day) to that of the surface layer (``surface``), at most 1 (1 at the
    surface).  In-situ errors decrease with depth in the ISMN (Gruber et al. 2013,
    Vadose Zone J. 12(2), doi:10.2136/vzj2012.0170, triple collocation of > 1400
    stations); docs/science.md gives the figures this changes.
    """
    from casm_cloud.validation.metrics import anomaly

    deep = anomaly(at_depth.load()).std("time").values
    top = anomaly(surface.load()).std("time").values
    return np.clip(np.where(top > 0, deep / np.where(top > 0, top, 1.0), 1.0), 0.0, 1.0)


def _multi_depth(truth, n_stations, seed, depths, shared_cells, network, spike_fraction,
                 gaps_per_year, error_std, static) -> xr.Dataset:
    """Stations with several sensors each (see :func:`simulate_stations`, ``depths``)."""
    layers = ["sm_l1", "sm_l2", "sm_l3"]
    lack = [v for v in layers if v not in truth]
    if lack:
        raise ValueError(f"truth lacks {lack} for sensors at several depths")
    ny, nx = truth.sizes["y"], truth.sizes["x"]
    if not 1 <= n_stations <= ny * nx:
        raise ValueError(f"n_stations={n_stations}: expected 1..{ny * nx} (cells in the window)")
    rng = np.random.default_rng([int(seed), STREAMS["stations"], ny, nx, 3])
    cells = np.sort(rng.choice(ny * nx, size=n_stations, replace=False))
    if shared_cells:
        cells = np.concatenate([cells, rng.choice(cells, size=int(shared_cells))])
    n_st = cells.size
    iy, ix = np.unravel_index(cells, (ny, nx))
    rows = []  # (station index, depth_from, depth_to)
    for k in range(n_st):
        for slot in depths:
            pick = slot[int(rng.integers(len(slot)))]
            if pick is not None:
                rows.append((k, float(pick[0]), float(pick[1])))
    rows = list(dict.fromkeys(rows))  # a station has one sensor per depth
    st = np.array([r[0] for r in rows])
    d0 = np.array([r[1] for r in rows])
    d1 = np.array([r[2] for r in rows])
    w = np.stack([_depth_weights((a + b) / 2) for a, b in zip(d0, d1, strict=True)])
    sel = {"y": xr.DataArray(iy[st], dims="station"), "x": xr.DataArray(ix[st], dims="station")}
    drop = ["y", "x", "lat", "lon", "crs"]
    cell = sum(xr.DataArray(w[:, i], dims="station") *
               truth[v].isel(sel).drop_vars(drop, errors="ignore") for i, v in enumerate(layers))
    cell = cell.chunk({"time": -1, "station": -1}) if cell.chunks else cell
    day = truth["time"].values.astype("datetime64[ns]")
    hours = pd.date_range(day[0], day[-1], freq="h").values
    nh, nr = hours.size, len(rows)
    hourly = cell.interp(time=hours)
    mean_cell = cell.mean("time")
    a = rng.uniform(0.8, 1.3, n_st)[st]
    offset = rng.normal(0.0, 0.03, n_st)[st]
    rho = np.exp(-1.0 / 240.0)
    eps = rng.standard_normal((nr, nh)) * error_std * np.sqrt(1 - rho ** 2)
    err = np.empty_like(eps)
    err[:, 0] = rng.standard_normal(nr) * error_std
    for t in range(1, nh):
        err[:, t] = rho * err[:, t - 1] + eps[:, t]
    err *= depth_error_scale(cell, truth["sm_l1"].isel(sel).drop_vars(drop, errors="ignore"))[
        :, None]
    spikes = rng.random((nr, nh)) < spike_fraction
    spike_size = np.where(spikes, rng.uniform(0.10, 0.25, (nr, nh)), 0.0)
    gap_st = np.zeros((n_st, nh), dtype=bool)
    n_gaps = rng.poisson(gaps_per_year * nh / 8766.0, n_st)
    for s in range(n_st):
        for _ in range(n_gaps[s]):
            g0 = rng.integers(0, nh)
            gap_st[s, g0:g0 + rng.integers(24, 240)] = True
    gap = gap_st[st]
    dims = ("station", "time")
    extra = xr.DataArray(offset, dims="station") + xr.DataArray(err + spike_size, dims=dims)
    sm = xr.DataArray(a, dims="station") * (hourly - mean_cell) + mean_cell + extra
    upper = 0.6 if static is None else (static["porosity"].isel(sel) + 0.05)
    sm = sm.clip(0.005, upper).where(~xr.DataArray(gap, dims=dims))
    flag = np.where(gap, "", np.where(spikes, "D06", "G"))
    names = np.array([f"S{k + 1:03d}" for k in range(n_st)])
    lat = np.round(truth["lat"].values[iy] + rng.uniform(-0.08, 0.08, n_st), 5)
    lon = np.round(truth["lon"].values[ix] + rng.uniform(-0.08, 0.08, n_st), 5)
    ids = [f"{names[k]}_{a_:.2f}-{b_:.2f}" for k, a_, b_ in rows]
    coords = {
        "station": ("station", ids), "time": ("time", hours), "site": ("station", names[st]),
        "network": ("station", [network] * nr), "lat": ("station", lat[st]),
        "lon": ("station", lon[st]), "cell_y": ("station", iy[st]),
        "cell_x": ("station", ix[st]), "depth_from": ("station", d0),
        "depth_to": ("station", d1), "instrument": ("station", ["Sim-Probe"] * nr),
    }
    if static is not None:
        for v in ("clay", "sand", "silt", "porosity", "elevation"):
            coords[v] = ("station", np.asarray(static[v].isel(sel).values, dtype=np.float64))
    else:
        coords["elevation"] = ("station", np.full(nr, 500.0))
    ds = xr.Dataset({"sm": sm.transpose(*dims).astype(np.float32), "flag": (dims, flag)},
                    coords=coords)
    ds["sm"].attrs = {"units": "m3 m-3", "long_name": "point-scale soil moisture at the "
                      "sensor depth"}
    ds.attrs = {"title": "simulated ISMN-like stations (sensors at several depths)",
                "source": "casm_cloud.simulate", "representativeness_error_std": error_std}
    if not isinstance(ds["sm"].data, da.Array):
        ds["sm"] = ds["sm"].load()
    return ds


def _header(net: str, st: str, lat: float, lon: float, elev: float, d0: float, d1: float,
            sensor: str) -> str:
    return f"{net} {net} {st} {lat:.5f} {lon:.5f} {elev:.1f} {d0:.4f} {d1:.4f} {sensor}\n"


def _static_csv(row: Mapping) -> str:
    head = ("quantity_name;unit;depth_from[m];depth_to[m];value;description;"
            "quantity_source_name;quantity_source_description;quantity_source_provider;"
            "quantity_source_version;quantity_source_resolution;quantity_source_timerange;"
            "quantity_source_url;\n")
    lines = [head]
    src = "SIM;casm_cloud simulated static map;casm_cloud;0.1;25km;None;None;\n"
    for q, key in (("saturation", "porosity"), ("clay fraction", "clay"),
                   ("sand fraction", "sand"), ("silt fraction", "silt")):
        if key in row:
            val = row[key] if key == "porosity" else 100.0 * row[key]
            unit = "m^3*m^-3" if key == "porosity" else "% weight"
            lines.append(f"{q};{unit};0.00;0.30;{val:.2f};;{src}")
    lines.append("land cover classification;;;;130;Grassland;" + src)
    lines.append("climate classification;;;;BSk;Arid - Steppe - Cold;" + src)
    return "".join(lines)


def write_ismn(stations: xr.Dataset, path: str, storage_options: Mapping | None = None) -> str:
    """Write stations in the ISMN header+values layout under ``path``.

    Parameters
    ----------
    stations : xarray.Dataset
        From :func:`simulate_stations` (``sm`` is computed here).
    path : str
        Local folder or fsspec URL; ``<path>/<network>/<station>/`` is made.
    storage_options : mapping, optional

    Returns
    -------
    str
        ``path``.
    """
    from casm_cloud.storage import join, url_to_fs

    fs, _ = url_to_fs(path, storage_options)
    sm = np.asarray(stations["sm"].values, dtype=np.float64)
    flags = np.asarray(stations["flag"].values)
    stamps = pd.DatetimeIndex(stations["time"].values).strftime("%Y/%m/%d %H:%M").to_numpy()
    for k, name in enumerate(stations["station"].values):
        c = {v: stations[v].values[k] for v in stations.coords if stations[v].dims == ("station",)}
        net = str(c["network"])
        ok = np.isfinite(sm[k])
        if not ok.any():
            continue
        t_ok = pd.DatetimeIndex(stations["time"].values[ok])
        sensor = str(c["instrument"])
        name = str(c.get("site", name))  # sensors of one station share its folder
        fname = (f"{net}_{net}_{name}_sm_{c['depth_from']:.6f}_{c['depth_to']:.6f}_{sensor}_"
                 f"{t_ok[0]:%Y%m%d}_{t_ok[-1]:%Y%m%d}.stm")
        folder = join(path, net, name)
        fs.makedirs(url_to_fs(folder, storage_options)[1], exist_ok=True)
        body = "\n".join(f"{s} {v:.4f} {f} M" for s, v, f in
                         zip(stamps[ok], sm[k][ok], flags[k][ok], strict=True))
        text = _header(net, str(name), float(c["lat"]), float(c["lon"]),
                       float(c["elevation"]), float(c["depth_from"]), float(c["depth_to"]),
                       sensor) + body + "\n"
        with fs.open(url_to_fs(join(folder, fname), storage_options)[1], "w") as f:
            f.write(text)
        with fs.open(url_to_fs(join(folder, f"{net}_{net}_{name}_static_variables.csv"),
                               storage_options)[1], "w") as f:
            f.write(_static_csv(c))
    return path

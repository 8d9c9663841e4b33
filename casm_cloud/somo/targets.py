"""SoMo.ml training targets: ISMN stations as daily, ERA5-rescaled layer soil moisture.

O & Orth (2021, Sci. Data 8, 170), "Training data":

* stations are read with the ``ismn`` package (:func:`casm_cloud.validation.read_ismn`);
  only values flagged ``G`` (good) are used; sub-daily values become daily means
  (UTC days), on days with at least six good values only (``min_subdaily``);
* a sensor with fewer than two months of such daily means over the targets'
  days (``min_days``, 60) is dropped before the sensor choice below, so the
  station's next sensor in the layer takes its place;
* per layer (0–10, 10–30, 30–50 cm, :data:`LAYERS`) a station contributes
  one sensor: the one at the layer's mid-depth (5, 20, 40 cm), else the one
  whose mid-depth is closest to it among the sensors lying inside the layer
  (ties: more good values, then the sensor id);
* each station's daily series is rescaled to the mean and standard deviation
  of its ERA5 cell's layer soil moisture over their common days;
  ERA5's ``swvl1..3`` cover 0–7, 7–28 and 28–100 cm (:data:`ERA5_LAYERS`), so
  the layer value is their depth-weighted average over the layer
  (:func:`era5_layers`);
* several stations in one cell are averaged (after rescaling).

Everything here is small (a few hundred stations × days) and eager.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.errors import UserError

__all__ = ["LAYERS", "LAYER_NAMES", "ERA5_LAYERS", "TargetError", "layer_weights",
           "era5_layers", "select_sensors", "daily_good", "rescale", "station_targets"]

log = logging.getLogger(__name__)

#: SoMo.ml's layers: name -> (top, bottom) in metres.
LAYERS: dict[str, tuple[float, float]] = {"sm_l1": (0.0, 0.10), "sm_l2": (0.10, 0.30),
                                          "sm_l3": (0.30, 0.50)}
LAYER_NAMES: tuple[str, ...] = tuple(LAYERS)
#: ERA5's soil layers: variable -> (top, bottom) in metres.
ERA5_LAYERS: dict[str, tuple[float, float]] = {"swvl1": (0.0, 0.07), "swvl2": (0.07, 0.28),
                                               "swvl3": (0.28, 1.00)}


class TargetError(UserError, ValueError):
    """Stations that cannot make SoMo.ml targets (names the layer, station or period)."""


def _cm(a: float) -> str:
    return f"{100 * a:g}"


def layer_weights(top: float, bottom: float) -> dict[str, float]:
    """Depth weights of ``swvl1..3`` for the layer ``top..bottom`` (they sum to 1)."""
    out = {}
    for v, (lo, hi) in ERA5_LAYERS.items():
        overlap = max(0.0, min(hi, bottom) - max(lo, top))
        if overlap > 0:
            out[v] = overlap / (bottom - top)
    return out


def era5_layers(era5: xr.Dataset, layers: Mapping[str, tuple[float, float]] = LAYERS
                ) -> xr.Dataset:
    """ERA5 soil moisture of the SoMo.ml layers by depth-weighted averaging (lazy).

    ``sm_l1 = 0.7 swvl1 + 0.3 swvl2`` (0–10 cm), ``sm_l2 = 0.9 swvl2 + 0.1 swvl3``
    (10–30 cm), ``sm_l3 = swvl3`` (30–50 cm).

    Raises
    ------
    TargetError
        If a needed ``swvl`` variable is missing.
    """
    out = xr.Dataset()
    for name, (top, bottom) in layers.items():
        w = layer_weights(top, bottom)
        lack = [v for v in w if v not in era5.data_vars]
        if lack:
            raise TargetError(f"ERA5 forcing lacks {lack} for layer {name} "
                              f"({_cm(top)}-{_cm(bottom)} cm)")
        out[name] = sum(era5[v].astype(np.float32) * np.float32(k) for v, k in w.items())
        out[name].attrs = {"units": "m3 m-3", "long_name": f"ERA5 volumetric soil water "
                           f"{_cm(top)}-{_cm(bottom)} cm (depth-weighted swvl)"}
    return out


def select_sensors(stations: xr.Dataset, layers: Mapping[str, tuple[float, float]] = LAYERS,
                   *, source: str = "sources.stations", n_days: pd.Series | None = None,
                   min_days: int = 0) -> pd.DataFrame:
    """One sensor per station and layer: the mid-depth one, else the closest inside the layer.

    With ``n_days`` (daily means per sensor id, :func:`daily_good`), sensors
    with at least ``min_days`` of them come first: a short sensor is chosen
    only when its station has no other in the layer.

    Parameters
    ----------
    stations : xarray.Dataset
        :func:`casm_cloud.validation.read_ismn` output (``soil_moisture`` and
        ``soil_moisture_flag`` over ``station`` (sensor rows) and ``time``).
    layers : mapping
        Layer name -> (top, bottom) in metres.
    n_days : pandas.Series, optional
        Days with a daily mean, indexed by sensor id (missing ids: 0).
    min_days : int
        Fewest of them for a sensor to rank before the station's short ones.

    Returns
    -------
    pandas.DataFrame
        One row per (layer, station): ``layer``, ``network``, ``station_name``,
        ``sensor`` (the row id), ``depth_from``, ``depth_to``, ``distance``
        (m from the mid-depth), ``lat``, ``lon``, ``n_good`` (good values)
        and ``n_days`` (-1 without ``n_days``).

    Raises
    ------
    TargetError
        If a layer has no sensor inside it at any station (names the layer
        and the depths the stations have).
    """
    flags = stations["soil_moisture_flag"].values
    good = (flags == "G") & np.isfinite(stations["soil_moisture"].values)
    frame = pd.DataFrame({
        "sensor": stations["station"].values.astype(str),
        "network": stations["network"].values.astype(str),
        "station_name": stations["station_name"].values.astype(str),
        "depth_from": stations["depth_from"].values.astype(float),
        "depth_to": stations["depth_to"].values.astype(float),
        "lat": stations["lat"].values.astype(float), "lon": stations["lon"].values.astype(float),
        "n_good": good.sum(axis=1),
    })
    frame["n_days"] = (-1 if n_days is None else
                       frame["sensor"].map(n_days).fillna(0).astype(int))
    frame["short"] = False if n_days is None else frame["n_days"] < min_days
    mid_of = (frame["depth_from"] + frame["depth_to"]) / 2
    rows = []
    for name, (top, bottom) in layers.items():
        mid = (top + bottom) / 2
        inside = frame[(frame["depth_from"] >= top - 1e-9) & (frame["depth_to"] <= bottom + 1e-9)
                       & (frame["n_good"] > 0)].copy()
        if inside.empty:
            have = sorted({f"{_cm(a)}-{_cm(b)} cm" for a, b in
                           zip(frame["depth_from"], frame["depth_to"], strict=True)})
            raise TargetError(f"{source}: no station has a sensor with good values inside "
                              f"layer {name} ({_cm(top)}-{_cm(bottom)} cm); the sensors are at "
                              f"{have}")
        inside["distance"] = (mid_of[inside.index] - mid).abs().round(6)
        inside = inside.sort_values(
            ["network", "station_name", "short", "distance", "n_good", "sensor"],
            ascending=[True, True, True, True, False, True])
        best = inside.groupby(["network", "station_name"], sort=True).head(1)
        rows.append(best.assign(layer=name))
    cols = ["layer", "network", "station_name", "sensor", "depth_from", "depth_to", "distance",
            "lat", "lon", "n_good", "n_days"]
    return pd.concat(rows, ignore_index=True)[cols]


def daily_good(stations: xr.Dataset, sensors, min_subdaily: int = 1) -> xr.DataArray:
    """Daily (UTC) means of the good-flagged (``G``) sub-daily values of ``sensors``.

    A day needs at least ``min_subdaily`` good values (SoMo.ml: 6).

    Returns
    -------
    xarray.DataArray
        ``(sensor, time)`` float64, NaN on days with fewer good values.
    """
    sub = stations.sel(station=list(sensors))
    v = sub["soil_moisture"].where(sub["soil_moisture_flag"] == "G").astype(np.float64)
    days = v.resample(time="1D")
    daily = days.mean().where(days.count() >= int(min_subdaily))
    return daily.rename(station="sensor")


def rescale(series: np.ndarray, reference: np.ndarray, min_overlap: int) -> np.ndarray | None:
    """``series`` rescaled to the mean and std of ``reference`` over their common days.

    ``None`` when they share fewer than ``min_overlap`` days or either is
    constant there.
    """
    both = np.isfinite(series) & np.isfinite(reference)
    if both.sum() < max(int(min_overlap), 2):
        return None
    s, r = series[both], reference[both]
    ss, rs = s.std(), r.std()
    if not ss > 0 or not rs > 0:
        return None
    return (series - s.mean()) / ss * rs + r.mean()


def station_targets(stations: xr.Dataset, window, era5_sm: xr.Dataset, *,
                    min_overlap: int = 30, min_subdaily: int = 6, min_days: int = 60,
                    layers: Mapping[str, tuple[float, float]] = LAYERS,
                    source: str = "sources.stations") -> tuple[xr.Dataset, pd.DataFrame]:
    """SoMo.ml targets per cell and layer from ISMN stations.

    Parameters
    ----------
    stations : xarray.Dataset
        :func:`casm_cloud.validation.read_ismn` output.
    window : casm_cloud.grid.GridWindow
        The recipe's window: stations outside it are left out.
    era5_sm : xarray.Dataset
        :func:`era5_layers` on the window (daily ``time``, ``y``, ``x``), loaded
        or lazy; its days are the targets' days.
    min_overlap : int
        Fewest common days of a station and its ERA5 cell for the rescaling.
    min_subdaily : int
        Fewest good sub-daily values of a day's mean (the paper: 6).
    min_days : int
        Fewest such days (over ``era5_sm``'s days) of a sensor (the paper: two
        months, 60); shorter sensors are dropped before the rescaling.
    layers : mapping

    Returns
    -------
    targets : xarray.Dataset
        ``sm_l1..`` over ``(cell, time)`` (NaN where a cell has no station of a
        layer), coordinates ``cell_y``, ``cell_x`` (window indices), ``lat``,
        ``lon`` of the cell and ``n_stations_<layer>``.
    table : pandas.DataFrame
        The selected sensors (:func:`select_sensors`) with ``cell_y``,
        ``cell_x``, ``used`` (rescaled and kept) and ``reason`` (why not:
        ``outside window``, ``min_days``, ``min_overlap``; empty when used).

    Raises
    ------
    TargetError
        A layer without any sensor, or without any station cell inside the
        window passing ``min_days`` and ``min_overlap`` (the message counts
        the stations each rule dropped).
    """
    times = era5_sm["time"].values.astype("datetime64[D]")
    daily = daily_good(stations, stations["station"].values, min_subdaily)
    daily = daily.reindex(time=times.astype("datetime64[ns]"))
    n_days = pd.Series(np.isfinite(daily.values).sum(axis=1), index=daily["sensor"].values)
    table = select_sensors(stations, layers, source=source, n_days=n_days, min_days=min_days)
    ny, nx = window.shape
    inside = []
    for lat, lon in zip(table["lat"], table["lon"], strict=True):
        try:
            r, c = window.to_rowcol(lat, lon)
            inside.append((int(r), int(c)))
        except ValueError:
            inside.append((-1, -1))
    table["cell_y"] = [r for r, _ in inside]
    table["cell_x"] = [c for _, c in inside]
    table["used"] = False
    table["reason"] = np.where(table["cell_y"] < 0, "outside window",
                               np.where(table["n_days"] < min_days, "min_days", ""))
    per_cell: dict[str, dict[tuple[int, int], list[np.ndarray]]] = {n: {} for n in layers}
    cells_needed = sorted({rc for rc in inside if rc[0] >= 0})
    ref = {}
    if cells_needed:
        yy = xr.DataArray([r for r, _ in cells_needed], dims="cell")
        xx = xr.DataArray([c for _, c in cells_needed], dims="cell")
        picked = era5_sm[list(layers)].isel(y=yy, x=xx).load()
        for k, rc in enumerate(cells_needed):
            ref[rc] = {n: picked[n].values[:, k].astype(np.float64) for n in layers}
    for i, row in table.iterrows():
        rc = (row["cell_y"], row["cell_x"])
        if row["reason"]:
            continue
        series = daily.sel(sensor=row["sensor"]).values
        scaled = rescale(series, ref[rc][row["layer"]], min_overlap)
        if scaled is None:
            table.loc[i, "reason"] = "min_overlap"
            continue
        table.loc[i, "used"] = True
        per_cell[row["layer"]].setdefault(rc, []).append(scaled)
    for name, (top, bottom) in layers.items():
        if not per_cell[name]:
            why = table.loc[table["layer"] == name, "reason"].value_counts()
            n_in = int(why.drop("outside window", errors="ignore").sum())
            raise TargetError(
                f"{source}: layer {name} ({_cm(top)}-{_cm(bottom)} cm) has no station cell: "
                f"{n_in} station(s) with a sensor in the layer lie inside the window "
                f"{window!r}; {int(why.get('min_days', 0))} have fewer than {min_days} days "
                f"with at least {min_subdaily} good values (targets.min_days, targets.min_subdaily), "
                f"{int(why.get('min_overlap', 0))} fewer than {min_overlap} such days in "
                f"common with ERA5 (targets.min_overlap)")
    cells = sorted(set().union(*[set(d) for d in per_cell.values()]))
    data, counts = {}, {}
    for name in layers:
        arr = np.full((len(cells), times.size), np.nan, dtype=np.float32)
        cnt = np.zeros(len(cells), dtype=np.int32)
        for k, rc in enumerate(cells):
            got = per_cell[name].get(rc)
            if got:
                with np.errstate(invalid="ignore"), _quiet():
                    arr[k] = np.nanmean(np.stack(got), axis=0)
                cnt[k] = len(got)
        data[name] = (("cell", "time"), arr, {
            "units": "m3 m-3", "long_name": f"ISMN soil moisture {_cm(layers[name][0])}-"
            f"{_cm(layers[name][1])} cm rescaled to ERA5 (mean of the cell's stations)"})
        counts[f"n_stations_{name}"] = ("cell", cnt)
    cy = np.array([r for r, _ in cells], dtype=np.int64)
    cx = np.array([c for _, c in cells], dtype=np.int64)
    ds = xr.Dataset(data, coords={
        "cell": np.arange(len(cells)), "time": times.astype("datetime64[ns]"),
        "cell_y": ("cell", cy), "cell_x": ("cell", cx),
        "lat": ("cell", np.asarray(window.lat)[cy]), "lon": ("cell", np.asarray(window.lon)[cx]),
        **counts})
    ds.attrs = {"title": "SoMo.ml training targets (ISMN, G flags, daily, rescaled to ERA5)",
                **window.identity()}
    return ds, table


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)

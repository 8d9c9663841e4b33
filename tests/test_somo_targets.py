"""SoMo.ml targets and CV: the depth rules, G flags, daily means, the ERA5 rescaling, stations
averaged per cell, spatial blocks, clear errors; and the fused EA-LSTM training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud.errors import UserError
from casm_cloud.grid import LatLonGrid
from casm_cloud.somo.cv import CVError, check_folds, cv_scores, spatial_folds
from casm_cloud.somo.targets import (
    TargetError,
    daily_good,
    era5_layers,
    layer_weights,
    rescale,
    select_sensors,
    station_targets,
)

WINDOW = LatLonGrid("ERA5_0p25").window(lat=(37.0, 38.0), lon=(-99.0, -98.0))  # 5 x 5 cells


def _stations(sensors, days=40, seed=0, flags=None):
    """A read_ismn-like dataset: sensors = [(station, depth_from, depth_to, lat, lon)]."""
    rng = np.random.default_rng(seed)
    time = pd.date_range("2015-01-01", periods=24 * days, freq="h")
    n = len(sensors)
    values = (0.25 + 0.05 * np.sin(np.arange(time.size) / 100.0)[None]
              + 0.01 * rng.standard_normal((n, time.size))).astype(np.float32)
    fl = np.full((n, time.size), "G", dtype=object) if flags is None else flags
    ids = [f"NET/{s}/Probe/{a:g}-{b:g}" for s, a, b, _, _ in sensors]
    return xr.Dataset(
        {"soil_moisture": (("station", "time"), values),
         "soil_moisture_flag": (("station", "time"), fl)},
        coords={"station": ids, "time": time, "network": ("station", ["NET"] * n),
                "station_name": ("station", [s for s, *_ in sensors]),
                "depth_from": ("station", [a for _, a, *_ in sensors]),
                "depth_to": ("station", [b for _, _, b, *_ in sensors]),
                "lat": ("station", [la for *_, la, _ in sensors]),
                "lon": ("station", [lo for *_, lo in sensors])})


def _era5_sm(days=40, seed=1):
    rng = np.random.default_rng(seed)
    time = pd.date_range("2015-01-01", periods=days, freq="D")
    ny, nx = WINDOW.shape
    data = {n: (("time", "y", "x"), (0.3 + 0.02 * k + 0.04 * rng.standard_normal(
        (days, ny, nx))).astype(np.float32)) for k, n in enumerate(("sm_l1", "sm_l2", "sm_l3"))}
    return xr.Dataset(data, coords={"time": time, **WINDOW.coords()})


def test_era5_layers_are_depth_weighted():
    assert layer_weights(0.0, 0.10) == pytest.approx({"swvl1": 0.7, "swvl2": 0.3})
    assert layer_weights(0.10, 0.30) == pytest.approx({"swvl2": 0.9, "swvl3": 0.1})
    assert layer_weights(0.30, 0.50) == pytest.approx({"swvl3": 1.0})
    ds = xr.Dataset({f"swvl{i}": ("time", np.full(3, v, np.float32)) for i, v in
                     ((1, 0.1), (2, 0.2), (3, 0.4))})
    out = era5_layers(ds)
    np.testing.assert_allclose(out["sm_l1"], 0.7 * 0.1 + 0.3 * 0.2, rtol=1e-6)
    np.testing.assert_allclose(out["sm_l2"], 0.9 * 0.2 + 0.1 * 0.4, rtol=1e-6)
    np.testing.assert_allclose(out["sm_l3"], 0.4, rtol=1e-6)
    with pytest.raises(TargetError, match="lacks \\['swvl3'\\] for layer sm_l2"):
        era5_layers(ds.drop_vars("swvl3"))


def test_sensor_selection_prefers_mid_depth_then_the_closest_inside_the_layer():
    lat, lon = 37.5, -98.5
    ds = _stations([
        ("A", 0.0, 0.05, lat, lon),      # mid 2.5 cm
        ("A", 0.05, 0.05, lat, lon),     # at 5 cm: layer 1's mid-depth -> chosen
        ("A", 0.15, 0.15, lat, lon),     # layer 2, 5 cm off
        ("A", 0.28, 0.28, lat, lon),     # layer 2, 8 cm off
        ("A", 0.25, 0.35, lat, lon),     # spans two layers: inside neither
        ("A", 0.80, 0.80, lat, lon),     # below every layer
        ("B", 0.0, 0.05, lat, lon),      # B: only a 0-5 cm probe in layer 1
        ("B", 0.50, 0.50, lat, lon),     # layer 3 (its bottom edge), 10 cm off
    ])
    t = select_sensors(ds).set_index(["layer", "station_name"])["sensor"]
    assert t[("sm_l1", "A")] == "NET/A/Probe/0.05-0.05"
    assert t[("sm_l2", "A")] == "NET/A/Probe/0.15-0.15"
    assert t[("sm_l1", "B")] == "NET/B/Probe/0-0.05"
    assert t[("sm_l3", "B")] == "NET/B/Probe/0.5-0.5"
    assert ("sm_l3", "A") not in t.index and ("sm_l2", "B") not in t.index


def test_a_layer_without_any_sensor_is_one_clear_error():
    ds = _stations([("A", 0.05, 0.05, 37.5, -98.5), ("A", 0.4, 0.4, 37.5, -98.5)])
    with pytest.raises(TargetError, match=r"sources.stations: no station has a sensor .* "
                                          r"layer sm_l2 \(10-30 cm\).*\['40-40 cm', '5-5 cm'\]"):
        select_sensors(ds)
    assert issubclass(TargetError, UserError)


def test_daily_means_use_good_flags_only():
    ds = _stations([("A", 0.05, 0.05, 37.5, -98.5)], days=3)
    flags = ds["soil_moisture_flag"].values.copy()
    ds["soil_moisture"][0, :24] = 0.2
    ds["soil_moisture"][0, 5] = 0.9          # a spike, flagged
    flags[0, 5] = "D06"
    flags[0, 24:48] = "C03"                  # a whole day flagged
    ds["soil_moisture_flag"] = (("station", "time"), flags)
    daily = daily_good(ds, ["NET/A/Probe/0.05-0.05"])
    assert daily.sizes["time"] == 3
    assert float(daily[0, 0]) == pytest.approx(0.2, abs=1e-6)
    assert np.isnan(daily[0, 1])
    assert np.isfinite(daily[0, 2])


def test_rescaling_takes_the_reference_mean_and_std_over_the_overlap():
    rng = np.random.default_rng(0)
    s, r = rng.normal(0.2, 0.05, 200), rng.normal(0.35, 0.02, 200)
    s[:50] = np.nan
    r[150:] = np.nan
    out = rescale(s, r, min_overlap=30)
    both = np.isfinite(s) & np.isfinite(r)
    assert out[both].mean() == pytest.approx(r[both].mean())
    assert out[both].std() == pytest.approx(r[both].std())
    assert np.isfinite(out[150:]).all()  # station days outside the overlap are kept
    assert rescale(s, r, min_overlap=150) is None


def test_station_targets_average_stations_of_a_cell_and_drop_those_outside():
    lat, lon = float(WINDOW.lat[2]), float(WINDOW.lon[1])
    ds = _stations([("A", 0.05, 0.05, lat, lon), ("A", 0.2, 0.2, lat, lon),
                    ("A", 0.4, 0.4, lat, lon), ("B", 0.05, 0.05, lat + 0.05, lon - 0.05),
                    ("C", 0.05, 0.05, 45.0, -80.0),          # outside the window
                    ("D", 0.0, 0.05, float(WINDOW.lat[0]), float(WINDOW.lon[4]))])
    era5 = _era5_sm()
    targets, table = station_targets(ds, WINDOW, era5, min_overlap=10, min_days=30)
    assert targets.sizes["cell"] == 2
    cells = {(int(y), int(x)): k for k, (y, x) in
             enumerate(zip(targets["cell_y"].values, targets["cell_x"].values, strict=True))}
    assert set(cells) == {(2, 1), (0, 4)}
    k = cells[(2, 1)]
    assert int(targets["n_stations_sm_l1"][k]) == 2 and int(targets["n_stations_sm_l2"][k]) == 1
    assert int(targets["n_stations_sm_l2"][cells[(0, 4)]]) == 0
    assert np.isnan(targets["sm_l2"][cells[(0, 4)]]).all()
    # each station rescaled to the cell's ERA5 layer, then averaged
    ref = era5["sm_l1"][:, 2, 1].values
    parts = [rescale(daily_good(ds, [s]).values[0], ref, 10) for s in
             ("NET/A/Probe/0.05-0.05", "NET/B/Probe/0.05-0.05")]
    np.testing.assert_allclose(targets["sm_l1"][k], np.mean(parts, axis=0), rtol=1e-5)
    assert not table.set_index("station_name").loc["C", "used"]


def test_a_layer_without_a_station_cell_is_one_clear_error():
    lat, lon = float(WINDOW.lat[2]), float(WINDOW.lon[1])
    ds = _stations([("A", 0.05, 0.05, lat, lon), ("A", 0.2, 0.2, lat, lon),
                    ("B", 0.4, 0.4, 45.0, -80.0)])           # layer 3 only outside
    with pytest.raises(TargetError, match="layer sm_l3 \\(30-50 cm\\) has no station cell"):
        station_targets(ds, WINDOW, _era5_sm(), min_overlap=10, min_days=30)


def test_a_daily_mean_needs_six_good_sub_daily_values():
    ds = _stations([("A", 0.05, 0.05, 37.5, -98.5)], days=3)
    flags = ds["soil_moisture_flag"].values.copy()
    flags[0, 6:24] = "D06"                   # day 1: six good values (00-05 h)
    flags[0, 24 + 5:48] = "C03"              # day 2: five good values (00-04 h)
    ds["soil_moisture_flag"] = (("station", "time"), flags)
    ds["soil_moisture"][0, 48 + 6:] = np.nan  # day 3: six values, the others missing
    sensor = ["NET/A/Probe/0.05-0.05"]
    daily = daily_good(ds, sensor, min_subdaily=6)
    v = ds["soil_moisture"].values[0].astype(np.float64)
    assert float(daily[0, 0]) == pytest.approx(v[:6].mean(), rel=1e-12)
    assert np.isnan(daily[0, 1])
    assert float(daily[0, 2]) == pytest.approx(v[48:54].mean(), rel=1e-12)
    assert np.isfinite(daily_good(ds, sensor, min_subdaily=5)[0, 1])


def test_a_sensor_needs_two_months_of_daily_means_before_the_rescaling():
    """60 days of six good values: used; 59 (the 60th day has five): dropped, and the station's
    other sensor in the layer takes its place when it has the days."""
    lat, lon = float(WINDOW.lat[2]), float(WINDOW.lon[1])
    ds = _stations([("A", 0.05, 0.05, lat, lon), ("A", 0.2, 0.2, lat, lon),
                    ("A", 0.4, 0.4, lat, lon),
                    ("B", 0.05, 0.05, float(WINDOW.lat[0]), float(WINDOW.lon[4])),
                    ("C", 0.05, 0.05, float(WINDOW.lat[4]), float(WINDOW.lon[0])),
                    ("C", 0.0, 0.05, float(WINDOW.lat[4]), float(WINDOW.lon[0]))], days=80)
    flags = ds["soil_moisture_flag"].values.copy()
    hour = np.arange(ds.sizes["time"]) % 24
    day = np.arange(ds.sizes["time"]) // 24
    flags[3, day >= 60] = "C03"                           # B: days 0-59 good
    flags[4, day >= 59] = "C03"                           # C at 5 cm: days 0-58 good ...
    flags[4, (day == 59) & (hour < 5)] = "G"              # ... and day 59 has five values
    flags[5, day >= 70] = "C03"                           # C at 0-5 cm: 70 days
    ds["soil_moisture_flag"] = (("station", "time"), flags)
    era5 = _era5_sm(days=80)
    targets, table = station_targets(ds, WINDOW, era5, min_overlap=10)   # the paper's rules
    t = table[table["layer"] == "sm_l1"].set_index("station_name")
    assert t.loc["B", "n_days"] == 60 and t.loc["B", "used"] and t.loc["B", "reason"] == ""
    assert t.loc["C", "sensor"] == "NET/C/Probe/0-0.05" and t.loc["C", "used"]
    assert t.loc["C", "n_days"] == 70
    assert int(targets["n_stations_sm_l1"].sum()) == 3
    # C's mid-depth sensor alone: 59 days, dropped with its reason; 60 with five values a day
    alone = ds.isel(station=[0, 1, 2, 4])
    _, table = station_targets(alone, WINDOW, era5, min_overlap=10)
    row = table[table["layer"] == "sm_l1"].set_index("station_name").loc["C"]
    assert row["n_days"] == 59 and not row["used"] and row["reason"] == "min_days"
    _, table = station_targets(alone, WINDOW, era5, min_overlap=10, min_subdaily=5)
    row = table[table["layer"] == "sm_l1"].set_index("station_name").loc["C"]
    assert row["n_days"] == 60 and row["used"]
    with pytest.raises(TargetError, match=r"layer sm_l1 .* 3 have fewer than 81 days with at "
                                          r"least 6 good values \(targets.min_days"):
        station_targets(ds, WINDOW, era5, min_overlap=10, min_days=81)


# ---- the rules on a real ISMN download (Hawaii, SCAN 5 cm probes, 2017-2018) ---------------
@pytest.fixture(scope="module")
def hawaii(real_data, tmp_path_factory):
    from casm_cloud.sources.tuw_ts import open_tuw_ts
    from casm_cloud.validation.stations import read_ismn

    folder = real_data / "qa4sm_hawaii"
    if not (folder / "ISMN_V20250617").is_dir() or not (folder / "ERA5").is_dir():
        pytest.skip(f"{folder}: the Hawaii ISMN download and ERA5 series are absent")
    ds = read_ismn(folder / "ISMN_V20250617", depth=(0.0, 0.5),
                   meta_path=tmp_path_factory.mktemp("ismn-meta"))
    era5 = open_tuw_ts(str(folder / "ERA5" / "ERA5_20190613"), variables=["swvl1"]).load()
    window = LatLonGrid("ERA5_0p25").window(lat=(18.9, 21.6), lon=(-156.1, -154.8))
    grid = np.full((era5.sizes["time"], *window.shape), np.nan, np.float32)
    for k in range(era5.sizes["location"]):     # the real ERA5 series on their 0.25 deg cells
        try:
            r, c = window.to_rowcol(float(era5["lat"][k]), float(era5["lon"][k]))
        except ValueError:                      # a cell off the Big Island
            continue
        grid[:, r, c] = era5["swvl1"].values[k]
    days = era5["time"].values.astype("datetime64[D]").astype("datetime64[ns]")
    sm = xr.Dataset({"sm_l1": (("time", "y", "x"), grid)}, coords={"time": days,
                                                                   **window.coords()})
    return ds, window, sm


def _pandas_days(ds, sensor, days, min_subdaily):
    """Days with at least ``min_subdaily`` G-flagged values: pandas, independently."""
    s = ds.sel(station=sensor)
    v = pd.Series(s["soil_moisture"].values, index=s["time"].values)
    good = v.where(s["soil_moisture_flag"].values == "G").dropna()
    count = good.groupby(good.index.floor("D")).count().reindex(days, fill_value=0)
    return int((count >= min_subdaily).sum()), int(((count > 0) & (count < min_subdaily)).sum())


def test_the_rules_on_real_ismn_stations(hawaii):
    ds, window, sm = hawaii
    layer = {"sm_l1": (0.0, 0.10)}
    _, table = station_targets(ds, window, sm, layers=layer, min_overlap=30)
    t = table.set_index("station_name")
    assert set(t.index) == {"Kainaliu", "Kukuihaele", "PuaAkala", "SilverSword"}  # SCAN 5 cm
    short_days = 0
    for name, row in t.iterrows():
        n, partial = _pandas_days(ds, row["sensor"], pd.DatetimeIndex(sm["time"].values), 6)
        assert row["n_days"] == n, name
        short_days += partial
    assert short_days > 0                   # real days with 1-5 good values are left out
    puaakala = int(t.loc["PuaAkala", "n_days"])
    print("days with >= 6 good values:", t["n_days"].to_dict(), "; days with 1-5 dropped:",
          short_days)
    assert puaakala < 730                   # the record has gaps in 2017-2018
    assert t.loc["PuaAkala", "used"]
    assert t.loc["Kainaliu", "reason"] == "min_overlap"  # its coastal cell has no ERA5 series
    # at the threshold: PuaAkala's own count keeps it, one more day drops it
    for min_days, used in ((puaakala, True), (puaakala + 1, False)):
        _, table = station_targets(ds, window, sm, layers=layer, min_days=min_days)
        row = table.set_index("station_name").loc["PuaAkala"]
        assert row["used"] == used and row["reason"] == ("" if used else "min_days")


def test_spatial_folds_keep_blocks_whole_and_balance_cells():
    rng = np.random.default_rng(0)
    cy, cx = rng.integers(0, 20, 60), rng.integers(0, 20, 60)
    folds = spatial_folds(cy, cx, 5, 4, seed=1)
    assert set(folds) == set(range(5))
    blocks = pd.DataFrame({"b": (cy // 4) * 100 + cx // 4, "f": folds})
    assert (blocks.groupby("b")["f"].nunique() == 1).all()
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 4
    np.testing.assert_array_equal(folds, spatial_folds(cy, cx, 5, 4, seed=1))


def test_an_empty_cv_fold_is_one_clear_error():
    with pytest.raises(CVError, match="cv.folds=5: .* only 2 spatial block.*fold 2 would be "
                                      "empty"):
        spatial_folds([0, 0, 1, 9], [0, 1, 1, 9], 5, 4)
    folds = np.array([0, 0, 1, 1, 2, 2])
    has = {"sm_l1": np.ones(6, bool), "sm_l2": np.array([1, 1, 1, 1, 0, 0], bool)}
    with pytest.raises(CVError, match="fold 2 holds no station cell of layer sm_l2"):
        check_folds(folds, has, 3)


def test_cv_table_has_each_fold_and_the_mean_per_layer():
    per_cell = pd.DataFrame({"layer": ["sm_l1"] * 4, "fold": [0, 0, 1, 1], "cell": range(4),
                             "R": [0.8, 0.6, 0.9, 0.7], "NRMSE": [0.1, 0.3, 0.2, 0.2],
                             "rel_bias": [-0.1, 0.1, 0.2, 0.0],
                             "anomaly_R": [0.5, 0.5, 0.6, 0.4]})
    t = cv_scores(per_cell).set_index("fold")
    assert t.loc["0", "R"] == pytest.approx(0.7) and t.loc["1", "R"] == pytest.approx(0.8)
    assert t.loc["0", "rel_bias"] == pytest.approx(0.0) and t.loc["1", "NRMSE"] == 0.2
    assert t.loc["mean", "R"] == pytest.approx(0.75)
    assert t.loc["mean", "n_cells"] == 4


def test_fused_training_keeps_an_exact_ea_lstm():
    import torch

    from casm_cloud.models.ealstm import EALSTM
    from casm_cloud.somo.training import fit_ealstm, from_lstm

    torch.manual_seed(0)
    m = EALSTM(4, 3, 6)
    back = EALSTM(4, 3, 6)
    from_lstm(back, *m.as_lstm())
    for a, b in zip(m.state_dict().values(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    rng = np.random.default_rng(0)
    data = {"dynamic": rng.normal(size=(5, 120, 4)).astype(np.float32),
            "static": rng.normal(size=(5, 3)).astype(np.float32)}
    data["target"] = np.cumsum(data["dynamic"][..., 0], axis=1).astype(np.float32)
    kw = dict(hidden=6, dropout=0.5, initial_forget_bias=5.0, window=15, epochs=2,
              batch_size=32, lr=1e-2, samples_per_epoch=64)
    model, scaler, hist = fit_ealstm(data, np.arange(4), (20, 120), seed=3, **kw)
    again, _, _ = fit_ealstm(data, np.arange(4), (20, 120), seed=3, **kw)
    assert all(torch.equal(a, b) for a, b in
               zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    lstm, head = model.as_lstm()
    assert torch.count_nonzero(lstm.weight_ih_l0[:6, :4]) == 0     # input gate: statics only
    assert torch.count_nonzero(lstm.weight_ih_l0[6:, 4:]) == 0     # other gates: no statics
    x, s = torch.randn(7, 15, 4), torch.randn(7, 3)
    with torch.no_grad():
        _, (h, _) = lstm(torch.cat([x, s[:, None].expand(-1, 15, -1)], 2))
        np.testing.assert_allclose(head(h[-1]).numpy(), model(x, s).numpy(), atol=1e-5)
    assert len(hist) == 2 and scaler["n_samples"] > 0


def test_simulated_stations_at_several_depths_read_back_through_ismn(tmp_path):
    from casm_cloud.simulate import simulate
    from casm_cloud.simulate.stations import SOMO_DEPTHS, simulate_stations, write_ismn
    from casm_cloud.validation.stations import read_ismn

    src = simulate(WINDOW, "2015-01-01", "2015-03-31", seed=0, sources=["truth", "static"])
    st = simulate_stations(src["truth"], n_stations=4, seed=0, static=src["static"].load(),
                           depths=SOMO_DEPTHS, shared_cells=1)
    assert st.sizes["station"] > 5 and len(set(st["site"].values)) == 5
    write_ismn(st, str(tmp_path / "ismn"))
    ds = read_ismn(tmp_path / "ismn", depth=(0.0, 1.0), meta_path=tmp_path / "meta")
    assert sorted(set(ds["station_name"].values)) == sorted(set(st["site"].values))
    table = select_sensors(ds)
    assert set(table["layer"]) == {"sm_l1", "sm_l2", "sm_l3"}
    mids = table.assign(mid=(table["depth_from"] + table["depth_to"]) / 2)
    assert (mids[mids["layer"] == "sm_l1"]["mid"] <= 0.1).all()


def test_predict_last_n_scores_the_window_tail_inside_the_period_only():
    import torch

    from casm_cloud.somo.training import fit_ealstm

    rng = np.random.default_rng(1)
    data = {"dynamic": rng.normal(size=(4, 100, 3)).astype(np.float32),
            "static": rng.normal(size=(4, 2)).astype(np.float32)}
    data["target"] = np.cumsum(data["dynamic"][..., 0], axis=1).astype(np.float32)
    kw = dict(hidden=5, dropout=0.5, initial_forget_bias=5.0, window=12, epochs=2,
              batch_size=16, lr=1e-2, samples_per_epoch=48, seed=2)

    def weights(d, **extra):
        model, _, _ = fit_ealstm(d, np.arange(3), (30, 100), **kw, **extra)
        return list(model.state_dict().values())

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    paper = weights(data)
    assert same(paper, weights(data, predict_last_n=1))    # the paper's: the last day only
    tail = weights(data, predict_last_n=10)
    assert not same(paper, tail)                           # the window's last 10 days scored
    poisoned = dict(data, target=data["target"].copy())
    poisoned["target"][:, :30] = 1e6                       # days before the period
    assert same(tail, weights(poisoned, predict_last_n=10))

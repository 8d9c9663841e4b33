"""Vectorised metrics against pytesmo, station by station, on seeded data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pytesmo import metrics as pm
from pytesmo.time_series.filtering import moving_average

from casm_cloud.validation import metrics as vm


def _pairs(seed: int = 0, n_station: int = 6, n_time: int = 400, freq: str = "3D"):
    rng = np.random.default_rng(seed)
    time = pd.date_range("2015-04-01", periods=n_time, freq=freq)
    t = np.arange(n_time)
    truth = 0.25 + 0.08 * np.sin(2 * np.pi * t / 120.0)[None, :] + 0.03 * rng.standard_normal(
        (n_station, n_time))
    y = truth + 0.02 * rng.standard_normal((n_station, n_time))
    x = 0.9 * truth + 0.03 + 0.04 * rng.standard_normal((n_station, n_time))
    # gaps: random, and a long gap on one station
    x[rng.random(x.shape) < 0.3] = np.nan
    y[rng.random(y.shape) < 0.2] = np.nan
    y[2, 100:180] = np.nan
    coords = {"station": np.arange(n_station), "time": time}
    return (xr.DataArray(x.astype(np.float32), dims=("station", "time"), coords=coords),
            xr.DataArray(y, dims=("station", "time"), coords=coords))


def _reference(x: xr.DataArray, y: xr.DataArray, fn) -> np.ndarray:
    out = []
    for s in x.station.values:
        xs = x.sel(station=s).to_series().astype(np.float64)
        ys = y.sel(station=s).to_series()
        ok = xs.notna() & ys.notna()
        out.append(fn(xs[ok], ys[ok]))
    return np.array(out)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (vm.pearson_r, lambda a, b: pm.pearson_r(a.values, b.values)),
        (vm.rmse, lambda a, b: pm.rmsd(a.values, b.values)),
        (vm.ubrmse, lambda a, b: pm.ubrmsd(a.values, b.values)),
        (vm.bias, lambda a, b: pm.bias(a.values, b.values)),
        (vm.nrmsd, lambda a, b: pm.nrmsd(a.values, b.values)),
        # the SoMo.ml paper's, over the mean of the reference (pytesmo's pieces)
        (vm.nrmse, lambda a, b: pm.rmsd(a.values, b.values) / b.values.mean()),
        (vm.rel_bias, lambda a, b: pm.bias(a.values, b.values) / b.values.mean()),
        (vm.r2, lambda a, b: pm.nash_sutcliffe(b.values, a.values)),
    ],
)
def test_metric_equals_pytesmo(ours, theirs):
    x, y = _pairs()
    got = ours(x, y, dim="time")
    assert got.dims == ("station",)
    np.testing.assert_allclose(got.values, _reference(x, y, theirs), rtol=0, atol=1e-9)


def test_anomaly_r_pair_first_equals_pytesmo_moving_average_of_the_pairs():
    x, y = _pairs(seed=3, n_time=900, freq="1D")

    def ref(a, b):
        aa = a - moving_average(a, window_size=35, min_obs=10)
        ab = b - moving_average(b, window_size=35, min_obs=10)
        ok = aa.notna() & ab.notna()
        return pm.pearson_r(aa[ok].values, ab[ok].values)

    got = vm.anomaly_r(x, y, pair_first=True)
    expected = _reference(x, y, ref)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(got.values, expected, atol=1e-9)


def test_anomaly_r_default_takes_each_series_anomalies_on_its_own():
    """The papers' rule (and pytesmo's anomaly adapter): anomalies of each whole series,
    then pairing; it differs from anomalies of the pairs where the gaps differ."""
    x, y = _pairs(seed=3, n_time=900, freq="1D")
    expected = []
    for s in x.station.values:
        xs = x.sel(station=s).to_series().astype(np.float64)
        ys = y.sel(station=s).to_series()
        ax = xs - moving_average(xs.dropna(), window_size=35, min_obs=10).reindex(xs.index)
        ay = ys - moving_average(ys.dropna(), window_size=35, min_obs=10).reindex(ys.index)
        ok = ax.notna() & ay.notna()
        expected.append(pm.pearson_r(ax[ok].values, ay[ok].values))
    got = vm.anomaly_r(x, y)
    np.testing.assert_allclose(got.values, np.array(expected), atol=1e-9)
    paired = vm.anomaly_r(x, y, pair_first=True)
    assert np.abs(got.values - paired.values).max() > 1e-4
    np.testing.assert_allclose(vm.pair_metrics(x, y)["anomaly_R"].values, got.values)


def test_anomaly_r_takes_each_series_anomalies_from_its_whole_record():
    """Different time axes: a product longer than the station record still enters the windows
    near the record's ends (pytesmo's AnomalyAdapter reads each whole series); cutting the
    product to the record first gives another R."""
    rng = np.random.default_rng(11)
    t = pd.date_range("2015-01-01", periods=500, freq="1D")
    signal = 0.05 * np.sin(2 * np.pi * np.arange(500) / 23.0) + 0.2
    xs = pd.Series(signal + 0.02 * rng.standard_normal(500), index=t)
    ys = pd.Series(signal + 0.02 * rng.standard_normal(500), index=t).iloc[200:260]
    ys[rng.random(ys.size) < 0.2] = np.nan
    ax = xs - moving_average(xs, window_size=35, min_obs=10)
    ay = ys - moving_average(ys.dropna(), window_size=35, min_obs=10).reindex(ys.index)
    ok = ax.reindex(ay.index).notna() & ay.notna()
    expected = pm.pearson_r(ax.reindex(ay.index)[ok].values, ay[ok].values)

    def da(s):
        return xr.DataArray(s.values, dims="time", coords={"time": s.index})

    got = float(vm.anomaly_r(da(xs), da(ys)))
    assert got == pytest.approx(expected, abs=1e-9)
    cut = float(vm.anomaly_r(da(xs.loc[ys.index[0]:ys.index[-1]]), da(ys)))
    assert abs(cut - got) > 1e-3
    assert float(vm.anomaly_r(da(ys), da(xs))) == pytest.approx(got, abs=1e-12)  # symmetric


def test_anomaly_matches_moving_average_on_irregular_times():
    rng = np.random.default_rng(7)
    t = pd.to_datetime("2016-01-01") + pd.to_timedelta(np.sort(rng.uniform(0, 400, 300)), "D")
    v = rng.random(300)
    v[rng.random(300) < 0.2] = np.nan
    s = pd.Series(v, index=t)
    expected = s - moving_average(s, window_size=35, min_obs=10)
    got = vm.anomaly(xr.DataArray(v, dims="time", coords={"time": t}))
    np.testing.assert_allclose(got.values, expected.values, atol=1e-12)


def test_metrics_are_lazy_and_vectorised_over_grid_cells():
    import dask.array as da

    x, y = _pairs(seed=1, n_station=12)
    grid_x = x.data.reshape(3, 4, -1)
    gx = xr.DataArray(da.from_array(grid_x, chunks=(1, 4, -1)), dims=("y", "x", "time"),
                      coords={"time": x.time})
    gy = xr.DataArray(y.values.reshape(3, 4, -1), dims=("y", "x", "time"),
                      coords={"time": x.time})
    for name, fn in vm.METRICS.items():
        out = fn(gx, gy)
        assert out.dims == ("y", "x"), name
        assert hasattr(out.data, "dask"), f"{name} computed eagerly"
        flat = fn(x, y).values.reshape(3, 4)
        np.testing.assert_allclose(out.values, flat, atol=1e-12, err_msg=name)


def test_metrics_stream_over_time_chunks_without_rechunking_the_record(monkeypatch):
    """Chunked along time (as a product is), the moments of each chunk are merged: the same
    metrics as in memory, also where whole chunks of a series are missing, and no task
    reads more than one chunk of the record."""
    x, y = _pairs(seed=11, n_station=9, n_time=700, freq="1D")
    x = x.copy(data=x.values)
    x[:3, 100:400] = np.nan          # whole chunks without a pair for some stations
    x[3, :] = np.nan                 # a station without any pair
    gx = x.chunk({"station": 4, "time": 64})
    gy = y.chunk({"station": 3, "time": 100})  # other chunks than x: aligned to x's
    for name, fn in vm.METRICS.items():
        got = fn(gx, gy)
        want = fn(x, y).values
        np.testing.assert_allclose(got.values, want, rtol=1e-11, atol=1e-13, err_msg=name)
        np.testing.assert_array_equal(np.isnan(got.values), np.isnan(want), err_msg=name)
    from casm_cloud.validation import moments

    seen, kernel = [], moments._call_block_moments
    monkeypatch.setattr(moments, "_call_block_moments",
                        lambda a, b: seen.append(a.shape[-1]) or kernel(a, b))
    vm.pair_moments(gx, gy)["n"].compute(scheduler="sync")
    assert seen and max(seen) <= 64, seen  # x's time chunks (y is aligned to them)


def test_pairs_with_a_nan_on_either_side_are_left_out():
    time = pd.date_range("2020-01-01", periods=5)
    x = xr.DataArray([0.1, np.nan, 0.3, 0.4, 0.5], dims="time", coords={"time": time})
    y = xr.DataArray([0.1, 0.2, np.nan, 0.5, 0.4], dims="time", coords={"time": time})
    assert int(vm.n_pairs(x, y)) == 3
    np.testing.assert_allclose(float(vm.bias(x, y)), (0.0 - 0.1 + 0.1) / 3, atol=1e-12)
    np.testing.assert_allclose(float(vm.rmse(x, y)), np.sqrt(0.02 / 3), atol=1e-12)


def test_missing_dimension_is_a_clear_error():
    x = xr.DataArray(np.zeros(3), dims="date")
    with pytest.raises(ValueError, match="no dimension 'time'"):
        vm.rmse(x, x)


def test_pair_metrics_equals_the_single_metrics():
    x, y = _pairs(seed=5, n_time=600, freq="1D")
    all_ = vm.pair_metrics(x, y)
    assert list(all_.data_vars) == ["n", *vm.METRICS]
    np.testing.assert_array_equal(all_["n"].values, vm.n_pairs(x, y).values)
    for name, fn in vm.METRICS.items():
        np.testing.assert_allclose(all_[name].values, fn(x, y).values, atol=1e-12, err_msg=name)


def test_metrics_run_in_dask_worker_processes():
    """The numba kernels run inside worker processes (a pickled gufunc segfaults there)."""
    from distributed import Client, LocalCluster

    x, y = _pairs(seed=3)
    x, y = x.chunk({"station": 3}), y.chunk({"station": 3})
    here = {name: fn(x, y).values for name, fn in vm.METRICS.items()}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        there = {name: fn(x, y).values for name, fn in vm.METRICS.items()}
    for name in here:
        np.testing.assert_array_equal(there[name], here[name], err_msg=name)

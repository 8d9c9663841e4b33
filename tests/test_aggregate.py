"""Anchored n-day means and daily means against a pandas reference."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud.aggregate import bin_start, daily_mean, nday_mean
from casm_cloud.grid import EASE2Grid
from casm_cloud.testing import make_tb_dataset


def _no_compute(dsk, keys, **kwargs):
    raise AssertionError("a dask graph was computed")


def _dataset(times, seed=0, nan_fraction=0.3, chunk=17, shape=(2, 3)):
    rng = np.random.default_rng(seed)
    v = rng.normal(280.0, 10.0, (len(times), *shape)).astype(np.float32)
    v[rng.random(v.shape) < nan_fraction] = np.nan
    if nan_fraction:
        v[40:80, 0, 0] = np.nan  # a pixel with whole bins missing
    ds = xr.Dataset({"tb": (("time", "y", "x"), v)}, coords={"time": times})
    return ds.chunk({"time": chunk}) if chunk else ds


def _pandas_reference(ds, n, anchor, min_count):
    """Per pixel pandas resample with ``origin=anchor`` (the reference)."""
    values = ds["tb"].values
    out = None
    for j in range(values.shape[1]):
        for i in range(values.shape[2]):
            s = pd.Series(values[:, j, i].astype(np.float64), index=pd.DatetimeIndex(ds.time.values))
            r = s.resample(f"{n}D", origin=pd.Timestamp(anchor))
            mean = r.mean().where(r.count() >= min_count)
            if out is None:
                out = np.full((len(mean), *values.shape[1:]), np.nan)
                index = mean.index
            out[:, j, i] = mean.values
    return index, out


@pytest.mark.parametrize(("n", "min_count", "freq", "chunk"), [
    (3, 1, "11h", 17),
    (3, 2, "5h", 10),
    (5, 3, "7h", 23),
    (1, 2, "3h", 9),
])
def test_matches_pandas_with_nans_across_chunk_edges(n, min_count, freq, chunk):
    times = pd.date_range("2010-01-05 06:00", periods=240, freq=freq)
    ds = _dataset(times, seed=n * 10 + min_count, chunk=chunk)
    out = nday_mean(ds, n, min_count=min_count)
    index, ref = _pandas_reference(ds, n, "2002-01-01", min_count)
    np.testing.assert_array_equal(out.time.values, index.values.astype("datetime64[ns]"))
    np.testing.assert_allclose(out["tb"].values, ref.astype(np.float32), rtol=1e-6, equal_nan=True)
    assert out["tb"].dtype == np.float32
    assert np.isnan(ref).any() and np.isfinite(ref).any()  # the test exercises both


def test_is_lazy_and_streams_by_chunk():
    times = pd.date_range("2010-01-01", periods=300, freq="1D")
    ds = _dataset(times, chunk=30)
    with dask.config.set(scheduler=_no_compute):
        out = nday_mean(ds, 3)
    assert out["tb"].chunks is not None
    # One output chunk per input chunk: each is reduced on its own.
    assert len(out["tb"].chunks[0]) == len(ds["tb"].chunks[0])
    assert sum(out["tb"].chunks[0]) == 100


def test_numpy_input_becomes_lazy():
    times = pd.date_range("2010-01-01", periods=30, freq="12h")
    ds = _dataset(times, chunk=None)
    with dask.config.set(scheduler=_no_compute):
        out = nday_mean(ds, 3)
    assert out["tb"].chunks is not None
    _, ref = _pandas_reference(ds, 3, "2002-01-01", 1)
    np.testing.assert_allclose(out["tb"].values, ref, rtol=1e-6, equal_nan=True)


def test_different_start_dates_land_in_the_same_bins():
    win = EASE2Grid("M25").window_by_name("tiny").subwindow(slice(0, 3), slice(0, 4))
    full = make_tb_dataset(win, pd.date_range("2010-03-01", "2010-06-30", freq="1D"), seed=3,
                           time_chunk=11)
    # Two runs over overlapping periods starting on different (non-bin) days.
    a = nday_mean(full.sel(time=slice("2010-03-02", "2010-05-20")), 3, min_count=1)
    b = nday_mean(full.sel(time=slice("2010-04-01", "2010-06-30")).chunk({"time": 7}), 3,
                  min_count=1)
    assert (a.time.values - np.datetime64("2002-01-01")).astype("timedelta64[D]").astype(int)[0] % 3 == 0
    common = np.intersect1d(a.time.values, b.time.values)
    assert common.size > 10
    # Interior bins (complete in both) are identical.
    inner = common[1:-1]
    xr.testing.assert_allclose(a.sel(time=inner), b.sel(time=inner))
    np.testing.assert_array_equal(bin_start(b.time.values, 3), b.time.values)


def test_gap_bins_are_present_and_nan():
    t1 = pd.date_range("2010-01-01", periods=20, freq="6h")
    t2 = pd.date_range("2010-01-20", periods=20, freq="6h")  # a gap of several bins
    ds = _dataset(t1.append(t2), nan_fraction=0.0, chunk=8)
    out = nday_mean(ds, 3).compute()
    step = np.diff(out.time.values).astype("timedelta64[D]").astype(int)
    assert set(step) == {3}
    empty = out.sel(time=slice("2010-01-09", "2010-01-17"))
    assert empty.sizes["time"] >= 2 and np.isnan(empty["tb"].values).all()


def test_daily_mean_needs_six_values_per_day():
    times = pd.date_range("2012-07-01", periods=24 * 4, freq="1h")
    ds = _dataset(times, nan_fraction=0.0, chunk=13)
    v = ds["tb"].values.copy()
    v[24:24 + 19, 0, 0] = np.nan   # day 2 at (0, 0): 5 valid values left
    v[48:48 + 18, 0, 1] = np.nan   # day 3 at (0, 1): 6 valid values left
    ds["tb"] = (("time", "y", "x"), v)
    out = daily_mean(ds.chunk({"time": 13})).compute()
    assert out.sizes["time"] == 4
    assert np.isnan(out["tb"].values[1, 0, 0])
    np.testing.assert_allclose(out["tb"].values[2, 0, 1], np.nanmean(v[48:72, 0, 1]), rtol=1e-6)
    np.testing.assert_array_equal(out.time.values, pd.date_range("2012-07-01", periods=4).values)


def test_static_variables_and_attributes_are_kept():
    times = pd.date_range("2010-01-01", periods=12, freq="1D")
    ds = _dataset(times, chunk=5)
    ds["tb"].attrs = {"units": "K"}
    ds["mask"] = (("y", "x"), np.ones((2, 3), dtype=np.int8))
    ds.attrs["ease2_grid"] = "M25"
    out = nday_mean(ds, 3)
    assert out["tb"].attrs == {"units": "K"}
    assert out.attrs["ease2_grid"] == "M25"
    assert out["mask"].dtype == np.int8
    assert out.time.attrs["casm_nday"] == 3 and out.time.attrs["casm_anchor"] == "2002-01-01"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": 0}, "n=0"),
    ({"min_count": 0}, "min_count=0"),
    ({"anchor": "not a date"}, "anchor="),
])
def test_bad_arguments_are_named(kwargs, message):
    ds = _dataset(pd.date_range("2010-01-01", periods=6, freq="1D"), chunk=3)
    with pytest.raises(ValueError, match=message):
        nday_mean(ds, **kwargs)


def test_integer_variable_and_unsorted_time_are_errors():
    times = pd.date_range("2010-01-01", periods=6, freq="1D")
    ds = _dataset(times, chunk=3)
    with pytest.raises(ValueError, match="'source'"):
        nday_mean(ds.assign(source=(("time", "y", "x"), np.zeros((6, 2, 3), np.int8))))
    with pytest.raises(ValueError, match="strictly increasing"):
        nday_mean(ds.isel(time=[0, 2, 1, 3, 4, 5]))

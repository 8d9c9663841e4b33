"""Regridding to EASE2 windows against analytic fields."""

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud import regrid
from casm_cloud.grid import EASE2Grid


def _f(lat, lon):
    """A smooth analytic field (K): max |d2f/dphi2| = 40, max |d2f/dlambda2| = 5 per rad^2."""
    return 280.0 + 10.0 * np.sin(2 * np.deg2rad(lat)) + 5.0 * np.cos(np.deg2rad(lon))


# Bilinear interpolation error is at most h^2/8 * max|f''| per axis:
# h = 0.25 deg = 4.36e-3 rad -> (4.36e-3)^2 / 8 * (40 + 5) = 1.1e-4 K; float32
# storage of ~290 K adds 3e-5 K.  2e-4 K therefore fails any indexing error
# (a quarter-cell shift in longitude costs 2.7e-3 K) while passing the method's own error.
TOL_LATLON = 2e-4


def _latlon(lat_desc=True, lon_0_360=True, n_time=3, seed=0):
    lat = np.arange(90, -90.001, -0.25) if lat_desc else np.arange(-90, 90.001, 0.25)
    lon = np.arange(0, 360, 0.25) if lon_0_360 else np.arange(-180, 180, 0.25)
    base = _f(lat[:, None], lon[None, :])
    rng = np.random.default_rng(seed)
    offs = rng.normal(0, 1, n_time)
    data = (base[None] + offs[:, None, None]).astype("float32")
    ds = xr.Dataset({"t2m": (("time", "latitude", "longitude"), data, {"units": "K"})},
                    coords={"time": pd.date_range("2010-01-01", periods=n_time),
                            "latitude": lat, "longitude": lon})
    return ds.chunk({"time": 1}), offs


def _expected(win, offs):
    return _f(win.lat[:, None], win.lon[None, :])[None] + offs[:, None, None]


@pytest.mark.parametrize("region", ["demo", "europe"])  # europe wraps lon 0 on a 0..360 grid
@pytest.mark.parametrize("lat_desc,lon_0_360", [(True, True), (False, False)])
def test_bilinear_latlon_matches_analytic(region, lat_desc, lon_0_360):
    win = EASE2Grid("M25").window_by_name(region)
    ds, offs = _latlon(lat_desc, lon_0_360)
    out = regrid.regrid_to_window(ds, win)
    assert out.t2m.dims == ("time", "y", "x") and out.t2m.dtype == np.float32
    assert out.t2m.chunks[0] == (1, 1, 1)  # time chunks kept
    np.testing.assert_allclose(out.t2m.values, _expected(win, offs), atol=TOL_LATLON, rtol=0)
    np.testing.assert_array_equal(out.y, win.y)
    assert out.attrs["ease2_grid"] == "M25" and out.t2m.attrs["units"] == "K"
    assert "crs" in out.coords


def test_lazy_and_weights_reused():
    win = EASE2Grid("M25").window_by_name("tiny")
    ds, _ = _latlon()
    ds["skt"] = ds.t2m + 1

    def _no_compute(*a, **k):
        raise AssertionError("regrid_to_window computed something")

    regrid._weights.cache_clear()
    with dask.config.set(scheduler=_no_compute):
        out = regrid.regrid_to_window(ds, win)
        out2 = regrid.regrid_to_window(ds.isel(time=[0]), win)
    assert out.t2m.chunks is not None and out2.skt.chunks is not None
    info = regrid._weights.cache_info()
    assert info.misses == 1 and info.hits == 3
    # one task reads one source chunk: the graph is per chunk, not per array
    np.testing.assert_allclose(out.skt.values, out.t2m.values + 1, atol=1e-4)


def test_ease1_to_ease2_matches_analytic():
    """AMSR-E on EASE-Grid v1 (NSIDC-0301 geometry) onto the 25 km EASE2 demo window."""
    win = EASE2Grid("M25").window_by_name("demo")
    rows, cols = np.arange(90, 150), np.arange(280, 350)
    lat, lon = regrid.ease1_latlon(rows, cols)
    data = _f(lat, lon)[None].astype("float32")
    ds = xr.Dataset({"tb_10v": (("time", "row", "col"), data, {"units": "K"})},
                    coords={"time": [np.datetime64("2005-06-01")], "row": rows, "col": cols,
                            "lat": (("row", "col"), lat), "lon": (("row", "col"), lon)})
    out = regrid.regrid_to_window(ds, win).compute()
    # EASE v1 cells are ~25 km (h ~ 4.5e-3 rad in lat at 37 N, 3.9e-3 in lon):
    # h^2/8 * (40 + 5) < 1.2e-4 K, with projection curvature well under that.
    np.testing.assert_allclose(out.tb_10v.values[0], _f(win.lat[:, None], win.lon[None, :]),
                               atol=2e-4, rtol=0)
    # a dataset whose lat/lon disagree with the NSIDC grid is refused
    bad = ds.assign_coords(lat=ds.lat + 0.1)
    with pytest.raises(regrid.RegridError, match="not the NSIDC global 25 km grid"):
        regrid.regrid_to_window(bad, win)


def test_ease2_m36_to_m25():
    win = EASE2Grid("M25").window_by_name("tiny")
    src_win = EASE2Grid("M36").window_by_name("demo")
    sm = (0.2 + 0.001 * (_f(src_win.lat[:, None], src_win.lon[None, :]) - 280)).astype("float32")
    ds = xr.Dataset({"sm": (("time", "y", "x"), sm[None], {"units": "m3 m-3"})},
                    coords={"time": [np.datetime64("2016-01-01")], **src_win.coords()},
                    attrs=src_win.identity())
    out = regrid.regrid_to_window(ds, win)
    exp = 0.2 + 0.001 * (_f(win.lat[:, None], win.lon[None, :]) - 280)
    np.testing.assert_allclose(out.sm.values[0], exp, atol=2e-6)
    assert out.attrs["ease2_grid"] == "M25"


def test_nearest_keeps_categories_exactly():
    rng = np.random.default_rng(3)
    lat = np.arange(50, 25, -0.25)
    lon = np.arange(-110, -85, 0.25)
    cls = rng.integers(0, 17, (lat.size, lon.size)).astype("int16")
    ds = xr.Dataset({"vegetation_class": (("latitude", "longitude"), cls, {"units": "1"}),
                     "elevation": (("latitude", "longitude"),
                                   rng.uniform(0, 1000, cls.shape).astype("float32"))},
                    coords={"latitude": lat, "longitude": lon})
    win = EASE2Grid("M25").window_by_name("demo")
    out = regrid.regrid_to_window(ds, win, methods={"vegetation_class": "nearest"})
    got = out.vegetation_class.values
    assert got.dtype == np.int16
    i = np.abs(win.lat[:, None] - lat[None, :]).argmin(axis=1)
    j = np.abs(win.lon[:, None] - lon[None, :]).argmin(axis=1)
    np.testing.assert_array_equal(got, cls[np.ix_(i, j)])
    assert out.elevation.attrs["regrid_method"] == "bilinear"


def test_nan_neighbours_are_dropped_not_spread():
    ds, offs = _latlon(n_time=1)
    win = EASE2Grid("M25").window_by_name("tiny")
    # knock out one source cell inside the window
    ilat = int(np.argmin(np.abs(ds.latitude.values - win.lat[3])))
    ilon = int(np.argmin(np.abs(ds.longitude.values - (win.lon[3] % 360))))
    t = ds.t2m.values.copy()
    t[0, ilat, ilon] = np.nan
    ds["t2m"] = (ds.t2m.dims, t, ds.t2m.attrs)
    out = regrid.regrid_to_window(ds, win).t2m.values
    assert np.isfinite(out).all()
    # renormalised weights over 3 valid neighbours: error stays within a cell's gradient
    np.testing.assert_allclose(out, _expected(win, offs), atol=0.05)


def test_errors_name_the_problem():
    ds, _ = _latlon(n_time=1)
    win = EASE2Grid("M25").window_by_name("tiny")
    with pytest.raises(regrid.RegridError, match="method 'cubic'"):
        regrid.regrid_to_window(ds, win, method="cubic")
    with pytest.raises(regrid.RegridError, match=r"\['nope'\]"):
        regrid.regrid_to_window(ds, win, methods={"nope": "nearest"})
    with pytest.raises(regrid.RegridError, match="cannot tell the source grid"):
        regrid.regrid_to_window(ds.rename(latitude="a", longitude="b"), win)
    small = ds.isel(latitude=slice(0, 40), longitude=slice(0, 40))  # 80..90 N, 0..10 E
    with pytest.raises(regrid.RegridError, match="entirely outside"):
        regrid.regrid_to_window(small, win)
    irregular = ds.isel(longitude=[0, 1, 3, 4])
    with pytest.raises(regrid.RegridError, match="not regularly spaced"):
        regrid.regrid_to_window(irregular, win)

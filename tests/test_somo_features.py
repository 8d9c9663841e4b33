"""SoMo.ml features: daily dynamic features from hourly ERA5, climatology, statics."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud import somo
from casm_cloud.errors import UserError
from casm_cloud.somo.features import PUBLISHED_STATIC, FeatureError


class _NoCompute:
    def __call__(self, dsk, keys, **kwargs):
        raise AssertionError("something was computed while building lazy features")


def _hourly(days=3, stations=2, seed=0) -> xr.Dataset:
    """Hourly ERA5 in ECMWF units; accumulations over the hour ending at each stamp."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2020-07-01T00", periods=24 * days + 1, freq="1h")
    sh = (t.size, stations)

    def var(a, units):
        return (("time", "station"), np.asarray(a, np.float32), {"units": units})

    return xr.Dataset({
        "t2m": var(290 + 5 * rng.standard_normal(sh), "K"),
        "skt": var(292 + 6 * rng.standard_normal(sh), "K"),
        "tp": var(rng.gamma(0.3, 3e-4, sh), "m"),
        "ssr": var(rng.uniform(0, 2e6, sh), "J m**-2"),
        "str": var(rng.uniform(-4e5, -1e5, sh), "J m**-2"),
        "ssrd": var(rng.uniform(0, 2.5e6, sh), "J m**-2"),
        "d2m": var(283.15 + rng.uniform(-2, 2, sh), "K"),
        "sp": var(rng.uniform(9.5e4, 1.02e5, sh), "Pa"),
    }, coords={"time": t, "station": ["s1", "s2"][:stations]})


def test_daily_features_match_numpy_from_hourly_era5():
    h = _hourly()
    with dask.config.set(scheduler=_NoCompute()):
        out = somo.dynamic_features(h.chunk({"time": 25}))
    assert list(out.data_vars) == [*somo.PUBLISHED_DYNAMIC, "tp"] and out.t2m.chunks is not None
    out = out.compute()
    assert out.sizes["time"] == 4 and str(out.time.values[0])[:10] == "2020-07-01"
    v = {k: h[k].values.astype(np.float64) for k in h.data_vars}
    day = slice(0, 24)           # instantaneous: stamps 00..23 of July 1
    acc = slice(1, 25)           # accumulations: stamps 01..24 (the hours of July 1)
    np.testing.assert_allclose(out.t2m.values[0], v["t2m"][day].mean(0), rtol=1e-6)
    np.testing.assert_allclose(out.skt.values[0], v["skt"][day].mean(0), rtol=1e-6)
    tp = 1000 * v["tp"][acc].sum(0)
    np.testing.assert_allclose(out.tp.values[0], tp, rtol=1e-5)
    np.testing.assert_allclose(out.log_tp.values[0], np.log1p(tp), rtol=1e-5)
    np.testing.assert_allclose(out.snr.values[0], (v["ssr"] + v["str"])[acc].sum(0) / 1e6,
                               rtol=1e-5)
    np.testing.assert_allclose(out.ssrd.values[0], v["ssrd"][acc].sum(0) / 1e6, rtol=1e-5)
    # q: Tetens (IFS constants) per hour, then the daily mean
    e = 611.21 * np.exp(17.502 * (v["d2m"] - 273.16) / (v["d2m"] - 32.19))
    q = 0.622 * e / (v["sp"] - 0.378 * e)
    np.testing.assert_allclose(out.q.values[0], q[day].mean(0), rtol=1e-5)
    assert 0.006 < float(out.q.mean()) < 0.01
    # the last day has only the 00 UTC value (and no accumulations): fewer than 6 -> NaN
    assert np.isnan(out.t2m.values[-1]).all()
    units = {n: out[n].attrs["units"] for n in out.data_vars}
    assert units == {n: somo.DYNAMIC_FEATURES[n][0] for n in units}
    assert all(out[n].dtype == np.float32 for n in out.data_vars)


def test_daily_era5_of_the_simulator_is_converted_only():
    from casm_cloud.grid import LatLonGrid
    from casm_cloud.simulate import simulate

    w = LatLonGrid("ERA5_0p25").window_by_name("tiny")
    era = simulate(w, "2015-01-01", "2015-03-31", seed=0, sources=["era5"])["era5"]
    out = somo.dynamic_features(era).compute()
    e = era.compute()
    assert out.sizes == {"time": 90, "y": 7, "x": 7}
    np.testing.assert_allclose(out.tp.values, np.maximum(e.tp.values * 1000, 0), rtol=1e-6)
    np.testing.assert_allclose(out.snr.values, (e.ssr.values + e["str"].values) / 1e6, rtol=1e-5)
    np.testing.assert_array_equal(out.q.values, e.q.values)
    assert out.attrs == {} or "latlon_grid" not in out.attrs


@pytest.mark.parametrize(("change", "match"), [
    (lambda h: h.drop_vars("str"), r"missing variable 'str'"),
    (lambda h: h.drop_vars(["d2m"]), r"missing variable 'q' \(or 'd2m' and 'sp'"),
    (lambda h: h.assign(tp=h.tp.assign_attrs(units="mm")), "'tp' has units 'mm'; expected 'm'"),
    (lambda h: h.assign(ssr=h.ssr.assign_attrs(units="W m-2")), "'ssr' has units 'W m-2'"),
])
def test_bad_forcing_is_a_feature_error(change, match):
    with pytest.raises(FeatureError, match=match):
        somo.dynamic_features(change(_hourly()))
    assert issubclass(FeatureError, UserError)
    with pytest.raises(FeatureError, match="unknown dynamic feature"):
        somo.dynamic_features(_hourly(), variables=["vpd"])


def _daily(tp_mm=2.0, snr=4.9, days=20, shape=(2, 3)):
    t = pd.date_range("2001-01-01", periods=days)
    dims = ("time", "y", "x")
    coords = {"time": t, "y": [40.0, 39.75], "x": [-100.0, -99.75, -99.5]}
    return xr.Dataset({
        "tp": (dims, np.full((days, *shape), tp_mm, np.float32), {"units": "mm day-1"}),
        "snr": (dims, np.full((days, *shape), snr, np.float32), {"units": "MJ m-2 day-1"}),
    }, coords=coords)


def test_climatology_and_static_features_in_published_order():
    d = _daily()
    d["tp"][:10] = 0.0                                  # first ten days dry: P = 1 mm/day over all
    c = somo.climatology(d)
    np.testing.assert_allclose(c.mean_precip.values, 365.25)
    np.testing.assert_allclose(c.aridity.values, 4.9 / 2.45 / 1.0, rtol=1e-6)
    c2 = somo.climatology(d, "2001-01-11", "2001-01-20")
    np.testing.assert_allclose(c2.mean_precip.values, 2 * 365.25)
    assert c2.attrs["climatology_period"] == "2001-01-11/2001-01-20"
    from casm_cloud import schema

    rng = np.random.default_rng(0)
    static = xr.Dataset({n: (("y", "x"), rng.uniform(0.1, 0.5, (2, 3)).astype(np.float32),
                             {"units": schema.spec("static", n).units})
                         for n in PUBLISHED_STATIC if n not in ("mean_precip", "aridity")},
                        coords={"y": d.y, "x": d.x})
    out = somo.static_features(static, d)
    assert list(out.data_vars) == list(PUBLISHED_STATIC)
    assert out.mean_precip.attrs["units"] == "mm yr-1"
    with pytest.raises(FeatureError, match=r"static: missing variable 'porosity_top'"):
        somo.static_features(static.drop_vars("porosity_top"), d)
    with pytest.raises(FeatureError, match="different cells"):
        somo.static_features(static.assign_coords(x=static.x + 1), d)
    with pytest.raises(FeatureError, match="no days in the climatology period"):
        somo.climatology(d, "1990-01-01", "1990-12-31")
    # log_tp alone gives the same precipitation
    lp = d.assign(log_tp=np.log1p(d.tp).assign_attrs(units="1")).drop_vars("tp")
    np.testing.assert_allclose(somo.climatology(lp).mean_precip.values, 365.25, rtol=1e-5)


def test_real_hourly_era5_daily_temperature(real_data):
    """Real ERA5 2 m temperature, hourly, UK, March 2019 -> UTC daily means on ERA5_0p25."""
    from casm_cloud.sources import get_adapter

    path = str(real_data / "era5" / "era5-2mt-2019-03-uk.grib")
    hourly = get_adapter("era5_cds")(path, grid="ERA5_0p25", lat=(51, 57), lon=(-8, 1),
                                     daily=False, start="2019-03-02", end="2019-03-04")
    out = somo.dynamic_features(hourly, variables=["t2m"]).compute()
    raw = xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})["t2m"]
    ref = raw.sel(time=slice("2019-03-02", "2019-03-04T23"), latitude=hourly.lat.values,
                  longitude=hourly.lon.values).resample(time="1D").mean()
    np.testing.assert_allclose(out.t2m.values, ref.values, rtol=1e-6)
    assert 270 < float(out.t2m.mean()) < 285

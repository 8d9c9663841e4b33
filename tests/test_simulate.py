"""The simulator: laziness, determinism, physics, noise and gap levels, missions."""

from __future__ import annotations

import dataclasses

import dask
import numpy as np
import pytest
import xarray as xr

from casm_cloud import schema
from casm_cloud.grid import EASE2Grid
from casm_cloud.simulate import DEFAULT_SENSORS, MISSIONS, SimSettings, simulate
from casm_cloud.simulate.emission import brightness_temperature, dobson_permittivity
from casm_cloud.simulate.sensors import observe

CHUNKS = {"time": 120, "y": 4, "x": 4}


@pytest.fixture(scope="module")
def window():
    return EASE2Grid("M25").window_by_name("tiny")  # 6 x 6 cells in Kansas


class _NoCompute:
    """A dask scheduler that fails on any computation (after xarray's tests)."""

    def __call__(self, dsk, keys, **kwargs):
        raise AssertionError("something was computed while building lazy datasets")


def _quiet_settings(base: SimSettings) -> SimSettings:
    """Same gaps, no radiometric noise, no RFI, no retrieval error."""
    s = base
    for name, sen in base.sensors.items():
        if sen.product == "tb":
            s = s.with_sensor(name, nedt_k=(0.0,) * len(sen.channels), rfi_fraction=0.0)
        else:
            s = s.with_sensor(name, sm_error=0.0)
    return s


@pytest.fixture(scope="module")
def noisy_settings():
    s = SimSettings().with_sensor("smos", nedt_k=(4.0, 2.5), rfi_fraction=0.02, coverage=0.65)
    return s.with_sensor("smap", sm_error=0.05, coverage=0.8)


@pytest.fixture(scope="module")
def year(window, noisy_settings):
    """One computed year (2015: SMOS, AMSR2 and SMAP fly), noisy and quiet."""
    noisy = simulate(window, "2015-01-01", "2015-12-31", seed=3, chunks=CHUNKS,
                     settings=noisy_settings)
    quiet = simulate(window, "2015-01-01", "2015-12-31", seed=3, chunks=CHUNKS,
                     settings=_quiet_settings(noisy_settings))
    return ({k: v.compute() for k, v in noisy.items()},
            {k: v.compute() for k, v in quiet.items() if k in ("smos", "amsr2", "smap")})


def test_building_computes_nothing(window):
    with dask.config.set(scheduler=_NoCompute()):
        out = simulate(window, "2009-06-01", "2016-06-30", seed=1, chunks=CHUNKS,
                       era5_native=True, amsre_ease1=True)
    assert set(out) == {"truth", "era5", "static", "smos", "amsre", "amsr2", "smap"}
    for ds in out.values():
        for v in ds.data_vars.values():
            assert isinstance(v.data, dask.array.Array)


def test_canonical_form(window, year):
    noisy, _ = year
    assert list(noisy) == ["truth", "era5", "static", "smos", "amsr2", "smap"]
    for kind, ds in noisy.items():
        schema.validate(ds, kind, grid=window, values="all")
        assert ds.attrs["ease2_grid"] == "M25"
        assert "crs" in ds.coords and ds["crs"].attrs["epsg_code"] == "EPSG:6933"
        for v in ds.data_vars.values():
            assert v.dtype == np.float32 and v.attrs["grid_mapping"] == "crs"
        if "time" in ds.dims:
            t = ds["time"].values
            assert t.dtype == np.dtype("datetime64[ns]")
            assert (t == t.astype("datetime64[D]")).all()  # 00:00 of each day
            assert (np.diff(t) == np.timedelta64(1, "D")).all()
    tr = noisy["truth"]
    st = noisy["static"]
    assert float(tr.sm_l1.min()) >= 0.0
    assert bool((tr.sm_l1 <= st.porosity + 1e-6).all())


def test_mission_periods(window):
    out = simulate(window, "2011-09-01", "2015-04-10", chunks=CHUNKS)
    first = {k: str(ds.time.values[0])[:10] for k, ds in out.items() if "time" in ds.dims}
    last = {k: str(ds.time.values[-1])[:10] for k, ds in out.items() if "time" in ds.dims}
    assert first["smos"] == "2011-09-01" and first["amsre"] == "2011-09-01"
    assert last["amsre"] == "2011-10-04"
    assert first["amsr2"] == "2012-07-02" and first["smap"] == "2015-03-31"
    assert last["smap"] == last["truth"] == "2015-04-10"
    # chunks realigned to whole output chunks where a mission starts inside one
    assert out["amsr2"].tb_10v.chunks[0][0] == CHUNKS["time"]
    early = simulate(window, "2003-01-01", "2003-02-01", chunks=CHUNKS)
    assert set(early) == {"truth", "era5", "static", "amsre"}
    assert str(MISSIONS["smos"][0]) == "2010-01-12"


def test_brightness_temperatures_physical(year):
    noisy, quiet = year
    for kind in ("smos", "amsr2"):
        for name, v in quiet[kind].data_vars.items():
            x = v.values[np.isfinite(v.values)]
            assert x.size > 1000
            assert 100.0 <= x.min() and x.max() <= 320.0, (kind, name, x.min(), x.max())
    for name, v in noisy["amsr2"].data_vars.items():
        x = v.values[np.isfinite(v.values)]
        assert 100.0 <= x.min() and x.max() <= 320.0, name
    # Frequency-dependent sensitivity: anomalies (from a 31-day running mean,
    # which removes the seasonal vegetation and temperature cycles) of L-band
    # TB follow soil moisture (wetter, colder), those of 89 GHz hardly do.
    def anomaly(x):
        return x - x.rolling(time=31, center=True, min_periods=5).mean()

    sm = anomaly(noisy["truth"].sm_l1)

    def corr(tb):
        a, b = sm.sel(time=tb.time).values, anomaly(tb).values
        ok = np.isfinite(a) & np.isfinite(b)
        return np.corrcoef(a[ok], b[ok])[0, 1]

    r_l = corr(quiet["smos"].tb_h)
    r_36, r_89 = corr(quiet["amsr2"].tb_36h), corr(quiet["amsr2"].tb_89v)
    assert r_l < -0.5
    # 36.5 GHz H keeps some sensitivity in light vegetation (b ∝ f^0.5, docs/amsre_era.md)
    assert abs(r_36) < 0.75 * abs(r_l) and abs(r_89) < 0.1


def test_lband_sensitivity_published_order():
    """dTB_H/dSM at L band, 42.5°, low vegetation: about -2 to -3 K per 0.01 m3 m-3
    (Njoku & Entekhabi 1996; Jackson & Schmugge 1989); much smaller at 36.5/89 GHz."""
    mv = np.array([0.10, 0.30])
    kw = dict(t_soil=295.0, t_canopy=295.0, sand=0.4, clay=0.2, bulk_density=1.45)

    def slope(freq, pol, angle, vwc):
        tb = brightness_temperature(mv, vwc=vwc, freq_ghz=freq, pol=pol, incidence_deg=angle,
                                    **kw)
        return (tb[1] - tb[0]) / 20.0  # K per 0.01 m3 m-3

    s_h = slope(1.413, "H", 42.5, 0.3)
    s_v = slope(1.413, "V", 42.5, 0.3)
    assert -3.0 <= s_h <= -1.5, s_h
    assert s_h < s_v < 0
    for freq, pol in ((36.5, "H"), (89.0, "V")):
        assert abs(slope(freq, pol, 55.0, 1.5)) < 0.25 * abs(slope(1.413, "H", 42.5, 1.5))
    # the dielectric constant of the Dobson model: dry soil ~3-5, wet soil ~20-25 at L band
    eps = dobson_permittivity(np.array([0.02, 0.40]), 0.4, 0.2, 1.45, 1.4, 293.0)
    assert 2.5 < eps.real[0] < 5.5 and 18 < eps.real[1] < 30


def test_noise_rfi_gaps_as_configured(year, noisy_settings):
    noisy, quiet = year
    smos_cfg = noisy_settings.sensors["smos"]
    d = (noisy["smos"].tb_h - quiet["smos"].tb_h).values
    seen = np.isfinite(d)
    # the gaps are the same in both runs (they do not depend on noise)
    assert (np.isfinite(quiet["smos"].tb_h.values) == seen).all()
    assert abs((1 - seen.mean()) - (1 - smos_cfg.coverage)) < 0.06
    rfi = d[seen] > 15.0
    assert abs(rfi.mean() - smos_cfg.rfi_fraction) < 0.01
    assert np.std(d[seen][~rfi]) == pytest.approx(smos_cfg.nedt_k[0], rel=0.08)
    dv = (noisy["smos"].tb_v - quiet["smos"].tb_v).values
    okv = np.isfinite(dv) & (dv < 15.0)
    assert np.std(dv[okv]) == pytest.approx(smos_cfg.nedt_k[1], rel=0.08)
    # RFI: tens of K
    assert np.mean(d[seen][rfi]) == pytest.approx(np.mean(smos_cfg.rfi_k), abs=4.0)
    assert d[seen][rfi].max() <= smos_cfg.rfi_k[1] + 5 * smos_cfg.nedt_k[0]
    # gaps are stripes: neighbours along x agree far more often than at random
    agree = (seen[:, :, 1:] == seen[:, :, :-1]).mean()
    c = seen.mean()
    assert agree > 0.9 > c ** 2 + (1 - c) ** 2
    # AMSR2: NEdT below 1 K as configured
    for (name, _, _), nedt in zip(DEFAULT_SENSORS["amsr2"].channels,
                                  DEFAULT_SENSORS["amsr2"].nedt_k, strict=True):
        e = (noisy["amsr2"][name] - quiet["amsr2"][name]).values
        assert np.nanstd(e) == pytest.approx(nedt, rel=0.1)
    # SMAP: retrieval error (ubRMSE) as configured, plus a constant bias field
    smap = noisy_settings.sensors["smap"]
    t = noisy["truth"].sm_l1.sel(time=noisy["smap"].time)
    err = (noisy["smap"].sm - t).values
    ub = np.sqrt(np.nanmean((err - np.nanmean(err, axis=0)) ** 2))
    assert ub == pytest.approx(smap.sm_error, rel=0.1)
    # SMAP misses the swath gaps plus frozen soil and dense vegetation
    np.testing.assert_array_equal(np.isfinite(err), np.isfinite(quiet["smap"].sm.values))
    assert 0.5 * smap.coverage < np.isfinite(err).mean() < smap.coverage + 0.06


def test_amsr2_calibration_offset(window):
    """Same scene seen by AMSR-E and AMSR2: AMSR2 is warmer by the configured offset."""
    from casm_cloud.simulate import generate as g

    s = SimSettings()
    tr = simulate(window, "2008-01-01", "2008-12-31", seed=2, chunks={"time": 366, "y": 6,
                                                                      "x": 6}, sources=["truth"])
    graph = dict(tr["truth"].sm_l1.data.__dask_graph__())
    chain = next(v for k, v in graph.items() if isinstance(k, tuple) and k[1:2] == ("chain",))
    fn, blk, skey, d0, n, prev = chain
    static = g._static_task(blk)
    prev_out = g._chain_task(blk, static, *graph[prev][3:5], None, False) if prev else None
    fields, _ = g._chain_task(blk, static, d0, n, prev_out)
    days = np.arange(d0, d0 + n)
    args = (2, fields, static, blk.rows, blk.cols, blk.lat, blk.lon, days, s)
    e = observe("amsre", s.sensors["amsre"], *args)
    a2 = observe("amsr2", s.sensors["amsr2"].__class__(**{
        **dataclasses.asdict(s.sensors["amsr2"]), "coverage": 1.0}), *args)
    e_cov = dataclasses.replace(s.sensors["amsre"], coverage=1.0)
    e = observe("amsre", e_cov, *args)
    for (name, _, _), off in zip(s.sensors["amsr2"].channels, s.sensors["amsr2"].offset_k, strict=True):
        diff = np.mean(a2[name] - e[name])
        assert 1.0 <= off <= 5.0
        assert diff == pytest.approx(off, abs=0.1), name


def test_chunk_reproducible_alone(window):
    out = simulate(window, "2015-01-01", "2015-12-31", seed=5, chunks=CHUNKS,
                   sources=["truth", "smos", "static"])
    arr = out["truth"].sm_l2.data
    whole = arr.compute()
    alone = arr.blocks[2, 1, 0].compute()  # third time chunk: needs the carried state
    np.testing.assert_array_equal(alone, whole[240:360, 4:, :4])
    tb = out["smos"].tb_h.data
    np.testing.assert_array_equal(tb.blocks[1, 0, 1].compute(), tb.compute()[120:240, :4, 4:])
    again = simulate(window, "2015-01-01", "2015-12-31", seed=5, chunks=CHUNKS,
                     sources=["truth"])
    np.testing.assert_array_equal(again["truth"].sm_l2.values, whole)
    other = simulate(window, "2015-01-01", "2015-12-31", seed=6, chunks=CHUNKS,
                     sources=["truth"])
    assert not np.array_equal(other["truth"].sm_l2.values, whole)
    # static maps and swath gaps do not depend on the chunking at all
    re = simulate(window, "2015-01-01", "2015-12-31", seed=5,
                  chunks={"time": 50, "y": 3, "x": 5}, sources=["static", "smos"])
    xr.testing.assert_equal(re["static"].compute(), out["static"].compute())
    np.testing.assert_array_equal(np.isnan(re["smos"].tb_h.values),
                                  np.isnan(out["smos"].tb_h.values))


def test_climate_gradient_and_state_continuity(window):
    out = simulate(window, "2014-01-01", "2015-12-31", seed=0, chunks=CHUNKS,
                   sources=["truth", "era5", "static"])
    st = out["static"].compute()
    era = out["era5"].compute()
    assert float(st.mean_precip.isel(x=-1).mean()) > float(st.mean_precip.isel(x=0).mean())
    assert float(st.aridity.isel(x=0).mean()) > float(st.aridity.isel(x=-1).mean())
    assert float(era.tp.isel(x=-1).mean()) > float(era.tp.isel(x=0).mean())
    # seasonal temperature: July warmer than January by > 15 K in Kansas
    t = era.t2m.mean(("y", "x"))
    assert float(t.sel(time="2015-07").mean() - t.sel(time="2015-01").mean()) > 15.0
    # no jump at chunk boundaries: the bucket state is carried across time chunks
    sm = out["truth"].sm_l3.mean(("y", "x")).values
    steps = np.abs(np.diff(sm))
    assert steps[CHUNKS["time"] - 1] < 5 * np.median(steps) + 1e-3


def test_native_grids(window):
    out = simulate(window, "2010-01-01", "2010-02-28", chunks=CHUNKS, era5_native=True,
                   amsre_ease1=True, sources=["era5", "amsre"])
    e = out["era5"]
    assert e.t2m.dims == ("time", "latitude", "longitude")
    lat, lon = e.latitude.values, e.longitude.values
    assert (np.diff(lat) < 0).all() and np.allclose(np.diff(lat), -0.25)
    assert lon.min() <= window.lon.min() - 0.9 and lon.max() >= window.lon.max() + 0.9
    assert lat.min() <= window.lat.min() - 0.9 and lat.max() >= window.lat.max() + 0.9
    assert -180 <= lon.min() and lon.max() <= 180 and e.t2m.attrs["units"] == "K"
    a = out["amsre"]
    assert a.tb_10v.dims == ("time", "row", "col") and a.lat.dims == ("row", "col")
    assert a.crs.attrs["epsg_code"] == "EPSG:3410" and a.tb_10v.attrs["units"] == "K"
    assert 0 <= a.row.min() and a.row.max() < 586 and 0 <= a.col.min() and a.col.max() < 1383
    # inside the window the native field is the bilinear interpolation (in EASE2
    # metres) of the EASE2 field: check against scipy at one day
    from pyproj import Transformer
    from scipy.interpolate import RegularGridInterpolator

    ref = simulate(window, "2010-01-01", "2010-02-28", chunks=CHUNKS,
                   sources=["era5", "amsre"])
    day = 20
    for ds, lat2, lon2 in (
        (e.t2m, *np.meshgrid(e.latitude.values, e.longitude.values, indexing="ij")),
        (a.tb_36h, a.lat.values, a.lon.values),
    ):
        src = ref["era5"].t2m if ds.name == "t2m" else ref["amsre"].tb_36h
        f = RegularGridInterpolator((src.y.values[::-1], src.x.values),
                                    src.isel(time=day).values[::-1], bounds_error=False)
        x, y = Transformer.from_crs(4326, 6933, always_xy=True).transform(lon2, lat2)
        want = f(np.stack([y.ravel(), x.ravel()], axis=1)).reshape(lat2.shape)
        got = ds.isel(time=day).values
        inside = np.isfinite(want)
        assert inside.sum() >= 16
        np.testing.assert_allclose(got[inside], want[inside], rtol=1e-5, atol=1e-3)


def test_somo_inputs_net_thermal_radiation_and_statics(window):
    """ERA5-like str (FAO-56 net longwave), the SoMo.ml statics, and the ERA5 grid."""
    from casm_cloud.grid import LatLonGrid

    out = simulate(window, "2015-01-01", "2015-12-31", seed=0, chunks=CHUNKS,
                   sources=["era5", "static"])
    era, st = out["era5"].compute(), out["static"].compute()
    schema.validate(era, "era5", grid=window, values="all")
    schema.validate(st, "static", grid=window, values="all")
    # net longwave loss: a few MJ m-2 per day, larger under clear (dry) skies
    mj = era["str"] / 1e6
    assert float(mj.max()) < 0 and -12 < float(mj.mean()) < -2
    wet = era.tp > 1e-3
    assert float(mj.where(~wet).mean()) < float(mj.where(wet).mean())
    assert float((era.ssr + era["str"]).mean()) / 1e6 > 3.0           # net radiation > 0
    # statics: porosity of two layers, annual precipitation in mm, Budyko aridity
    assert bool((st.porosity_mid < st.porosity_top).all())
    assert 300 < float(st.mean_precip.mean()) < 1500 and st.mean_precip.attrs["units"] == "mm yr-1"
    assert 0.5 < float(st.aridity.mean()) < 5.0
    # the simulator runs on the ERA5 lat/lon grid as well
    w = LatLonGrid("ERA5_0p25").window_by_name("tiny")
    ll = simulate(w, "2015-01-01", "2015-01-31", seed=0, sources=["era5", "static"])
    schema.validate(ll["era5"], "era5", grid=w, values="all")
    assert ll["static"].attrs["latlon_grid"] == "ERA5_0p25"


def test_amsr_sensitivity_against_lband_published_order():
    """X band (10.65 GHz, 55°) over light vegetation: dTB/dSM a third to a half of L band's
    (docs/amsre_era.md), falling with vegetation water content; all twelve AMSR channels."""
    from casm_cloud.simulate.sensors import teff_weight

    mv = np.array([0.15, 0.25])
    kw = dict(t_soil=295.0, t_canopy=295.0, sand=0.4, clay=0.22, bulk_density=1.49)

    def slope(freq, pol, angle, vwc):
        tb = brightness_temperature(mv, vwc=vwc, freq_ghz=freq, pol=pol, incidence_deg=angle,
                                    **kw)
        return (tb[1] - tb[0]) / 10.0

    ratios = [slope(10.65, "V", 55.0, w) / slope(1.413, "H", 42.5, w) for w in (0.5, 1.0, 2.0)]
    assert 0.3 <= ratios[1] <= 0.5 <= ratios[0] + 0.05
    assert ratios[0] > ratios[1] > ratios[2]
    # effective soil temperature weights of Choudhury et al. (1982)
    s = SimSettings()
    assert teff_weight(1.413, s.teff_c) == pytest.approx(0.246, abs=0.005)
    assert teff_weight(10.71, s.teff_c) == pytest.approx(0.802, abs=0.005)
    assert teff_weight(89.0, s.teff_c) == 1.0 and teff_weight(1.4, None) == 0.5
    assert len(DEFAULT_SENSORS["amsre"].channels) == 12
    legacy = SimSettings.legacy()
    assert [c[0] for c in legacy.sensors["amsr2"].channels] == ["tb_10v", "tb_18h", "tb_36h",
                                                                "tb_89v"]
    assert legacy.b_exponent == 0.7 and legacy.teff_c is None

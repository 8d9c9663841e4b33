"""Triple collocation over stations: equal to pytesmo's tcol_metrics on real Hawaii series
(SMAP L3 and SMOS L3, ERA5 swvl1, ISMN SCAN 5 cm), the known errors of a synthetic triple,
the all-finite rule and min_obs, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from pytesmo.metrics import tcol_metrics

from casm_cloud.validation.exceptions import ValidationError
from casm_cloud.validation.tcol import triple_collocation

PRODUCTS = {"SMAP_L3": ("SMAP_L3/SMAP_V9_AM_PM/netcdf", "soil_moisture"),
            "SMOS_L3": ("SMOS_L3/SMOSL3_v339_ASC", "Soil_Moisture")}


@pytest.fixture(scope="module")
def hawaii(real_data, tmp_path_factory):
    """Per product: (product, ERA5, ISMN) 3-day means at the matched SCAN stations."""
    from casm_cloud.sources.tuw_ts import open_tuw_ts
    from casm_cloud.validation import matched_pairs, select_stations
    from casm_cloud.validation.stations import read_ismn

    folder = real_data / "qa4sm_hawaii"
    if not all((folder / p).is_dir() for p in ("ISMN_V20250617", "ERA5", "SMAP_L3", "SMOS_L3")):
        pytest.skip(f"{folder}: the Hawaii ISMN, ERA5, SMAP L3 and SMOS L3 series are absent")
    stations = select_stations(read_ismn(folder / "ISMN_V20250617",
                                         meta_path=tmp_path_factory.mktemp("ismn-meta")))
    era5, _ = matched_pairs(open_tuw_ts(str(folder / "ERA5" / "ERA5_20190613"),
                                        variables=["swvl1"]), stations, variable="swvl1")
    out = {}
    for name, (sub, var) in PRODUCTS.items():
        pairs, _ = matched_pairs(open_tuw_ts(str(folder / sub), variables=[var]), stations,
                                 variable=var)
        out[name] = (pairs["product"], era5["product"], pairs["reference"])
    return out


@pytest.mark.parametrize("name", list(PRODUCTS))
@pytest.mark.parametrize("ref", [0, 2])
def test_hawaii_triples_equal_pytesmo_station_by_station(hawaii, name, ref):
    x, y, z = hawaii[name]
    got = triple_collocation(x, y, z, names=(name, "ERA5", "ISMN"), ref=ref)
    assert list(got["series"].values) == [name, "ERA5", "ISMN"]
    x, y, z = xr.align(x, y, z, join="inner")
    checked, worst = 0, 0.0
    for sid in got["station"].values:
        a, b, c = (v.sel(station=sid).values.astype(np.float64) for v in (x, y, z))
        ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(c)
        assert int(got["n"].sel(station=sid)) == ok.sum()
        if ok.sum() < 10:
            assert np.isnan(got["snr"].sel(station=sid)).all()
            continue
        with np.errstate(invalid="ignore"):
            snr, err_std, beta = tcol_metrics(a[ok], b[ok], c[ok], ref_ind=ref)
        at = got.sel(station=sid)
        np.testing.assert_allclose(at["snr"].values, snr, rtol=1e-10)
        np.testing.assert_allclose(at["err_std"].values, err_std, rtol=1e-10)
        np.testing.assert_allclose(at["beta"].values, beta, rtol=1e-10)
        for mine, theirs in ((at["snr"], snr), (at["err_std"], err_std), (at["beta"], beta)):
            fin = np.isfinite(theirs)
            worst = max(worst, float(np.max(np.abs(mine.values[fin] / theirs[fin] - 1),
                                            initial=0.0)))
        checked += 1
    print(f"{name} (ref {ref}): {checked} stations, largest relative difference from "
          f"pytesmo {worst:.1e}")
    assert checked >= 2  # SMAP: 3 stations (114..244 days), SMOS: 2 (Kainaliu's cell is empty)


def test_hawaii_smap_errors_are_plausible(hawaii):
    """SMAP L3 at the SCAN stations: finite errors below 0.1 m3 m-3, in ISMN's units."""
    got = triple_collocation(*hawaii["SMAP_L3"], names=("SMAP", "ERA5", "ISMN"), ref="ISMN")
    err = got["err_std"].sel(series="SMAP")
    assert np.isfinite(err).all() and (np.abs(err) < 0.1).all()
    assert (got["n"] > 100).all()


def _synthetic(n_stations=4, n=20000, seed=0):
    """truth t; x = t + e_x, y = 0.5 + 2 t + e_y, z = 0.1 + 0.5 t + e_z (independent errors)."""
    rng = np.random.default_rng(seed)
    t = rng.normal(0.25, 0.06, (n_stations, n))
    sd = np.array([0.02, 0.05, 0.01])
    gain = np.array([1.0, 2.0, 0.5])
    series = [off + g * t + s * rng.standard_normal(t.shape)
              for off, g, s in zip((0.0, 0.5, 0.1), gain, sd, strict=True)]
    series[1][:, ::7] = np.nan       # gaps in one series: those days leave all three
    da = [xr.DataArray(v, dims=("station", "time"), coords={"station": np.arange(n_stations)})
          for v in series]
    return da, sd, gain, 0.06


def test_synthetic_triple_recovers_the_known_errors():
    (x, y, z), sd, gain, signal = _synthetic()
    got = triple_collocation(x, y, z)
    n = int(np.isfinite(y[0]).sum())
    assert (got["n"] == n).all()
    # own-units error std, and scaled to x (the reference): sd_i * gain_x / gain_i
    np.testing.assert_allclose(np.sqrt(got["err_var"]), np.broadcast_to(sd[:, None], (3, 4)),
                               rtol=0.05)
    np.testing.assert_allclose(got["err_std"], np.broadcast_to((sd / gain)[:, None], (3, 4)),
                               rtol=0.05)
    np.testing.assert_allclose(got["beta"], np.broadcast_to((1 / gain)[:, None], (3, 4)),
                               rtol=0.02)
    snr = 10 * np.log10((gain * signal) ** 2 / sd ** 2)
    np.testing.assert_allclose(got["snr"], np.broadcast_to(snr[:, None], (3, 4)), atol=0.3)
    # as a dask-backed input: the same, lazily
    lazy = triple_collocation(x.chunk({"station": 2}), y.chunk({"station": 2}), z)
    assert lazy["snr"].chunks is not None
    np.testing.assert_allclose(lazy["snr"].values, got["snr"].values, rtol=1e-12)


def test_fewer_than_min_obs_common_days_give_nan():
    (x, y, z), *_ = _synthetic(n_stations=2, n=40)
    z = z.copy()
    z[1, 20:] = np.nan               # station 1: fewer than 20 days with all three
    got = triple_collocation(x, y, z, min_obs=20)
    n1 = int((np.isfinite(y[1]) & np.isfinite(z[1])).sum())
    assert int(got["n"][1]) == n1 < 20
    assert np.isnan(got["err_std"].isel(station=1)).all()
    assert np.isfinite(got["err_std"].isel(station=0)).all()


def test_bad_input_is_one_clear_error():
    (x, y, z), *_ = _synthetic(n_stations=1, n=20)
    with pytest.raises(ValidationError, match="z has no dimension 'time'"):
        triple_collocation(x, y, z.rename(time="day"))
    with pytest.raises(ValidationError, match="ref='CCI': expected 0, 1, 2 or one of"):
        triple_collocation(x, y, z, names=("SMAP", "ERA5", "ISMN"), ref="CCI")
    with pytest.raises(TypeError, match="y must be an xarray.DataArray"):
        triple_collocation(x, y.values, z)

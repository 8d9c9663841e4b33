"""ERA5 adapters: real CDS netCDF/GRIB files, and an ARCO-layout Zarr served over gs://."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud import regrid, schema
from casm_cloud.grid import EASE2Grid
from casm_cloud.sources import get_adapter
from casm_cloud.sources.era5.fields import ARCO_NAMES, daily_from_hourly

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # cfgrib's combine defaults


def test_cds_netcdf_and_grib_agree_and_match_regrid(real_data):
    era5 = get_adapter("era5_cds")
    nc = era5(str(real_data / "era5" / "ERA5_AN_20100101_0000.nc"), region="demo", daily=False)
    grb = era5(str(real_data / "era5" / "ERA5_AN_20100101_0000.grb"), region="demo", daily=False)
    assert set(nc.data_vars) == {"swvl1", "swvl2"} and nc.swvl1.attrs["units"] == "m3 m-3"
    schema.validate(nc, "era5", values="all")
    assert nc.time.values[0] == np.datetime64("2010-01-01T00:00")
    np.testing.assert_allclose(nc.swvl1.values, grb.swvl1.values, atol=1e-5)
    # independent reference: regrid the raw file directly
    raw = xr.open_dataset(real_data / "era5" / "ERA5_AN_20100101_0000.nc")[["swvl1"]]
    ref = regrid.regrid_to_window(raw.expand_dims("time"), EASE2Grid("M25").window_by_name("demo"))
    np.testing.assert_allclose(nc.swvl1.values, ref.swvl1.values, rtol=0, atol=0)
    # swvl over the Great Plains in January: moist soil, well inside 0..0.5
    assert 0.05 < float(nc.swvl1.mean()) < 0.5


def test_cds_hourly_grib_to_daily(real_data):
    """Real hourly ERA5 2 m temperature (March 2019, UK) to daily means on EASE2."""
    path = str(real_data / "era5" / "era5-2mt-2019-03-uk.grib")
    out = get_adapter("era5_cds")(path, lat=(51, 57), lon=(-8, 1), start="2019-03-02",
                                  end="2019-03-04")
    assert out.sizes["time"] == 3 and str(out.time.values[0])[:10] == "2019-03-02"
    hourly = get_adapter("era5_cds")(path, lat=(51, 57), lon=(-8, 1), daily=False,
                                     start="2019-03-02", end="2019-03-02")
    assert hourly.sizes["time"] == 24  # hourly output keeps exactly the asked days
    np.testing.assert_allclose(out.t2m.values[0], hourly.t2m.values[:24].mean(axis=0), atol=1e-4)
    assert 265 < float(out.t2m.mean()) < 290


def _arco_like(n_hours=48, seed=0):
    """A small store in the ARCO-ERA5 layout: long names, ECMWF units, one hour per chunk."""
    rng = np.random.default_rng(seed)
    lat = np.arange(45.0, 29.99, -0.25)
    lon = np.arange(255.0, 270.01, 0.25)  # 0..360 longitudes, as ARCO
    t = pd.date_range("2020-07-01T00:00", periods=n_hours, freq="1h")
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    spatial = 3.0 * np.sin(np.deg2rad(la) * 4) + 2.0 * np.cos(np.deg2rad(lo) * 3)
    hour = t.hour.values[:, None, None]
    t2m = 290.0 + spatial[None] + 5.0 * np.sin(2 * np.pi * hour / 24)
    t2m[24:43] = np.nan  # day 2 keeps only 5 hourly values -> no daily value
    # hourly accumulation over the hour ending at the stamp: 1e-4 m x (1 + day of that hour)
    acc_day = (t - pd.Timedelta(hours=1)).day.values - 1
    tp = np.broadcast_to((1e-4 * (1 + acc_day))[:, None, None], t2m.shape)
    sh = t2m.shape

    def var(a, units):
        return (("time", "latitude", "longitude"), np.asarray(a, dtype="float32"),
                {"units": units})

    ds = xr.Dataset(
        {"2m_temperature": var(t2m, "K"),
         "total_precipitation": var(tp, "m"),
         "surface_solar_radiation_downwards": var(np.full(sh, 1e6), "J m**-2"),
         "volumetric_soil_water_layer_1": var(0.2 + 0.01 * rng.random(sh), "m**3 m**-3"),
         "2m_dewpoint_temperature": var(np.full(sh, 283.15), "K"),
         "surface_pressure": var(np.full(sh, 101325.0), "Pa"),
         "mean_sea_level_pressure": var(np.full(sh, 101325.0), "Pa")},
        coords={"time": t, "latitude": lat, "longitude": lon},
    )
    return ds, spatial


def test_arco_zarr_over_gcs_emulator(gcs_emulator):
    root, so = gcs_emulator
    ds, spatial = _arco_like()
    url = f"{root}/arco/full_37-1h-0p25deg-chunk-1.zarr-v3"
    enc = {v: {"chunks": (1, ds.sizes["latitude"], ds.sizes["longitude"])} for v in ds.data_vars}
    ds.to_zarr(url, mode="w", encoding=enc, consolidated=False, zarr_format=3, storage_options=so)

    win = EASE2Grid("M25").window_by_name("demo")
    out = get_adapter("era5_arco")(url, storage_options=so, region="demo", start="2020-07-01",
                                   end="2020-07-02", consolidated=False)
    schema.validate(out, "era5", grid=win, values="all")
    assert set(out.data_vars) == {"t2m", "tp", "ssrd", "swvl1", "q"}
    assert out.sizes["time"] == 2 and out.t2m.chunks is not None
    got = out.compute()
    # day 1: full mean (the diurnal sine averages out); day 2: 5 values < 6 -> NaN
    src = xr.Dataset({"s": (("latitude", "longitude"), spatial)},
                     coords={"latitude": ds.latitude, "longitude": ds.longitude})
    exp = regrid.regrid_to_window(src, win).s.values
    np.testing.assert_allclose(got.t2m.values[0], 290.0 + exp, atol=2e-3)
    assert np.isnan(got.t2m.values[1]).all()
    # accumulations: day d total = 24 x 1e-4 x (1 + d), i.e. the 00 UTC stamp counts for the day before
    np.testing.assert_allclose(got.tp.values[:, 5, 5], [24e-4, 48e-4], rtol=1e-5)
    np.testing.assert_allclose(got.ssrd.values, 24e6, rtol=1e-6)
    # q from Td = 10 C at 1013.25 hPa.  Tables give e_sat(10 C) = 1227.9 Pa over water
    # (WMO No. 8, Annex 4.B); the IFS Tetens form is within 0.1 % of that.
    np.testing.assert_allclose(got.q.values, 0.622 * 1227.9 / (101325 - 0.378 * 1227.9),
                               rtol=2e-3)
    assert got.swvl1.attrs["units"] == "m3 m-3" and got.tp.attrs["units"] == "m"


def test_wrong_units_and_missing_variables_are_errors(tmp_path):
    ds, _ = _arco_like(n_hours=24)
    bad = ds.copy()
    bad["2m_temperature"].attrs["units"] = "degC"
    bad.to_zarr(tmp_path / "bad.zarr", consolidated=False, zarr_format=3)
    with pytest.raises(schema.SchemaError, match=r"'t2m' has units 'degC'; expected 'K'"):
        get_adapter("era5_arco")(str(tmp_path / "bad.zarr"), region="tiny", consolidated=False)
    ds.to_zarr(tmp_path / "ok.zarr", consolidated=False, zarr_format=3)
    with pytest.raises(schema.SchemaError, match=r"missing variable\(s\) \['skt'\]"):
        get_adapter("era5_arco")(str(tmp_path / "ok.zarr"), region="tiny", consolidated=False, variables=["skt"])
    with pytest.raises(schema.SchemaError, match="not canonical ERA5"):
        get_adapter("era5_arco")(str(tmp_path / "ok.zarr"), region="tiny", consolidated=False, variables=["t2"])
    with pytest.raises(ValueError, match="target window is missing"):
        get_adapter("era5_arco")(str(tmp_path / "ok.zarr"))


def test_daily_already_daily_is_unchanged():
    t = pd.date_range("2020-01-01", periods=3)
    ds = xr.Dataset({"tp": ("time", [1.0, 2.0, 3.0])}, coords={"time": t})
    xr.testing.assert_identical(daily_from_hourly(ds), ds)
    assert set(ARCO_NAMES.values()) >= {"t2m", "tp", "swvl1", "d2m", "sp"}


def test_arco_on_the_era5_grid_selects_cells_and_keeps_str(tmp_path):
    """grid="ERA5_0p25": ERA5's own cells (no interpolation), str summed like ssr."""
    from casm_cloud.grid import LatLonGrid

    ds, _ = _arco_like(n_hours=48)
    sh = ds["2m_temperature"].shape
    ds["surface_net_thermal_radiation"] = (("time", "latitude", "longitude"),
                                           np.full(sh, -2.5e5, np.float32), {"units": "J m**-2"})
    ds.to_zarr(tmp_path / "arco.zarr", consolidated=False, zarr_format=3)
    out = get_adapter("era5_arco")(str(tmp_path / "arco.zarr"), grid="ERA5_0p25", region="tiny",
                                   start="2020-07-01", end="2020-07-01", consolidated=False)
    win = LatLonGrid("ERA5_0p25").window_by_name("tiny")
    schema.validate(out, "era5", grid=win, values="all")
    assert out.attrs["latlon_grid"] == "ERA5_0p25" and "str" in out.data_vars
    np.testing.assert_allclose(out["str"].values, -24 * 2.5e5, rtol=1e-6)
    hourly = get_adapter("era5_arco")(str(tmp_path / "arco.zarr"), grid="ERA5_0p25",
                                      region="tiny", daily=False, variables=["t2m"],
                                      start="2020-07-01", end="2020-07-01", consolidated=False)
    raw = ds["2m_temperature"].sel(latitude=win.lat, longitude=np.mod(win.lon, 360.0))
    np.testing.assert_array_equal(hourly.t2m.values, raw.isel(time=slice(0, 24)).values)


def test_real_hourly_grib_on_the_era5_grid(real_data):
    """Real hourly 2 m temperature (UK, March 2019) picked cell by cell on ERA5_0p25."""
    path = str(real_data / "era5" / "era5-2mt-2019-03-uk.grib")
    out = get_adapter("era5_cds")(path, grid="ERA5_0p25", lat=(51, 57), lon=(-8, 1), daily=False,
                                  start="2019-03-02", end="2019-03-02")
    raw = xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})
    ref = raw["t2m"].sel(time=slice("2019-03-02T00", "2019-03-02T23"),
                         latitude=out.lat.values, longitude=out.lon.values)
    assert out.sizes["time"] == 24 and out.sizes["y"] == 25 and out.sizes["x"] == 37
    np.testing.assert_array_equal(out.t2m.values, ref.values.astype(np.float32))

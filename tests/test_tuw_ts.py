"""TU Wien time-series cell files: real QA4SM Hawaii files and tiny written ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud.sources import get_adapter
from casm_cloud.sources.tuw_ts import TUWFormatError, open_tuw_ts


def _write_ragged(path, seed=0):
    """A small IndexedRaggedTs cell file like the QA4SM SMAP files (unsorted times)."""
    rng = np.random.default_rng(seed)
    n_loc, n_obs = 3, 40
    loc = rng.integers(0, n_loc, n_obs)
    t = pd.Timestamp("2016-01-01") + pd.to_timedelta(rng.uniform(0, 60, n_obs), "D")
    sm = rng.uniform(0.05, 0.45, n_obs).astype(np.float32)
    sm[::7] = -9999.0
    ds = xr.Dataset(
        {"locationIndex": ("time", loc, {"instance_dimension": "locations"}),
         "soil_moisture": ("time", sm, {"units": "cm**3/cm**3", "valid_min": np.float32(0.02),
                                        "valid_max": np.float32(0.5)}),
         "location_id": ("locations", np.array([11, 12, 13])),
         "lat": ("locations", np.array([19.5, 19.6, 19.7], dtype=np.float32)),
         "lon": ("locations", np.array([-155.5, -155.4, -155.3], dtype=np.float32))},
        coords={"time": ("time", t.values)},
        attrs={"featureType": "timeSeries", "timeSeries_format": "IndexedRaggedTs"},
    )
    ds = ds.set_coords(["lat", "lon"])
    ds.to_netcdf(path, encoding={"soil_moisture": {"_FillValue": np.float32(-9999.0)}})
    return loc, t.values, sm


def test_indexed_ragged_file_is_scattered_onto_location_time(tmp_path):
    loc, t, sm = _write_ragged(tmp_path / "0165.nc")
    ds = open_tuw_ts(str(tmp_path))
    assert ds.attrs["timeSeries_format"] == "IndexedRaggedTs"
    assert dict(ds.sizes) == {"location": 3, "time": np.unique(t).size}
    assert (np.diff(ds.time.values) > np.timedelta64(0)).all()
    np.testing.assert_array_equal(ds.location_id.values, [11, 12, 13])
    np.testing.assert_array_equal(ds.cell.values, [165] * 3)
    for i in range(40):
        got = float(ds.soil_moisture.sel(time=t[i]).isel(location=loc[i]))
        if sm[i] < 0.02 or sm[i] > 0.5:  # fill value and out-of-range values are masked
            assert np.isnan(got)
        else:
            assert got == pytest.approx(float(sm[i]))
    # every observation lands in exactly one cell
    assert int(ds.soil_moisture.notnull().sum()) == int(((sm >= 0.02) & (sm <= 0.5)).sum())


def test_registered_as_source_adapter(tmp_path):
    _write_ragged(tmp_path / "0001.nc")
    ds = get_adapter("tuw_ts")(str(tmp_path), storage_options=None, variables=["soil_moisture"])
    assert list(ds.data_vars) == ["soil_moisture"]


def test_bad_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TU Wien cell files"):
        open_tuw_ts(str(tmp_path))
    _write_ragged(tmp_path / "0002.nc")
    with pytest.raises(TUWFormatError, match=r"variables \['sm'\] not found"):
        open_tuw_ts(str(tmp_path), variables=["sm"])
    with pytest.raises(ValueError, match="no location inside bbox"):
        open_tuw_ts(str(tmp_path), bbox=(0.0, 1.0, 0.0, 1.0))
    xr.Dataset({"a": ("x", [1.0])}).to_netcdf(tmp_path / "0003.nc")
    with pytest.raises(TUWFormatError, match="0003.nc: no 'lat'"):
        open_tuw_ts(str(tmp_path), cells=[3])


def test_real_smap_ragged_matches_raw_observations(real_data):
    folder = real_data / "qa4sm_hawaii" / "SMAP_L3" / "SMAP_V9_AM_PM" / "netcdf"
    ds = open_tuw_ts(str(folder), variables=["soil_moisture"])
    raw = xr.open_dataset(folder / "0165.nc")
    assert ds.sizes["location"] == 13  # 8 locations in 0165 + 5 in 0166, grid.nc ignored
    i = 3
    obs = raw.soil_moisture.values[raw.locationIndex.values == i]
    times = raw.time.values[raw.locationIndex.values == i]
    keep = np.isfinite(obs)
    got = ds.soil_moisture.isel(location=i).sel(time=times[keep]).values
    np.testing.assert_allclose(got, obs[keep])
    assert int(ds.soil_moisture.isel(location=i).count()) == int(keep.sum())
    assert ds.location_id.values[i] == raw.location_id.values[i]
    assert ds.lat.values[i] == pytest.approx(float(raw.lat.values[i]))


@pytest.mark.parametrize(("sub", "var", "n_loc"), [
    ("SMOS_L3/SMOSL3_v339_ASC", "Soil_Moisture", 456),
    ("SMOS_IC/SMOS_105_ASC", "Soil_Moisture", 912),
    ("ERA5/ERA5_20190613", "swvl1", 12),
    ("ERA5_LAND/ERA5_LAND_V20190904", "swvl1", 136),
])
def test_real_orthogonal_products(real_data, sub, var, n_loc):
    ds = open_tuw_ts(str(real_data / "qa4sm_hawaii" / sub), variables=[var])
    assert ds.attrs["timeSeries_format"] == "OrthoMultiTs"
    assert ds[var].dims == ("location", "time")
    assert ds.sizes["location"] == n_loc
    assert ds[var].chunks is not None  # lazy
    assert np.issubdtype(ds.time.dtype, np.datetime64)
    # bbox around the Big Island keeps a subset with its coordinates
    sub_ds = open_tuw_ts(str(real_data / "qa4sm_hawaii" / sub), variables=[var],
                         bbox=(18.8, 20.4, -156.2, -154.7))
    assert 0 < sub_ds.sizes["location"] < n_loc
    assert float(sub_ds.lat.min()) >= 18.8 and float(sub_ds.lon.max()) <= -154.7

"""ISMN reading (every real format) and the station selection rules."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud.validation.stations import (
    StationSelectionError,
    read_ismn,
    select_stations,
    selection_report,
)


def _listing(folder):
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs)


@pytest.mark.parametrize(("sub", "n", "first"), [
    # header+values, CR line endings (SMOSMANIA Narbonne, Jan 2007, hourly)
    ("format_header_values", 1, "SMOSMANIA/Narbonne/ThetaProbe-ML2X/0.05-0.05"),
    ("format_ceop_sep", 1, "SMOSMANIA/Narbonne/ThetaProbe-ML2X/0.05-0.05"),
    ("zip_archives/multinetwork/header_values/Data_header_values.zip", 8,
     "MAQU/CST-01/ECH20-EC-TM/0.05-0.05"),
    # the 2026 naming with a sensor suffix, folder and zip
    ("archive_sample", 1, "RSMN/Adamclisi/Meter-5TM_1_1/0-0.05"),
    ("archive_sample/ismn_archive.zip", 1, "RSMN/Adamclisi/Meter-5TM_1_1/0-0.05"),
])
def test_real_ismn_formats(real_data, tmp_path, sub, n, first):
    path = real_data / "ismn" / sub
    before = _listing(real_data / "ismn")
    ds = read_ismn(path, meta_path=tmp_path / "meta")
    assert _listing(real_data / "ismn") == before  # nothing written into the data folder
    assert ds.sizes["station"] == n
    assert ds.station.values[0] == first
    sm = ds["soil_moisture"]
    assert sm.dims == ("station", "time") and sm.attrs["units"] == "m3 m-3"
    assert 0.0 <= float(sm.min()) and float(sm.max()) <= 0.8
    flags = ds["soil_moisture_flag"].values
    assert set(np.unique(flags[sm.notnull().values])) <= set(pd.unique(flags.ravel())) - {""}
    assert np.isfinite(ds.lat).all() and np.isfinite(ds.lon).all()


def test_narbonne_values_equal_the_file(real_data, tmp_path):
    """The CR-terminated header+values file: first and last values and flags."""
    ds = read_ismn(real_data / "ismn" / "format_header_values", meta_path=tmp_path)
    s = ds.isel(station=0)
    assert s.time.values[0] == np.datetime64("2007-01-01T01:00")
    assert s.time.values[-1] == np.datetime64("2007-01-31T23:00")
    assert int(s.soil_moisture.count()) == 741
    assert float(s.soil_moisture[0]) == pytest.approx(0.214)
    assert float(ds.lat[0]) == pytest.approx(43.15) and float(ds.lon[0]) == pytest.approx(2.9567)


def test_hawaii_download_metadata_and_depth_rule(real_data, tmp_path):
    ds = read_ismn(real_data / "qa4sm_hawaii" / "ISMN_V20250617", meta_path=tmp_path)
    # SCAN probes at 2 in (0.0508 m) count as 0-5 cm; the COSMOS probe (0-17 cm) does not
    assert list(ds.network.values) == ["SCAN"] * 4
    assert any("COSMOS/SilverSword" in s and "depth 0-0.17 m" in s for s in ds.attrs["skipped"])
    assert set(ds.climate_KG.values) <= {"Af", "Am"}
    assert np.isfinite(ds.lc_2010.values).all()
    wide = read_ismn(real_data / "qa4sm_hawaii" / "ISMN_V20250617", depth=(0.0, 0.2),
                     meta_path=tmp_path)
    assert "COSMOS" in set(wide.network.values)


def test_no_sensor_at_depth_is_a_clear_error(real_data, tmp_path):
    with pytest.raises(StationSelectionError, match=r"at depth 0-0.05 m \(rule: depth\).*0-0.19 m"):
        read_ismn(real_data / "ismn" / "Data_seperate_files_header_20170810_20180809",
                  meta_path=tmp_path)
    with pytest.raises(StationSelectionError, match="no ISMN sensor measures 'air_temp'"):
        read_ismn(real_data / "ismn" / "format_header_values", variable="air_temp",
                  meta_path=tmp_path)
    with pytest.raises(FileNotFoundError):
        read_ismn(tmp_path / "missing")


def _stations(seed=0):
    """Seeded hourly stations shaped like read_ismn output."""
    rng = np.random.default_rng(seed)
    time = pd.date_range("2002-01-01", "2003-12-31 23:00", freq="h")
    n = time.size
    v = (0.2 + 0.05 * np.sin(np.arange(n) / 500.0) + 0.01 * rng.standard_normal((3, n)))
    flags = np.full((3, n), "G", dtype=object)
    flags[1, rng.random(n) < 0.2] = "D03"      # station 1: only 80 % good
    v[2, time >= "2002-03-01"] = np.nan       # station 2: two months of data only
    ids = ["NET/a/p/0.05-0.05", "NET/b/p/0.05-0.05", "NET/c/p/0.05-0.05"]
    return xr.Dataset(
        {"soil_moisture": (("station", "time"), v.astype(np.float32)),
         "soil_moisture_flag": (("station", "time"), flags)},
        coords={"station": ids, "time": time, "network": ("station", ["NET"] * 3),
                "lat": ("station", [40.0, 41.0, 42.0]), "lon": ("station", [-100.0] * 3)},
        attrs={"ismn_variable": "soil_moisture", "depth_range": [0.0, 0.05], "skipped": []},
    )


def test_selection_rules_and_anchored_bins():
    ds = _stations()
    sel = select_stations(ds, n_days=3, anchor="2002-01-01", min_obs=100)
    assert list(sel.station.values) == ["NET/a/p/0.05-0.05"]
    report = selection_report(sel).set_index("station")["reason"]
    assert report["NET/b/p/0.05-0.05"].startswith("good_fraction")
    assert report["NET/c/p/0.05-0.05"].startswith("min_obs")
    # bins start at the anchor, every 3 days; the first bin is the mean of 72 hours
    assert sel.time.values[0] == np.datetime64("2002-01-01")
    assert (np.diff(sel.time.values) == np.timedelta64(3, "D")).all()
    expected = ds.soil_moisture.isel(station=0, time=slice(0, 72)).mean()
    assert float(sel.soil_moisture[0, 0]) == pytest.approx(float(expected), rel=1e-6)
    # a D-flagged value never enters a mean
    lax = select_stations(ds, good_fraction=0.5, min_obs=10)
    flagged = ds.soil_moisture.where(ds.soil_moisture_flag == "G").isel(station=1,
                                                                          time=slice(0, 72))
    assert float(lax.soil_moisture.sel(station="NET/b/p/0.05-0.05")[0]) == pytest.approx(
        float(flagged.mean()), rel=1e-6)


def test_nothing_left_names_every_rule():
    ds = _stations()
    with pytest.raises(StationSelectionError,
                       match=r"no station left.*good_fraction.*min_obs") as err:
        select_stations(ds, min_obs=10_000)
    assert "NET/a/p/0.05-0.05: min_obs" in str(err.value)
    assert "NET/b/p/0.05-0.05: good_fraction 80" in str(err.value)


def test_default_meta_path_never_writes_into_the_download(real_data):
    zipped = real_data / "ismn" / "zip_archives" / "format_header_values"
    before = _listing(zipped)
    ds = read_ismn(zipped / "Data_SMOSMANIA.zip")
    assert ds.sizes["station"] == 1
    assert _listing(zipped) == before

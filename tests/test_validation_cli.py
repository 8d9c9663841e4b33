"""`casm-cloud validate` end to end: real Hawaii time series, a gridded Zarr, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud.cli import main
from casm_cloud.grid import EASE2Grid


def test_validate_real_hawaii_time_series(real_data, tmp_path, capsys):
    h = real_data / "qa4sm_hawaii"
    out = tmp_path / "val"
    rc = main(["validate", f"SMAP_L3={h / 'SMAP_L3' / 'SMAP_V9_AM_PM' / 'netcdf'}",
               "--variable", "soil_moisture", "--stations", str(h / "ISMN_V20250617"),
               "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "SilverSword" in printed and "ubRMSE" in printed
    table = pd.read_csv(out / "metrics.csv")
    assert list(table["station_name"]) == ["Kainaliu", "Kukuihaele", "SilverSword"]
    assert {"network", "station", "lat", "lon", "n", "R", "RMSE", "ubRMSE", "bias", "NRMSE",
            "anomaly_R", "R2"} <= set(table.columns)
    for name in ("summary.md", "metrics_by_network.csv", "metrics_by_climate.csv",
                 "stations_removed.csv", "boxplot_by_network.png", "scatter_SMAP_L3.png",
                 "timeseries_SMAP_L3.png", "map_R_SMAP_L3.png"):
        assert (out / name).stat().st_size > 0, name
    summary = (out / "summary.md").read_text()
    assert "PuaAkala" in summary and "good_fraction" in summary  # removed, with its rule
    assert "COSMOS/SilverSword" in summary and "depth" in summary


def _gridded_zarr(path, with_time=True):
    win = EASE2Grid("M25").window_by_name("hawaii")
    rng = np.random.default_rng(5)
    time = pd.date_range("2015-04-01", "2019-12-31", freq="D")
    ny, nx = win.shape
    data = (0.15 + 0.2 * rng.random((time.size, ny, nx))).astype(np.float32)
    ds = xr.Dataset({"sm": (("time", "y", "x"), data, {"units": "m3 m-3"})},
                    coords={**win.coords(), "time": time}, attrs=win.identity())
    if not with_time:
        ds = ds.isel(time=0, drop=True)
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    return path


def test_validate_gridded_zarr_product(real_data, tmp_path, capsys):
    store = _gridded_zarr(tmp_path / "product.zarr")
    rc = main(["validate", str(store), "--stations",
               str(real_data / "qa4sm_hawaii" / "ISMN_V20250617"), "--out", str(tmp_path / "o"),
               "--no-figures"])
    assert rc == 0
    table = pd.read_csv(tmp_path / "o" / "metrics.csv")
    assert set(table["product"]) == {"product.zarr"}
    assert (table["n"] > 100).all()
    assert (table["R"].abs() < 0.3).all()  # random product: no skill


def test_validate_bad_input_is_one_clear_line(real_data, tmp_path, capsys):
    ismn = str(real_data / "qa4sm_hawaii" / "ISMN_V20250617")
    store = _gridded_zarr(tmp_path / "notime.zarr", with_time=False)
    rc = main(["validate", str(store), "--stations", ismn, "--out", str(tmp_path / "o1")])
    err = capsys.readouterr().err
    assert rc == 2 and "casm-cloud: error:" in err and "no 'time' dimension" in err
    assert not (tmp_path / "o1" / "metrics.csv").exists()

    rc = main(["validate", str(store), "--stations", ismn, "--min-obs", "100000",
               "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 2 and "no station left after the selection rules" in err
    assert "min_obs" in err and "good_fraction" in err and "depth" in err

    rc = main(["validate", str(store), "--stations",
               str(real_data / "ismn" / "Data_seperate_files_header_20170810_20180809"),
               "--out", str(tmp_path / "o3")])
    assert rc == 2 and "rule: depth" in capsys.readouterr().err


def test_where_rules_mask_by_flag_and_bad_syntax_is_an_error(tmp_path, capsys):
    from casm_cloud.validation.workflow import keep_where

    ds = xr.Dataset({"sm": ("time", [0.1, 0.2, 0.3, 0.4]), "q": ("time", [0.0, 9.0, 8.0, 1.0])})
    out = keep_where(ds, "sm", {"q": [0, 8]})
    np.testing.assert_array_equal(out.sm.values, [0.1, np.nan, 0.3, np.nan])
    with pytest.raises(KeyError, match="flag variable 'flags' is not in the product"):
        keep_where(ds, "sm", {"flags": [0]})
    rc = main(["validate", "p.zarr", "--stations", "x", "--where", "retrieval_qual_flag"])
    assert rc == 2 and "expected [NAME:]FLAG=V1,V2" in capsys.readouterr().err


@pytest.mark.slow
def test_validate_simulated_products_against_simulated_stations(tmp_path, capsys):
    """Simulator end to end: the true SM scores better than the noisy SMAP retrieval."""
    from casm_cloud.simulate import write_simulation

    sim = tmp_path / "sim"
    write_simulation(str(sim), region="tiny", grid="M25", start="2015-04-01", end="2016-12-31",
                     seed=1, n_stations=6)
    rc = main(["validate", f"smap={sim / 'smap.zarr'}", f"truth={sim / 'truth.zarr'}",
               "--variable", "sm", "--variable", "sm_l1", "--stations", str(sim / "stations"),
               "--min-obs", "50", "--out", str(tmp_path / "val"), "--no-figures"])
    assert rc == 0
    table = pd.read_csv(tmp_path / "val" / "metrics.csv")
    med = table.groupby("product")[["R", "ubRMSE"]].median()
    assert med.loc["truth", "R"] > med.loc["smap", "R"] > 0.5
    assert med.loc["truth", "ubRMSE"] < med.loc["smap", "ubRMSE"]


def test_hawaii_smos_station_without_pairs_is_explained(real_data, tmp_path):
    h = real_data / "qa4sm_hawaii"
    out = tmp_path / "val"
    rc = main(["validate", f"SMOS_L3={h / 'SMOS_L3' / 'SMOSL3_v339_ASC'}",
               "--variable", "Soil_Moisture", "--stations", str(h / "ISMN_V20250617"),
               "--out", str(out), "--no-figures"])
    assert rc == 0
    table = pd.read_csv(out / "metrics.csv").set_index("station_name")
    assert table.loc["Kainaliu", "n"] == 0 and np.isnan(table.loc["Kainaliu", "R"])
    summary = (out / "summary.md").read_text()
    assert "* Kainaliu (SMOS_L3): 0 valid pairs, fewer than 10: no metrics" in summary

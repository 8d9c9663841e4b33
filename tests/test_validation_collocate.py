"""Collocation (EASE2 cells, lat/lon grids, time series by distance) and the table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud.aggregate import bin_start
from casm_cloud.grid import EASE2Grid
from casm_cloud.validation import CollocationError, aggregate_metrics, collocate, validate_product
from casm_cloud.validation import metrics as vm


def _ease2_product(seed=0, n_time=300):
    """Seeded SM on the Hawaii window of M25, daily, dask-backed, with EASE2 attrs."""
    win = EASE2Grid("M25").window_by_name("hawaii")
    rng = np.random.default_rng(seed)
    time = pd.date_range("2016-01-01", periods=n_time, freq="D")
    ny, nx = win.shape
    sm = 0.2 + 0.1 * rng.random((n_time, ny, nx)).astype(np.float32)
    coords = {k: v for k, v in win.coords().items()}
    ds = xr.Dataset({"sm": (("time", "y", "x"), sm, {"units": "m3 m-3"})},
                    coords={**coords, "time": time}, attrs=win.identity())
    return ds.chunk({"time": 100}), win


def _stations_like(lat, lon, product_time, seed=1, n_days=3):
    """Selected-station dataset (as select_stations returns) with seeded 3-day means."""
    rng = np.random.default_rng(seed)
    bins = np.unique(bin_start(product_time, n_days, "2002-01-01"))
    n = len(lat)
    ids = [f"NET/s{i}/p/0.05-0.05" for i in range(n)]
    return xr.Dataset(
        {"soil_moisture": (("station", "time"), 0.25 + 0.05 * rng.random((n, bins.size)))},
        coords={"station": ids, "time": bins, "lat": ("station", np.asarray(lat, float)),
                "lon": ("station", np.asarray(lon, float)),
                "network": ("station", ["NET"] * n),
                "station_name": ("station", [f"s{i}" for i in range(n)]),
                "climate_KG": ("station", ["Af", "Am", "Af", "Af"][:n])},
        attrs={"ismn_variable": "soil_moisture", "n_days": n_days, "anchor": "2002-01-01"},
    )


def test_nearest_ease2_cell_and_shared_cells_kept_apart():
    product, win = _ease2_product()
    lat = [19.70, 19.7001, 19.2, 25.0]            # 0 and 1 share a cell; 3 is outside
    lon = [-155.5, -155.5001, -155.9, -155.0]
    series, table = collocate(product["sm"].assign_attrs(product.attrs), lat, lon)
    assert list(table["matched"]) == [True, True, True, False]
    assert "outside the product's grid" in table["reason"][3]
    rows, cols = win.to_rowcol(lat[:3], lon[:3])
    assert (table["row"][:3] == rows).all() and (table["col"][:3] == cols).all()
    assert table["row"][0] == table["row"][1] and table["col"][0] == table["col"][1]
    assert series.dims == ("station", "time") and series.sizes["station"] == 4
    assert hasattr(series.data, "dask")  # lazy gather
    np.testing.assert_array_equal(series[0].values, product.sm.isel(y=rows[0], x=cols[0]).values)
    np.testing.assert_array_equal(series[0].values, series[1].values)
    assert series[3].isnull().all()
    assert (table["distance_km"][:3] < 25.0 * np.sqrt(2) / 2).all()


def test_validate_product_table_matches_metrics_and_reports_removed():
    product, win = _ease2_product()
    lat, lon = [19.7, 19.7001, 19.2, 25.0], [-155.5, -155.5001, -155.9, -155.0]
    stations = _stations_like(lat, lon, product.time.values)
    table = validate_product(product, stations, variable="sm", name="synthetic")
    assert list(table["station"]) == list(stations.station.values[:3])
    assert table.attrs["removed"] == [
        f"NET/s3/p/0.05-0.05: {t}" for t in
        ["outside the product's grid " + repr(win) + " (lat=25.0000, lon=-155.0000)"]]
    # recompute one station by hand: 3-day means of the product cell, paired
    r, c = win.to_rowcol(lat[2], lon[2])
    cell = product.sm.isel(y=int(r), x=int(c)).load()
    binned = cell.resample(time="3D", origin=pd.Timestamp("2002-01-01")).mean()
    ref = stations.soil_moisture.isel(station=2)
    x, y = xr.align(binned, ref, join="inner")
    assert table.loc[2, "n"] == int(vm.n_pairs(x, y))
    for col, fn in vm.METRICS.items():
        assert table.loc[2, col] == pytest.approx(float(fn(x, y)), abs=1e-6), col
    agg = aggregate_metrics(table, "climate_KG")
    assert agg.loc[("synthetic", "Af"), "n_stations"] == 2


def test_time_series_product_matched_by_distance():
    rng = np.random.default_rng(4)
    time = pd.date_range("2016-01-01", periods=200, freq="D")
    prod = xr.DataArray(rng.random((3, 200)), dims=("location", "time"),
                        coords={"time": time, "lat": ("location", [19.0, 19.5, 20.0]),
                                "lon": ("location", [-155.0, -155.5, -156.0]),
                                "location_id": ("location", [7, 8, 9])}, name="sm")
    series, table = collocate(prod, [19.51, 19.99, 30.0], [-155.49, -156.02, -155.0],
                              max_distance=20_000.0)
    assert list(table["location_id"][:2]) == [8, 9]
    assert list(table["matched"]) == [True, True, False]
    assert "max_distance 20.0 km" in table["reason"][2]
    assert table["distance_km"][0] == pytest.approx(1.49, abs=0.05)  # ~0.01°·√2 at 19.5°N
    np.testing.assert_array_equal(series[1].values, prod[2].values)


def test_regular_latlon_grid_product():
    time = pd.date_range("2016-01-01", periods=10, freq="D")
    lat, lon = np.arange(18.0, 21.0, 0.25), np.arange(-157.0, -154.0, 0.25)
    data = np.arange(time.size * lat.size * lon.size, dtype=float).reshape(10, lat.size, lon.size)
    prod = xr.DataArray(data, dims=("time", "lat", "lon"),
                        coords={"time": time, "lat": lat, "lon": lon})
    series, table = collocate(prod, [19.6, 30.0], [-155.4, -155.0])
    assert table["matched"].tolist() == [True, False]
    np.testing.assert_array_equal(series[0].values, prod.sel(lat=19.5, lon=-155.5).values)


def test_bad_products_are_clear_errors():
    product, _ = _ease2_product(n_time=30)
    stations = _stations_like([19.7], [-155.5], product.time.values)
    with pytest.raises(ValueError, match="has no 'time' dimension"):
        validate_product(product.isel(time=0), stations, variable="sm")
    with pytest.raises(KeyError, match=r"no variable 'tb_h'.*\['sm'\]"):
        validate_product(product, stations, variable="tb_h")
    far = _stations_like([40.0], [-100.0], product.time.values)
    with pytest.raises(CollocationError, match="no station lies inside the product.*outside"):
        validate_product(product, far, variable="sm")
    with pytest.raises(ValueError, match=r"min_pairs.*NET/s0/p/0.05-0.05: \d+"):
        validate_product(product, stations, variable="sm", min_pairs=1000)

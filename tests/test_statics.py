"""ETOPO1 block reduction and the GLDAS static reader (casm_cloud.sources.statics)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from casm_cloud.sources import open_source_url
from casm_cloud.sources.statics import StaticSourceError


def _etopo(path, *, lat0=18.0, lon0=-157.0, ny=60, nx=90, grid_registered=True,
           names=("y", "x"), units="meters", seed=0):
    """A small ETOPO1-like GMT4 netCDF: 1-arc-minute nodes from (lat0, lon0)."""
    step = 1 / 60
    off = 0.0 if grid_registered else step / 2
    y = lat0 + off + step * np.arange(ny + (1 if grid_registered else 0))
    x = lon0 + off + step * np.arange(nx + (1 if grid_registered else 0))
    z = np.random.default_rng(seed).integers(-50, 4000, (y.size, x.size)).astype(np.int32)
    ds = xr.Dataset({"z": ((names[0], names[1]), z, {"units": units})},
                    coords={names[0]: y, names[1]: x})
    ds.to_netcdf(path)
    return ds


def test_block_mean_and_std_per_cell(tmp_path):
    src = _etopo(tmp_path / "ETOPO1_Ice_g_gmt4.grd")
    out = open_source_url("etopo1", str(tmp_path / "ETOPO1_Ice_g_gmt4.grd"),
                          bbox=(18.0, 19.0, -157.0, -155.5)).compute()
    # 60 x 90 whole-minute nodes -> 4 x 6 cells; the extra edge node row/column is dropped
    assert out.sizes == {"lat": 4, "lon": 6}
    assert out.lat.values[0] == pytest.approx(18.875) and out.lat.values[-1] == pytest.approx(18.125)
    assert out.lon.values[0] == pytest.approx(-156.875)
    z = src.z.values[:60, :90].astype(float)
    for i, j in ((0, 0), (3, 5), (1, 2)):
        block = z[(3 - i) * 15:(4 - i) * 15, j * 15:(j + 1) * 15]
        assert float(out.elevation[i, j]) == pytest.approx(block.mean(), rel=1e-6)
        assert float(out.elevation_std[i, j]) == pytest.approx(block.std(), rel=1e-5)
    assert out.elevation.attrs["units"] == "m"


def test_window_edges_widen_to_whole_cells_and_read_lazily(tmp_path):
    _etopo(tmp_path / "e.nc", grid_registered=False, names=("lat", "lon"), units="m")
    ds = open_source_url("etopo1", str(tmp_path / "e.nc"), bbox=(18.3, 18.6, -156.9, -156.6))
    assert ds.elevation.chunks is not None          # dask-backed, nothing read yet
    assert ds.sizes == {"lat": 2, "lon": 2}         # 18.25..18.75 x -157.0..-156.5
    np.testing.assert_allclose(ds.lat.values, [18.625, 18.375])
    np.testing.assert_allclose(ds.lon.values, [-156.875, -156.625])


def test_on_an_era5_window_the_blocks_are_the_windows_own_cells(tmp_path):
    """ERA5's 0.25° cells are centred on multiples of 0.25° (edges half a cell off GLDAS's):
    the statics of a SoMo.ml window are the statistics of each window cell's own 15 x 15
    one-minute nodes, on the window, not GLDAS-cell blocks interpolated."""
    from casm_cloud.catalog import make_entry, open_source, write_catalog
    from casm_cloud.grid import LatLonGrid

    src = _etopo(tmp_path / "e.grd", lat0=18.0, lon0=-157.0, ny=75, nx=90)
    window = LatLonGrid("ERA5_0p25").window(lat=(18.5, 19.0), lon=(-156.75, -156.25))
    cat = write_catalog({"etopo1": make_entry("etopo1", str(tmp_path / "e.grd"))},
                        str(tmp_path / "catalog.yaml"))
    out = open_source(cat, "etopo1", window=window).compute()
    assert out.sizes == {"y": 3, "x": 3} and out.attrs["latlon_grid"] == "ERA5_0p25"
    np.testing.assert_allclose(out.lat.values, [19.0, 18.75, 18.5])
    z = src.z.values.astype(float)          # rows: 18.0 + k/60, columns: -157.0 + k/60
    for i, j in ((0, 0), (2, 1), (1, 2)):
        lat, lon = float(out.lat[i]), float(out.lon[j])
        r0, c0 = round((lat - 18.0) * 60) - 7, round((lon + 157.0) * 60) - 7
        block = z[r0:r0 + 15, c0:c0 + 15]  # nodes lat-7'..lat+7': no node on a cell edge
        assert float(out.elevation[i, j]) == pytest.approx(block.mean(), rel=1e-6)
        assert float(out.elevation_std[i, j]) == pytest.approx(block.std(), rel=1e-5)
    with pytest.raises(Exception, match="does not cover the request lat 18.375..19.625"):
        far = LatLonGrid("ERA5_0p25").window(lat=(18.5, 19.5), lon=(-156.75, -156.25))
        open_source(cat, "etopo1", window=far)


@pytest.mark.parametrize("kwargs, message", [
    (dict(units="feet"), "has units 'feet', expected metres"),
])
def test_etopo_bad_units(tmp_path, kwargs, message):
    _etopo(tmp_path / "e.nc", **kwargs)
    with pytest.raises(StaticSourceError, match=message):
        open_source_url("etopo1", str(tmp_path / "e.nc"))


def _gldas(tmp_path, *, drop=None, sand_units="1"):
    lat = -59.875 + 0.25 * np.arange(600)
    lon = -179.875 + 0.25 * np.arange(1440)
    lat, lon = lat[(lat > 17.5) & (lat < 20.5)], lon[(lon > -157.5) & (lon < -154.5)]
    rng = np.random.default_rng(1)
    shape = (1, lat.size, lon.size)
    sand = rng.uniform(0.1, 0.6, shape).astype(np.float32)
    sand[0, 0, 0] = -9999.0
    coords = {"time": [0], "lat": lat, "lon": lon}
    files = {
        "GLDASp4_soilfraction_025d.nc4": {
            "GLDAS_soilfraction_sand": (sand, sand_units),
            "GLDAS_soilfraction_silt": (np.full(shape, 0.3, np.float32), "1"),
            "GLDAS_soilfraction_clay": (np.full(shape, 0.2, np.float32), "1")},
        "GLDASp4_porosity_025d.nc4": {"GLDAS_porosity": (np.full(shape, 0.45, np.float32), "1")},
        "GLDASp4_domveg_025d.nc4": {"GLDAS_domveg": (np.full(shape, 7, np.float32), "1")},
    }
    paths = []
    for name, vs in files.items():
        ds = xr.Dataset({v: (("time", "lat", "lon"), a, {"units": u}) for v, (a, u) in vs.items()
                         if v != drop}, coords=coords)
        for v in ds.data_vars:
            ds[v].encoding["_FillValue"] = np.float32(-9999.0)
        ds.to_netcdf(tmp_path / name)
        paths.append(str(tmp_path / name))
    return paths, sand


def test_gldas_variables_units_and_fill(tmp_path):
    paths, sand = _gldas(tmp_path)
    ds = open_source_url("gldas_static", paths, bbox=(17.5, 18.5, -157.5, -156.0)).compute()
    assert {"sand", "silt", "clay", "porosity_top", "porosity_mid", "vegetation_class"} <= set(ds)
    assert ds.sizes == {"lat": 4, "lon": 6}
    assert ds.lat.values[0] == pytest.approx(18.375)
    # the fill value of the south-west cell reads as NaN, not -9999
    assert np.isnan(float(ds.sand.isel(lat=-1, lon=0)))
    assert float(ds.sand.isel(lat=-1, lon=1)) == pytest.approx(float(sand[0, 0, 1]))
    assert float(ds.porosity_mid.max()) == pytest.approx(0.45)
    assert set(np.unique(ds.vegetation_class.values)) == {7.0}
    assert ds.sand.attrs["units"] == "1" and ds.porosity_top.attrs["units"] == "m3 m-3"


def test_gldas_missing_variable_and_wrong_units(tmp_path):
    paths, _ = _gldas(tmp_path, drop="GLDAS_domveg")
    with pytest.raises(StaticSourceError, match="no variable 'GLDAS_domveg'"):
        open_source_url("gldas_static", paths)
    (tmp_path / "b").mkdir()
    paths, _ = _gldas(tmp_path / "b", sand_units="percent")
    with pytest.raises(StaticSourceError, match="'GLDAS_soilfraction_sand' has units 'percent'"):
        open_source_url("gldas_static", paths)
